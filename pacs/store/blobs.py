"""Blob storage: opaque keys to immutable bytes, knowing nothing about DICOM.

One protocol, two implementations: :class:`FilesystemBlobStore` (embedded default)
here and ``MinioBlobStore`` in :mod:`pacs.store.minio_blobs` (the only module that
imports ``minio``). Callers never branch on the backend; every backend raises the
same errors (:class:`~pacs.errors.BlobNotFound`, :class:`~pacs.errors.StorageUnavailable`).

Blobs are write-once: ``put`` on an existing key raises ``FileExistsError`` instead
of replacing the bytes, so nothing is ever silently overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from pacs.errors import BlobNotFound, StorageUnavailable

#: Read size when streaming blobs in and out.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BlobInfo:
    """What a successful ``put`` wrote."""

    key: str
    size: int
    sha256: str


@runtime_checkable
class BlobStore(Protocol):
    """Storage of immutable blobs under opaque string keys (``aa/bb/name``)."""

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        """Store ``data`` durably under a new ``key``; return only once it is durable.

        Raises ``FileExistsError`` if the key exists, ``StorageUnavailable`` if the
        store is unreachable, full or refuses the write.
        """
        ...

    def get(self, key: str) -> bytes:
        """Return the whole blob (``BlobNotFound`` if absent)."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (``BlobNotFound`` if absent)."""
        ...

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Open the blob for streaming reads; the context closes and releases it."""
        ...

    def size(self, key: str) -> int:
        """Return the blob's size in bytes (``BlobNotFound`` if absent)."""
        ...

    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; removing an absent key is not an error."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Yield every key that starts with ``prefix``, in no particular order."""
        ...

    def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the store answers (and create it if missing)."""
        ...


def new_blob_key(suffix: str = ".dcm") -> str:
    """A fresh random key fanned out in two levels, ``ab/cd/abcd…`` (as Orthanc does).

    Keys are random, never derived from UIDs or content, so two writers of the same
    instance never touch each other's blob, and a loser of a race can delete its own.
    """
    name = secrets.token_hex(16)
    return f"{name[:2]}/{name[2:4]}/{name}{suffix}"


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or name nothing."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid blob key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def iter_chunks(data: bytes | BinaryIO) -> Iterator[bytes]:
    """Yield ``data`` in chunks whether it is bytes or a readable binary file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        return
    while True:
        chunk = data.read(CHUNK)
        if not chunk:
            return
        yield chunk


class FilesystemBlobStore:
    """Blobs as files under ``root/ab/cd/<key>``, created with ``O_EXCL`` and fsynced.

    Durability: the file and then its folder are fsynced before ``put`` returns, so a
    blob that ``put`` returned survives a power cut. A crash in the middle of a write
    leaves a partial file under a key that no index row names (an orphan for
    ``pacs verify``); a failed write removes its partial file itself.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        #: Fan-out folders known to exist (saves a mkdir per blob).
        self._dirs: set[Path] = set()

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"blob folder {self.root} is not usable: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"blob folder {self.root} is not writable")

    def put(self, key: str, data: bytes | BinaryIO) -> BlobInfo:
        path = self._path(key)
        digest = hashlib.sha256()
        size = 0
        created = False
        if path.parent not in self._dirs:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageUnavailable(f"cannot write blob {key}: {exc.strerror or exc}") from exc
            self._dirs.add(path.parent)
        try:
            # O_EXCL: write-once without a check-then-write race. A crash mid-write leaves
            # a partial file under a key no index row names: an orphan ``pacs verify`` lists.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                # A fan-out folder we had made was removed behind our back: make it again.
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, 0o644)
            created = True
            with os.fdopen(fd, "wb", buffering=0) as out:
                for chunk in iter_chunks(data):
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) :]
                if self.fsync:
                    os.fsync(out.fileno())
            if self.fsync:
                # The new directory entry must be durable too, not only the file's bytes.
                _fsync_dir(path.parent)
        except FileExistsError:
            created = False
            raise
        except BaseException as exc:
            # Whatever stopped the write (disk, the caller's stream, an interrupt), a
            # half-written file must not keep the key or pass for a blob.
            if created:
                with contextlib.suppress(OSError):
                    path.unlink()
            if isinstance(exc, OSError):
                raise StorageUnavailable(f"cannot write blob {key}: {exc.strerror or exc}") from exc
            raise
        return BlobInfo(key=key, size=size, sha256=digest.hexdigest())

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            fh = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot read blob {key}: {exc}") from exc
        with fh:
            yield fh

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise StorageUnavailable(f"cannot stat blob {key}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):  # a folder of keys, not a blob
            raise BlobNotFound(key)
        return st.st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass  # absent, or a folder of keys: no blob to remove
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete blob {key}: {exc}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                key = key.replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
