"""One contract suite for every BlobStore, then the failures only one backend can have.

The ``minio`` runs talk to a real SeaweedFS S3 server (``tests/fixtures/s3.py``).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from pacs.config import Settings
from pacs.errors import BlobNotFound, ConfigError, StorageUnavailable
from pacs.store import minio_blobs
from pacs.store.blobs import BlobInfo, BlobStore, FilesystemBlobStore, new_blob_key
from pacs.store.minio_blobs import MinioBlobStore
from tests.fixtures.s3 import S3Server

#: A hang guard for failure paths, not a performance target.
FAIL_FAST_SECONDS = 15.0


@pytest.fixture(params=["filesystem", "minio"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each contract test runs once per backend."""
    if request.param == "filesystem":
        return FilesystemBlobStore(tmp_path / "blobs")
    store: BlobStore = request.getfixturevalue("minio_store")
    return store


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset (so range mistakes show)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def info_of(key: str, data: bytes) -> BlobInfo:
    return BlobInfo(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())


class Trickle(io.RawIOBase):
    """A non-seekable stream that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int = 65_537) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = self._step if n is None or n < 0 else min(n, self._step)
        chunk, self._data = self._data[:n], self._data[n:]
        return bytes(chunk)


# -- the contract --------------------------------------------------------------


def test_is_a_blob_store(blob_store: BlobStore) -> None:
    assert isinstance(blob_store, BlobStore)
    blob_store.ping()


def test_put_get_round_trip(blob_store: BlobStore) -> None:
    data = payload(100_003)
    key = new_blob_key()

    assert blob_store.put(key, data) == info_of(key, data)

    assert blob_store.get(key) == data
    assert blob_store.size(key) == len(data)
    assert blob_store.exists(key)


def test_empty_blob(blob_store: BlobStore) -> None:
    assert blob_store.put("em/pt/y", b"") == info_of("em/pt/y", b"")
    assert blob_store.get("em/pt/y") == b""
    assert blob_store.size("em/pt/y") == 0


def test_put_from_file_streams_several_chunks(blob_store: BlobStore, tmp_path: Path) -> None:
    data = payload(3 * 1024 * 1024 + 12_345, seed=1)  # more than 3 read chunks
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    with open(src, "rb") as fh:
        info = blob_store.put("ab/cd/file.dcm", fh)

    assert info == info_of("ab/cd/file.dcm", data)
    assert blob_store.get("ab/cd/file.dcm") == data


def test_put_from_stream_with_short_reads(blob_store: BlobStore) -> None:
    data = payload(1_500_000, seed=2)
    stream: BinaryIO = Trickle(data)  # type: ignore[assignment]

    assert blob_store.put("st/re/am", stream) == info_of("st/re/am", data)
    assert blob_store.get("st/re/am") == data


def test_put_from_file_starts_at_its_position(blob_store: BlobStore) -> None:
    fh = io.BytesIO(b"HEADER" + b"body bytes")
    fh.seek(6)

    assert blob_store.put("po/si/tion", fh).size == len(b"body bytes")
    assert blob_store.get("po/si/tion") == b"body bytes"


def test_get_range(blob_store: BlobStore) -> None:
    data = payload(50_000, seed=3)
    blob_store.put("ra/ng/e", data)

    assert blob_store.get_range("ra/ng/e", 0, 10) == data[:10]
    assert blob_store.get_range("ra/ng/e", 1234, 5678) == data[1234 : 1234 + 5678]
    # Up to `length`: a range past the end is cut, one starting past it is empty.
    assert blob_store.get_range("ra/ng/e", 49_990, 100) == data[49_990:]
    assert blob_store.get_range("ra/ng/e", 50_000, 10) == b""
    assert blob_store.get_range("ra/ng/e", 60_000, 10) == b""
    assert blob_store.get_range("ra/ng/e", 10, 0) == b""
    with pytest.raises(ValueError):
        blob_store.get_range("ra/ng/e", -1, 10)
    with pytest.raises(ValueError):
        blob_store.get_range("ra/ng/e", 0, -1)


def test_open_streams(blob_store: BlobStore) -> None:
    data = payload(2 * 1024 * 1024 + 17, seed=4)
    blob_store.put("op/en/x", data)

    parts = []
    with blob_store.open("op/en/x") as fh:
        while chunk := fh.read(100_000):
            parts.append(chunk)
    assert b"".join(parts) == data

    with blob_store.open("op/en/x") as fh:
        assert fh.read(5) == data[:5]  # leaving early releases the blob too
    with blob_store.open("op/en/x") as fh:
        assert fh.read() == data


def test_exists_and_size(blob_store: BlobStore) -> None:
    assert not blob_store.exists("ex/is/ts")
    with pytest.raises(BlobNotFound):
        blob_store.size("ex/is/ts")

    blob_store.put("ex/is/ts", b"12345")

    assert blob_store.exists("ex/is/ts")
    assert blob_store.size("ex/is/ts") == 5


def test_delete_is_idempotent(blob_store: BlobStore) -> None:
    blob_store.put("de/le/te", b"bytes")

    blob_store.delete("de/le/te")

    assert not blob_store.exists("de/le/te")
    with pytest.raises(BlobNotFound):
        blob_store.get("de/le/te")
    blob_store.delete("de/le/te")
    blob_store.delete("ne/ve/r-written")


def test_deleted_key_can_be_written_again(blob_store: BlobStore) -> None:
    blob_store.put("ag/ai/n", b"first")
    blob_store.delete("ag/ai/n")

    blob_store.put("ag/ai/n", b"second")

    assert blob_store.get("ag/ai/n") == b"second"


def test_keys(blob_store: BlobStore) -> None:
    assert list(blob_store.keys()) == []  # a store nothing was written to yet
    written = {"aa/bb/one.dcm", "aa/cc/two.dcm", "dd/ee/three.dcm", new_blob_key()}
    for key in written:
        blob_store.put(key, key.encode())

    assert set(blob_store.keys()) == written
    # A prefix is a string prefix, not a folder name ("a" matches "aa/...").
    for prefix in ("aa/", "aa/b", "a", "d", "zz/"):
        assert set(blob_store.keys(prefix)) == {k for k in written if k.startswith(prefix)}
    assert "aa/bb/one.dcm" in set(blob_store.keys("aa/b"))


def test_folder_of_keys_is_not_a_blob(blob_store: BlobStore) -> None:
    blob_store.put("fo/ld/er.dcm", b"x")

    assert not blob_store.exists("fo/ld")
    with pytest.raises(BlobNotFound):
        blob_store.get("fo/ld")
    with pytest.raises(BlobNotFound):
        blob_store.size("fo/ld")
    with pytest.raises(BlobNotFound):
        with blob_store.open("fo"):
            pass
    blob_store.delete("fo/ld")  # nothing to delete there
    assert blob_store.get("fo/ld/er.dcm") == b"x"


def test_write_once(blob_store: BlobStore) -> None:
    blob_store.put("on/ce/x", b"original")

    with pytest.raises(FileExistsError):
        blob_store.put("on/ce/x", b"replacement")
    with pytest.raises(FileExistsError):
        blob_store.put("on/ce/x", io.BytesIO(b"replacement from a file"))

    assert blob_store.get("on/ce/x") == b"original"
    assert list(blob_store.keys()) == ["on/ce/x"]


def test_put_whose_source_fails_leaves_the_key_free(blob_store: BlobStore) -> None:
    data = payload(3 * 1024 * 1024, seed=8)

    class BreaksHalfway(Trickle):
        def read(self, n: int | None = -1) -> bytes:
            if len(self._data) < len(data) // 2:
                raise ValueError("the sender went away")
            return super().read(n)

    with pytest.raises(ValueError, match="sender went away"):
        blob_store.put("br/ok/en", BreaksHalfway(data))  # type: ignore[arg-type]

    assert not blob_store.exists("br/ok/en")
    assert list(blob_store.keys()) == []
    assert blob_store.put("br/ok/en", data) == info_of("br/ok/en", data)


def test_missing_key(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        blob_store.get("mi/ss/ing")
    with pytest.raises(BlobNotFound):
        blob_store.get_range("mi/ss/ing", 0, 10)
    with pytest.raises(BlobNotFound):
        blob_store.get_range("mi/ss/ing", 0, 0)
    with pytest.raises(BlobNotFound):
        with blob_store.open("mi/ss/ing"):
            pass
    with pytest.raises(BlobNotFound):
        blob_store.size("mi/ss/ing")


@pytest.mark.parametrize("key", ["../x", "/abs", "", "a//b", "a/./b", "a/../../b", "a\\b", "a/"])
def test_invalid_keys_are_refused(blob_store: BlobStore, key: str) -> None:
    for call in (
        lambda: blob_store.put(key, b"x"),
        lambda: blob_store.get(key),
        lambda: blob_store.get_range(key, 0, 1),
        lambda: blob_store.size(key),
        lambda: blob_store.exists(key),
        lambda: blob_store.delete(key),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        with blob_store.open(key):
            pass
    assert list(blob_store.keys()) == []


# -- filesystem only -----------------------------------------------------------


def test_filesystem_refused_put_leaves_no_stray_file(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    store.put("aa/bb/x", b"first")

    with pytest.raises(FileExistsError):
        store.put("aa/bb/x", b"second")

    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert files == ["aa/bb/x"]


@pytest.mark.parametrize("key", ["aa/bb/blob", "flat"])
def test_filesystem_unusable_root_is_unavailable(tmp_path: Path, key: str) -> None:
    # We run as root, so chmod would not stop a write; a file where the folder
    # should be does.
    root = tmp_path / "blobs"
    root.write_bytes(b"not a folder")
    store = FilesystemBlobStore(root)

    with pytest.raises(StorageUnavailable):
        store.ping()
    with pytest.raises(StorageUnavailable):
        store.put(key, b"x")
    assert root.read_bytes() == b"not a folder"


# -- MinIO / S3 only -------------------------------------------------------------


def test_minio_creates_its_bucket_on_first_put(
    minio_store: MinioBlobStore, s3_server: S3Server
) -> None:
    client = s3_server.client()
    assert not client.bucket_exists(minio_store.bucket)

    minio_store.put("aa/bb/first", b"x")

    assert client.bucket_exists(minio_store.bucket)
    assert minio_store.get("aa/bb/first") == b"x"


def test_minio_ping_creates_bucket(minio_store: MinioBlobStore, s3_server: S3Server) -> None:
    minio_store.ping()
    minio_store.ping()  # and is happy when it exists

    assert s3_server.client().bucket_exists(minio_store.bucket)


def test_minio_recreates_a_bucket_deleted_behind_its_back(
    minio_store: MinioBlobStore, s3_server: S3Server
) -> None:
    minio_store.put("aa/bb/one", b"1")
    s3_server.remove_bucket(minio_store.bucket)

    with pytest.raises(BlobNotFound):
        minio_store.get("aa/bb/one")  # no bucket holds no blobs
    assert list(minio_store.keys()) == []
    minio_store.delete("aa/bb/one")

    minio_store.put("aa/bb/two", b"2")
    assert minio_store.get("aa/bb/two") == b"2"


def test_minio_conditional_put_closes_the_check_then_write_race(
    minio_store: MinioBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that slips in between the exists() check and the PUT still loses.

    This proves the server honours ``If-None-Match: *`` and that the SDK path sending
    it still works.
    """
    minio_store.put("ra/ce/x", b"first writer")
    monkeypatch.setattr(minio_store, "_exists", lambda key, action: False)

    with pytest.raises(FileExistsError):
        minio_store.put("ra/ce/x", b"second writer")

    assert minio_store.get("ra/ce/x") == b"first writer"


def test_minio_retried_put_that_meets_its_own_write_succeeds(
    minio_store: MinioBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT whose answer was lost is retried and meets its own object: not a clash."""
    info = minio_store.put("re/tr/y", b"same bytes")
    monkeypatch.setattr(minio_store, "_exists", lambda key, action: False)

    assert minio_store.put("re/tr/y", b"same bytes") == info


def test_minio_multipart_upload(
    minio_store: MinioBlobStore, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(minio_blobs, "SINGLE_PUT_MAX", 1024 * 1024)
    monkeypatch.setattr(minio_blobs, "PART_SIZE", 5 * 1024 * 1024)  # the S3 minimum
    data = payload(11 * 1024 * 1024 + 7, seed=5)

    info = minio_store.put("mu/lt/i", Trickle(data, step=300_000))  # type: ignore[arg-type]

    assert info == info_of("mu/lt/i", data)
    stat = s3_server.client().stat_object(minio_store.bucket, "mu/lt/i")
    assert stat.etag is not None and stat.etag.endswith("-3")  # really three parts
    assert minio_store.get("mu/lt/i") == data
    boundary = 5 * 1024 * 1024
    across = minio_store.get_range("mu/lt/i", boundary - 10, 20)
    assert across == data[boundary - 10 : boundary + 10]
    with pytest.raises(FileExistsError):
        minio_store.put("mu/lt/i", io.BytesIO(data))


def test_minio_prefix_separates_stores_in_one_bucket(
    minio_store: MinioBlobStore, s3_server: S3Server
) -> None:
    kwargs = s3_server.settings(minio_store.bucket)
    a = MinioBlobStore.from_settings(Settings(**kwargs))
    b = MinioBlobStore(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, minio_store.bucket,
        region=s3_server.region, prefix="archive-b/",
    )
    a.put("aa/bb/x", b"from a")
    b.put("aa/bb/x", b"from b")

    assert a.get("aa/bb/x") == b"from a"
    assert b.get("aa/bb/x") == b"from b"
    assert set(a.keys()) == {"aa/bb/x", "archive-b/aa/bb/x"}  # a sees the whole bucket
    assert list(b.keys()) == ["aa/bb/x"]


def test_minio_from_settings(s3_server: S3Server) -> None:
    settings = Settings(**s3_server.settings("some-bucket"))

    store = MinioBlobStore.from_settings(settings)

    assert (store.endpoint, store.bucket, store.region, store.secure) == (
        s3_server.endpoint, "some-bucket", s3_server.region, False,
    )
    assert s3_server.secret_key not in repr(store)


@pytest.mark.parametrize(
    ("endpoint", "bucket"),
    [
        ("127.0.0.1:9000", "x"),
        ("127.0.0.1:9000", "Not_A_Bucket"),
        ("http://127.0.0.1:9000", "pacs"),
    ],
)
def test_minio_bad_settings_are_config_errors(endpoint: str, bucket: str) -> None:
    with pytest.raises(ConfigError):
        MinioBlobStore(endpoint, "k", "s", bucket)


def _timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        call()
    return time.monotonic() - start


def test_minio_wrong_secret_key_is_unavailable(
    minio_store: MinioBlobStore, s3_server: S3Server
) -> None:
    minio_store.put("aa/bb/x", b"x")
    wrong = MinioBlobStore(
        s3_server.endpoint, s3_server.access_key, "not-the-secret", minio_store.bucket,
        region=s3_server.region,
    )

    for call in (
        wrong.ping,
        lambda: wrong.put("aa/bb/y", b"y"),
        lambda: wrong.get("aa/bb/x"),
        lambda: wrong.size("aa/bb/x"),
        lambda: wrong.exists("aa/bb/x"),
        lambda: list(wrong.keys()),
    ):
        assert _timed(call) < FAIL_FAST_SECONDS
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch|AccessDenied"):
        wrong.get("aa/bb/x")


def test_minio_server_down_fails_fast_then_recovers(
    minio_store: MinioBlobStore, s3_server: S3Server
) -> None:
    before = payload(200_000, seed=6)
    minio_store.put("aa/bb/before", before)

    s3_server.stop()
    try:
        assert _timed(lambda: minio_store.put("aa/bb/during", payload(300_000))) < FAIL_FAST_SECONDS
        assert _timed(lambda: minio_store.get("aa/bb/before")) < FAIL_FAST_SECONDS
        assert _timed(lambda: minio_store.exists("aa/bb/before")) < FAIL_FAST_SECONDS
        assert _timed(minio_store.ping) < FAIL_FAST_SECONDS
    finally:
        s3_server.start()

    minio_store.put("aa/bb/after", b"after")
    assert minio_store.get("aa/bb/after") == b"after"
    assert minio_store.get("aa/bb/before") == before
    assert not minio_store.exists("aa/bb/during")


def test_minio_data_survives_a_restart(minio_store: MinioBlobStore, s3_server: S3Server) -> None:
    blobs = {new_blob_key(): payload(n, seed=n) for n in (0, 1, 70_000, 1_200_000)}
    for key, data in blobs.items():
        minio_store.put(key, data)

    s3_server.stop()
    s3_server.start()

    assert set(minio_store.keys()) == set(blobs)
    for key, data in blobs.items():
        assert minio_store.get(key) == data


def test_minio_server_stopped_mid_upload(
    minio_store: MinioBlobStore, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies while parts are on the wire: a clean error and no half blob."""
    monkeypatch.setattr(minio_blobs, "SINGLE_PUT_MAX", 1024 * 1024)
    monkeypatch.setattr(minio_blobs, "PART_SIZE", 5 * 1024 * 1024)
    data = payload(16 * 1024 * 1024, seed=7)

    class StopsServerHalfway(Trickle):
        def read(self, n: int | None = -1) -> bytes:
            if len(self._data) < len(data) // 2 and s3_server.running:
                s3_server.stop()  # first part sent, the rest never arrives
            return super().read(n)

    start = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable):
            minio_store.put("mi/d-/send", StopsServerHalfway(data))  # type: ignore[arg-type]
        # The stop itself (SIGTERM, wait) is part of the elapsed time.
        assert time.monotonic() - start < FAIL_FAST_SECONDS + 10
    finally:
        s3_server.start()

    assert not minio_store.exists("mi/d-/send")
    assert list(minio_store.keys()) == []
    minio_store.put("mi/d-/send", data)  # the key is still free
    assert minio_store.get("mi/d-/send") == data
