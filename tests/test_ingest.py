"""The one write path: durable order, duplicates, injected faults, concurrent writers.

Runs on SQLite and on a real PostgreSQL (``index_url``), with the filesystem blob store.
"""

from __future__ import annotations

import json
import threading
import zlib
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacs.errors import DuplicateConflict, InvalidInstance, StorageUnavailable
from pacs.ingest import IngestService, Origin, Outcome
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.tools import verify
from tests.test_dicom import minimal, part10

ORIGIN = Origin("dicom", calling_ae="MODALITY", address="127.0.0.1:1")


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def index(index_url: str) -> Index:
    idx = Index(index_url)
    idx.migrate()
    yield idx
    idx.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> FilesystemBlobStore:
    return FilesystemBlobStore(tmp_path / "blobs")


def ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def test_store_then_idempotent_resend(index: Index, blobs: FilesystemBlobStore) -> None:
    ingest = IngestService(blobs, index)
    raw = ct_bytes()
    first = ingest.store(raw, ORIGIN)
    assert first.outcome is Outcome.STORED
    assert blobs.get(first.blob_key) == raw
    again = ingest.store(raw, ORIGIN)
    assert again.outcome is Outcome.ALREADY_STORED
    assert again.blob_key == first.blob_key
    assert index.counts().instances == 1
    assert list(blobs.keys()) == [first.blob_key]  # no second blob


def test_different_bytes_keep_first(index: Index, blobs: FilesystemBlobStore) -> None:
    ingest = IngestService(blobs, index)  # default policy keep-first
    ds = minimal(PatientName="A")
    raw1 = part10(ds)
    ds.PatientName = "B"
    raw2 = part10(ds)
    first = ingest.store(raw1, ORIGIN)
    second = ingest.store(raw2, ORIGIN)
    assert second.outcome is Outcome.KEPT_FIRST and "kept the first" in second.message
    rec = index.get_instance(ds.SOPInstanceUID)
    assert rec is not None and rec.blob_key == first.blob_key
    assert blobs.get(rec.blob_key) == raw1
    assert list(blobs.keys()) == [first.blob_key]


def test_different_bytes_reject_and_overwrite(index: Index, blobs: FilesystemBlobStore) -> None:
    ds = minimal(PatientName="A")
    raw1 = part10(ds)
    ds.PatientName = "B"
    raw2 = part10(ds)
    IngestService(blobs, index).store(raw1, ORIGIN)
    with pytest.raises(DuplicateConflict):
        IngestService(blobs, index, duplicate_policy="reject").store(raw2, ORIGIN)
    replaced = IngestService(blobs, index, duplicate_policy="overwrite").store(raw2, ORIGIN)
    assert replaced.outcome is Outcome.REPLACED
    rec = index.get_instance(ds.SOPInstanceUID)
    assert rec is not None and blobs.get(rec.blob_key) == raw2
    assert list(blobs.keys()) == [rec.blob_key]  # the old blob is gone
    assert index.counts().instances == 1


def test_invalid_instance_writes_nothing(index: Index, blobs: FilesystemBlobStore) -> None:
    ingest = IngestService(blobs, index)
    truncated = Path(get_testdata_file("MR_truncated.dcm")).read_bytes()
    for raw in (b"garbage", truncated):
        with pytest.raises(InvalidInstance):
            ingest.store(raw, ORIGIN)
    assert index.counts().instances == 0
    assert list(blobs.keys()) == []


def test_oversize_instance_refused(index: Index, blobs: FilesystemBlobStore) -> None:
    ingest = IngestService(blobs, index, max_instance_size=1000)
    with pytest.raises(StorageUnavailable, match="exceeds"):
        ingest.store(ct_bytes(), ORIGIN)
    assert list(blobs.keys()) == []


class FailingBlobs(FilesystemBlobStore):
    def put(self, key, data):  # type: ignore[no-untyped-def]
        raise StorageUnavailable("disk full")


def test_blob_store_down_indexes_nothing(index: Index, tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        IngestService(FailingBlobs(tmp_path / "b"), index).store(ct_bytes(), ORIGIN)
    assert index.counts().instances == 0


class FailingIndex(Index):
    def add_instance(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise StorageUnavailable("database went away")


def test_index_failure_removes_the_blob(index_url: str, index: Index, blobs: FilesystemBlobStore) -> None:
    broken = FailingIndex(index_url)
    with pytest.raises(StorageUnavailable):
        IngestService(blobs, broken).store(ct_bytes(), ORIGIN)
    assert list(blobs.keys()) == []
    broken.dispose()


class CrashingIndex(Index):
    """A process death between the two writes: the blob is written, the index never is."""

    def add_instance(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise SystemExit("killed")


def test_crash_between_writes_leaves_only_an_orphan(
    index_url: str, index: Index, tmp_path: Path
) -> None:
    class NoDelete(FilesystemBlobStore):
        def delete(self, key: str) -> None:  # a dead process deletes nothing
            pass

    blobs = NoDelete(tmp_path / "blobs")
    ingest = IngestService(blobs, index)
    ingest.store(part10(minimal()), ORIGIN)
    crashing = CrashingIndex(index_url)
    with pytest.raises(SystemExit):
        IngestService(blobs, crashing).store(ct_bytes(), ORIGIN)
    crashing.dispose()
    report = verify(index, blobs)
    assert report.checked == 1 and not report.damaged
    assert len(report.orphans) == 1
    assert index.counts().instances == 1


def test_concurrent_writers_same_instances(index_url: str, index: Index, blobs: FilesystemBlobStore) -> None:
    """8 threads store the same 10 instances of one study: 10 rows, 10 blobs, 1 study."""
    study = minimal()
    payloads = []
    for i in range(10):
        ds = minimal(StudyInstanceUID=study.StudyInstanceUID, SeriesInstanceUID=study.SeriesInstanceUID,
                     InstanceNumber=i, PatientID="P1", PatientName="Nguyễn^Văn An",
                     SpecificCharacterSet="ISO_IR 192")
        payloads.append(part10(ds))
    errors: list[BaseException] = []
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def worker(order: list[bytes]) -> None:
        ingest = IngestService(blobs, index)
        for raw in order:
            try:
                r = ingest.store(raw, ORIGIN)
                with lock:
                    outcomes.append(r.outcome)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(payloads[::-1] if i % 2 else payloads,)) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert outcomes.count(Outcome.STORED) == 10
    assert outcomes.count(Outcome.ALREADY_STORED) == 70
    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 10)
    assert len(list(blobs.keys())) == 10
    assert not verify(index, blobs).orphans


def test_concurrent_series_of_one_study_keep_its_counters(index: Index, blobs: FilesystemBlobStore) -> None:
    """6 threads each store a series (3 instances, 5 modalities, one repeated, one empty, one
    with a LIKE wildcard) into one study at once, then again: the study's counters kept at
    ingest (models.Study) lose no update and hold each modality once."""
    study = minimal()
    modalities = ["CT", "SR", "CT", "", "R_", "RX"]
    series = [[part10(minimal(StudyInstanceUID=study.StudyInstanceUID, SeriesInstanceUID=uid,
                              Modality=modality, InstanceNumber=i, PatientID="P1"))
               for i in range(3)]
              for uid, modality in ((minimal().SeriesInstanceUID, m) for m in modalities)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(series))

    def worker(payloads: list[bytes]) -> None:
        ingest = IngestService(blobs, index)
        start.wait()
        try:
            for raw in payloads * 2:
                ingest.store(raw, ORIGIN)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(payloads,)) for payloads in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    from sqlalchemy import text

    with index.engine.connect() as conn:
        num_series, num_instances, kept = conn.execute(text(
            "SELECT num_series, num_instances, modalities FROM study")).one()
    assert (num_series, num_instances) == (6, 18)
    assert sorted(kept.split(",")) == ["CT", "RX", "R_", "SR"]


def _metadata_rows(index: Index) -> list[tuple[str, bytes]]:
    from sqlalchemy import text

    with index.engine.connect() as conn:
        return [(r[0], bytes(r[1])) for r in conn.execute(text(
            "SELECT m.blob_key, m.dicom_json FROM instance_metadata m "
            "JOIN instance i ON i.id = m.instance_pk"))]


def test_the_metadata_cache_row_commits_with_the_instance(index: Index, blobs: FilesystemBlobStore) -> None:
    """One commit per received instance: the cache row is written in the instance's transaction
    (it used to be a second transaction, a second fsync)."""
    from sqlalchemy import event

    commits: list[int] = []

    def count(conn: object) -> None:
        commits.append(1)

    event.listen(index.engine, "commit", count)
    try:
        stored = IngestService(blobs, index).store(ct_bytes(), ORIGIN)
    finally:
        event.remove(index.engine, "commit", count)
    assert stored.outcome is Outcome.STORED
    assert len(commits) == 1
    [(key, dicom_json)] = _metadata_rows(index)
    assert key == stored.blob_key
    assert json.loads(zlib.decompress(dicom_json))["00080018"]["Value"] == [stored.keys.sop_instance_uid]


def test_a_failing_metadata_row_does_not_fail_the_store(index: Index, blobs: FilesystemBlobStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is derived data: its insert fails inside a SAVEPOINT, the instance is stored."""
    from pacs.store import index as index_module

    real = index_module.CachedMetadata
    monkeypatch.setattr("pacs.ingest.CachedMetadata", lambda dicom_json, frames: real(None, frames))  # type: ignore[arg-type]
    stored = IngestService(blobs, index).store(ct_bytes(), ORIGIN)
    assert stored.outcome is Outcome.STORED
    assert index.get_instance(stored.keys.sop_instance_uid) is not None
    assert _metadata_rows(index) == []  # NOT NULL refused it; rebuilt from the blob on first use
