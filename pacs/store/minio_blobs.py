"""Blobs in an S3 bucket (MinIO in production, SeaweedFS in tests, AWS S3 works too).

The only module that imports ``minio``. It implements the same
:class:`~pacs.store.blobs.BlobStore` contract as the filesystem store and raises the
same errors: :class:`~pacs.errors.BlobNotFound` for an absent key, ``FileExistsError``
for a second write of a key, and :class:`~pacs.errors.StorageUnavailable` for anything
the server or the network does wrong, so a C-STORE is refused with 0xA700 (and an HTTP
request gets 503) instead of crashing a handler.

An absent bucket behaves like the filesystem store's absent root folder: it holds no
blobs (reads raise ``BlobNotFound``, ``keys`` yields nothing) and ``put`` creates it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from pacs.errors import BlobNotFound, ConfigError, StorageUnavailable
from pacs.store.blobs import CHUNK, BlobInfo, check_key

if TYPE_CHECKING:
    from pacs.config import Settings

log = logging.getLogger(__name__)

#: Blobs up to this size go in one conditional PUT; larger ones are uploaded in parts.
#: Almost every DICOM instance (CT/MR slices, CR/DX) fits in one PUT.
SINGLE_PUT_MAX = 16 * 1024 * 1024
#: Part size of multipart uploads (S3 minimum is 5 MiB); memory per big upload is a few parts.
PART_SIZE = 8 * 1024 * 1024
#: Parts uploaded at once for big blobs.
PARALLEL_PARTS = 2

# S3 error codes that mean "no such object". HEAD requests carry no body, so the SDK
# guesses the code from the 404 ("NoSuchKey" for an object, whether or not the bucket
# exists); "NotFound" is what some servers send.
_ABSENT_CODES = frozenset({"NoSuchKey", "NotFound", "NoSuchBucket"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
# Everything the SDK and urllib3 raise when the server is down, slow, refuses us
# (bad credentials, full disk) or answers garbage.
_TRANSPORT_ERRORS = (MinioException, urllib3.exceptions.HTTPError, OSError)

# The SDK's own PutObject call, which (unlike the public put_object of minio 7.2)
# accepts request headers. minio is pinned in setup.cfg and
# tests/store/test_blobs.py checks that the conditional write still works.
_SDK_PUT_OBJECT = getattr(Minio, "_put_object", None)


class MinioBlobStore:
    """Blobs as objects ``<prefix><key>`` in one bucket of an S3-compatible server.

    Parameters
    ----------
    endpoint
        ``host:port`` of the S3 API, without scheme.
    access_key, secret_key
        Credentials of an identity allowed to read, write, list and create the bucket.
    bucket
        Bucket name; created by :meth:`ping` and, if missing, before the first ``put``.
    region
        Passed to the SDK so it never asks the server (GetBucketLocation).
    secure
        HTTPS instead of HTTP.
    prefix
        Optional folder inside the bucket, so several archives can share one bucket.
    connect_timeout, read_timeout
        Seconds; short so a modality gets 0xA700 within seconds when the server is down.
    max_connections
        Connections kept open to the server (one per concurrently storing association).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        secure: bool = False,
        *,
        prefix: str = "",
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        try:
            check_bucket_name(bucket, strict=True)  # MinIO refuses what AWS once allowed
        except ValueError as exc:
            raise ConfigError(f"minio_bucket: {exc}") from exc
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.secure = secure
        prefix = prefix.strip("/")
        self.prefix = check_key(prefix) + "/" if prefix else ""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=max_connections,
            cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # A few quick retries ride over a blip; more would keep a modality
            # waiting when the server is really gone. A 503's Retry-After is not
            # obeyed, for the same reason.
            retries=urllib3.Retry(
                total=2,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
                respect_retry_after_header=False,
            ),
        )
        try:
            self._client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,  # saves a GetBucketLocation round trip per bucket
                http_client=http,
            )
        except ValueError as exc:
            raise ConfigError(f"minio_endpoint {endpoint!r}: {exc}") from exc
        # The SDK picks virtual-host style only for AWS hosts; MinIO and SeaweedFS
        # need path style, so say so for any endpoint.
        self._client.disable_virtual_style_endpoint()
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MinioBlobStore:
        """The store described by the ``minio_*`` settings."""
        return cls(
            settings.minio_endpoint,
            settings.minio_access_key,
            settings.minio_secret_key,
            settings.minio_bucket,
            region=settings.minio_region,
            secure=settings.minio_secure,
        )

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"MinioBlobStore({scheme}://{self.endpoint}/{self.bucket}/{self.prefix})"

    # -- helpers ---------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _unavailable(self, action: str, key: str | None, exc: BaseException) -> StorageUnavailable:
        where = f"{self.bucket}/{self._name(key)}" if key else self.bucket
        if isinstance(exc, S3Error):
            detail = f"{exc.code}: {exc.message}"
        elif isinstance(exc, urllib3.exceptions.MaxRetryError):
            detail = f"no usable answer ({exc.reason})"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        return StorageUnavailable(f"S3 {action} {where} at {self.endpoint} failed: {detail}")

    @contextlib.contextmanager
    def _errors(
        self, action: str, key: str | None = None, *, reading: bool = True
    ) -> Iterator[None]:
        """Translate SDK and network errors into the store's errors.

        With ``reading``, "no such key/bucket" means ``BlobNotFound``; a write that
        meets them has found the server unusable instead.
        """
        try:
            yield
        except FileExistsError:
            raise
        except S3Error as exc:
            if reading and key is not None and exc.code in _ABSENT_CODES:
                raise BlobNotFound(key) from exc
            raise self._unavailable(action, key, exc) from exc
        except _TRANSPORT_ERRORS as exc:
            raise self._unavailable(action, key, exc) from exc

    def _make_bucket(self) -> None:
        try:
            self._client.make_bucket(self.bucket, location=self.region)
            log.info("created bucket %s at %s", self.bucket, self.endpoint)
        except S3Error as exc:
            # Another process created it between our check and our create.
            if exc.code not in _BUCKET_EXISTS_CODES:
                raise

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if not self._bucket_ready:
                self.ping()

    # -- BlobStore -------------------------------------------------------------

    def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the server answers; create the bucket if missing."""
        with self._errors("ping"):
            if not self._client.bucket_exists(self.bucket):
                self._make_bucket()
        self._bucket_ready = True

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """Upload ``data`` under a new ``key``; ``FileExistsError`` if the key exists."""
        name = self._name(key)
        self._ensure_bucket()
        small = isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= SINGLE_PUT_MAX
        if not (small and _SDK_PUT_OBJECT is not None):
            # Only where the conditional PUT cannot be sent (multipart, an SDK without
            # headers) do we look first: one round trip less per instance otherwise.
            # Keys are random (new_blob_key), so this guards against bugs, not chance.
            if self._exists(key, "put"):
                raise FileExistsError(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            length = len(data)
            reader = _HashingReader(io.BytesIO(data))
        else:
            length = -1
            reader = _HashingReader(data)
        with self._errors("put", key, reading=False):
            head = reader.read_exactly(SINGLE_PUT_MAX + 1)
            if len(head) <= SINGLE_PUT_MAX:
                self._put_single(key, name, head, reader.sha256)
            else:
                self._put_multipart(name, _Prefixed(head, reader), length)
        return BlobInfo(key=key, size=reader.size, sha256=reader.sha256)

    def _put_single(self, key: str, name: str, body: bytes, sha256: str) -> None:
        """One PUT with ``If-None-Match: *``: the server refuses to replace an object."""
        try:
            self._send_single(name, body, sha256)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                # Deleted behind our back: create it again, as mkdir -p would.
                self._bucket_ready = False
                self._ensure_bucket()
                self._send_single(name, body, sha256)
            elif exc.code == "PreconditionFailed":
                # urllib3 retries a PUT whose answer was lost; the retry then meets
                # the object the first attempt wrote. That one is ours, not a clash.
                if not self._is_same_blob(name, len(body), sha256):
                    raise FileExistsError(key) from exc
            else:
                raise

    def _send_single(self, name: str, body: bytes, sha256: str) -> None:
        # The checksum as metadata lets us recognise our own write if a retried PUT
        # meets it; it also lets an audit check the bytes without reading them.
        if _SDK_PUT_OBJECT is None:  # a future SDK without it: unconditional put
            self._client.put_object(
                self.bucket, name, io.BytesIO(body), len(body), metadata={"sha256": sha256}
            )
            return
        headers = {
            "Content-Type": "application/octet-stream",
            "If-None-Match": "*",  # 412 PreconditionFailed if the key exists
            "x-amz-meta-sha256": sha256,
        }
        _SDK_PUT_OBJECT(self._client, self.bucket, name, body, headers)

    def _is_same_blob(self, name: str, size: int, sha256: str) -> bool:
        try:
            stat = self._client.stat_object(self.bucket, name)
        except S3Error:
            return False
        meta = {k.lower(): v for k, v in (stat.metadata or {}).items()}
        return stat.size == size and meta.get("x-amz-meta-sha256") == sha256

    def _put_multipart(self, name: str, body: io.RawIOBase, length: int) -> None:
        # minio 7.2 cannot send If-None-Match with CompleteMultipartUpload, so big
        # blobs rely on the exists() check above. Keys are random (new_blob_key),
        # so two writers of one key do not happen in practice.
        try:
            self._client.put_object(
                self.bucket,
                name,
                cast(BinaryIO, body),
                length,
                part_size=PART_SIZE,
                num_parallel_uploads=PARALLEL_PARTS,
            )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                self._bucket_ready = False  # the next put creates it again
            raise

    def get(self, key: str) -> bytes:
        """Return the whole blob (``BlobNotFound`` if absent)."""
        return self._read(key, 0, 0)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (``BlobNotFound`` if absent)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            # get_object reads to the end for length 0; still report an absent key.
            self.size(key)
            return b""
        return self._read(key, offset, length)

    def _read(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)
        with self._errors("get", key):
            try:
                response = self._client.get_object(self.bucket, name, offset=offset, length=length)
            except S3Error as exc:
                if exc.code == "InvalidRange":  # offset at or past the end: nothing there
                    return b""
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Stream the blob; the connection is closed and released when the block ends."""
        name = self._name(key)
        with self._errors("get", key):
            response = self._client.get_object(self.bucket, name)
        try:
            raw = _ResponseReader(response, lambda exc: self._unavailable("get", key, exc))
            with io.BufferedReader(raw, buffer_size=CHUNK) as stream:
                yield stream
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        """Return the blob's size in bytes (``BlobNotFound`` if absent)."""
        return self._size(key, "stat")

    def _size(self, key: str, action: str) -> int:
        name = self._name(key)
        with self._errors(action, key):
            size = self._client.stat_object(self.bucket, name).size
        return int(size or 0)

    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        return self._exists(key, "stat")

    def _exists(self, key: str, action: str) -> bool:
        try:
            self._size(key, action)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove the blob; removing an absent key (or from an absent bucket) is fine."""
        name = self._name(key)
        with contextlib.suppress(BlobNotFound), self._errors("delete", key):
            self._client.remove_object(self.bucket, name)

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with ``prefix``, in no particular order."""
        skip = len(self.prefix)
        with self._errors("list"):
            try:
                for obj in self._client.list_objects(
                    self.bucket, prefix=self.prefix + prefix, recursive=True
                ):
                    if obj.object_name and not obj.is_dir:
                        yield obj.object_name[skip:]
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise


class _HashingReader:
    """Wrap a binary file: hash and count the bytes as the upload reads them."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._digest = hashlib.sha256()
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def read(self, n: int = -1) -> bytes:
        chunk = self._source.read(n)
        if not chunk:
            return b""
        chunk = bytes(chunk)  # the SDK insists on bytes, not bytearray/memoryview
        self._digest.update(chunk)
        self.size += len(chunk)
        return chunk

    def read_exactly(self, n: int) -> bytes:
        """Read ``n`` bytes, or fewer only at the end (pipes and sockets return short reads)."""
        parts: list[bytes] = []
        missing = n
        while missing > 0:
            chunk = self.read(min(missing, CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``tail``: what was read ahead, then the stream."""

    def __init__(self, head: bytes, tail: _HashingReader) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._tail = tail

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if self._head:
            size = len(self._head) if n is None or n < 0 else n
            out = bytes(self._head[:size])
            self._head = self._head[size:]
            return out
        return self._tail.read(-1 if n is None else n)


class _ResponseReader(io.RawIOBase):
    """A GET response as a raw stream whose network errors become ``StorageUnavailable``."""

    def __init__(self, response: Any, to_error: Any) -> None:
        super().__init__()
        self._response = response
        self._to_error = to_error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._response.readinto(buffer))
        except _TRANSPORT_ERRORS as exc:
            raise self._to_error(exc) from exc
