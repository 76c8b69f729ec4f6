"""``pacs import`` / ``verify`` / ``reindex`` / ``settings``, run for real as subprocesses.

Each archive test runs twice (``backend`` fixture): on filesystem + SQLite and on the real
S3 (SeaweedFS) + PostgreSQL pair. The commands get a clean environment: no inherited
``PACS_*`` variables, only the backend's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from pacs.config import Settings, load_settings
from pacs.services import Services, build_services
from pacs.store.blobs import new_blob_key
from pacs.store.models import Instance, Patient
from tests.fixtures.server import backend_env, base_env

PACS = str(Path(sys.executable).parent / "pacs")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_dicom"
SAMPLE_FILES = sorted(SAMPLES.rglob("*.dcm"))
#: Names the sample generator wrote in UTF-8 (ISO_IR 192); see sample_dicom/SOURCES.md.
VIETNAMESE_NAMES = {"Nguyễn^Văn An", "Trần^Thị Bình", "Đặng^Minh Châu", "Phạm^Quốc Dũng"}


@dataclass
class Archive:
    """One archive (data folder + backend env) and the ``pacs`` command pointed at it."""

    data_dir: Path
    env: dict[str, str]
    backend: str
    cwd: Path

    def pacs(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_pacs([command, "--data-dir", str(self.data_dir), *args], self.env, self.cwd)

    def settings(self) -> Settings:
        return load_settings(env=self.env, data_dir=self.data_dir)

    @contextlib.contextmanager
    def services(self) -> Iterator[Services]:
        """The same index and blob store the commands use, opened in the test process."""
        services = build_services(self.settings())
        try:
            yield services
        finally:
            services.close()

    def blob_rows(self) -> dict[str, tuple[str, str, int]]:
        """SOP Instance UID -> (blob key, sha256, size) for every indexed instance."""
        with self.services() as svc:
            return {uid: (key, sha, size) for uid, key, sha, size in svc.index.iter_blobs()}

    def patient_names(self) -> set[str]:
        with self.services() as svc, svc.index.session() as s:
            return set(s.scalars(select(Patient.patient_name)))


def run_pacs(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PACS, *argv], env=env, cwd=cwd, capture_output=True, text=True, encoding="utf-8",
        errors="replace", stdin=subprocess.DEVNULL, timeout=180,
    )


def output(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


@pytest.fixture
def archive(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Archive:
    """An empty archive on ``backend`` (a fresh bucket and database for s3-postgres)."""
    extra = backend_env(request, backend)
    env = base_env(extra)
    # Nothing from the developer's shell: only the backend's settings (and the log level).
    assert {k for k in env if k.startswith("PACS_")} == {"PACS_LOG_LEVEL", *extra}
    return Archive(data_dir=tmp_path / "data", env=env, backend=backend, cwd=tmp_path)


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- pacs import --------------------------------------------------------------------


def test_import_samples_then_rerun_is_safe(archive: Archive) -> None:
    n = len(SAMPLE_FILES)
    assert n >= 20

    first = archive.pacs("import", str(SAMPLES))
    assert first.returncode == 0, output(first)
    assert f"stored: {n}  already stored: 0  conflicts kept as first: 0  rejected: 0" in first.stdout
    # The progress bar (tqdm) goes to stderr, never into the summary on stdout.
    assert re.search(rf"100%\|[^\n\r]*\| {n}/{n} ", first.stderr), output(first)
    assert "%|" not in first.stdout and f"{n}/{n}" not in first.stdout
    rows = archive.blob_rows()
    assert set(rows) == {sop_uid(p) for p in SAMPLE_FILES}

    again = archive.pacs("import", str(SAMPLES))
    assert again.returncode == 0, output(again)
    assert f"stored: 0  already stored: {n}  conflicts kept as first: 0  rejected: 0" in again.stdout
    assert archive.blob_rows() == rows  # same rows, same blobs
    with archive.services() as svc:
        assert len(list(svc.blobs.keys())) == n  # no second copy of anything


def test_import_reports_rejected_files_and_stores_the_rest(archive: Archive, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    good = [SAMPLES / "CT" / "CT_small.dcm", SAMPLES / "MR" / "MR_small.dcm"]
    for path in good:
        shutil.copy(path, incoming / path.name)
    garbage = incoming / "garbage.dcm"
    garbage.write_bytes(b"this is not DICOM\n" * 64)
    truncated = incoming / "MR_truncated.dcm"
    shutil.copy(get_testdata_file("MR_truncated.dcm"), truncated)

    res = archive.pacs("import", str(incoming), "--quiet")
    assert res.returncode == 1, output(res)
    assert "stored: 2  already stored: 0  conflicts kept as first: 0  rejected: 2" in res.stdout
    rejected = dict(re.findall(r"^  rejected (.+?): (.+)$", res.stdout, re.MULTILINE))
    assert set(rejected) == {str(garbage), str(truncated)}, res.stdout
    assert "DICM" in rejected[str(garbage)]
    assert "truncated" in rejected[str(truncated)]
    assert set(archive.blob_rows()) == {sop_uid(p) for p in good}
    with archive.services() as svc:
        assert len(list(svc.blobs.keys())) == 2  # nothing left behind by the rejected files


# -- pacs verify --------------------------------------------------------------------


def overwrite_blob(archive: Archive, svc: Services, key: str, data: bytes) -> None:
    """Replace a blob's bytes behind the archive's back (blobs are write-once by design)."""
    if archive.backend == "fs-sqlite":
        (archive.settings().resolved_blob_dir / key).write_bytes(data)
    else:
        svc.blobs.delete(key)
        svc.blobs.put(key, data)


def test_verify_finds_missing_corrupt_and_orphan_blobs(archive: Archive) -> None:
    imported = archive.pacs("import", str(SAMPLES / "CT"), str(SAMPLES / "NM"), "--quiet")
    assert imported.returncode == 0, output(imported)
    n = len(list((SAMPLES / "CT").glob("*.dcm"))) + len(list((SAMPLES / "NM").glob("*.dcm")))

    clean = archive.pacs("verify")
    assert clean.returncode == 0, output(clean)
    assert f"checked: {n}  missing: 0  corrupt: 0  orphans: 0" in clean.stdout
    assert not re.search(r"^(MISSING|CORRUPT|ORPHAN)", clean.stdout, re.MULTILINE)
    assert re.search(rf"\| {n}/{n} ", clean.stderr), output(clean)  # progress on stderr

    with archive.services() as svc:
        rows = list(svc.index.iter_blobs())
        assert len(rows) == n
        (gone_uid, gone_key, _, _), (bad_uid, bad_key, _, _) = rows[0], rows[1]
        svc.blobs.delete(gone_key)
        raw = svc.blobs.get(bad_key)
        # One flipped byte, same size: only the checksum can tell.
        overwrite_blob(archive, svc, bad_key, raw[:-1] + bytes([raw[-1] ^ 0xFF]))
        orphan = new_blob_key()
        svc.blobs.put(orphan, b"left by an interrupted store")

    damaged = archive.pacs("verify", "--quiet")
    assert damaged.returncode == 1, output(damaged)
    lines = damaged.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("MISSING")] == [
        f"MISSING  {gone_key}  (instance {gone_uid})"
    ]
    assert [ln for ln in lines if ln.startswith("CORRUPT")] == [
        f"CORRUPT  {bad_key}  (instance {bad_uid}: SHA-256 differs)"
    ]
    assert [ln.split()[1] for ln in lines if ln.startswith("ORPHAN")] == [orphan]
    assert f"checked: {n}  missing: 1  corrupt: 1  orphans: 1" in damaged.stdout


def test_verify_finds_wrong_counts_and_recount_rewrites_them(archive: Archive) -> None:
    """The counts C-FIND answers from (kept at ingest) are checked against the rows and, with
    ``--recount``, rewritten; until then verify fails."""
    from sqlalchemy import text

    from pacs.store.query import FindQuery, Model, run_find

    imported = archive.pacs("import", str(SAMPLES / "CT"), str(SAMPLES / "NM"), "--quiet")
    assert imported.returncode == 0, output(imported)
    assert archive.pacs("verify", "--quiet").stdout.rstrip().endswith("counts wrong: 0")
    with archive.services() as svc, svc.index.engine.begin() as conn:
        series_uid, study_uid, right = conn.execute(text(
            "SELECT se.series_instance_uid, st.study_instance_uid, se.num_instances "
            "FROM series se JOIN study st ON se.study_pk = st.id ORDER BY se.id")).first()
        conn.execute(text("UPDATE series SET num_instances = num_instances + 5 "
                          "WHERE series_instance_uid = :u"), {"u": series_uid})
        conn.execute(text("UPDATE study SET num_series = num_series + 1, modalities = 'XA' "
                          "WHERE study_instance_uid = :u"), {"u": study_uid})

    wrong = archive.pacs("verify", "--quiet")
    assert wrong.returncode == 1, output(wrong)
    counts = sorted(ln for ln in wrong.stdout.splitlines() if ln.startswith("COUNTS"))
    assert len(counts) == 2, wrong.stdout
    assert counts[0].startswith(f"COUNTS  series {series_uid}: kept {right + 5} instances, "
                                f"the rows say {right} instances")
    assert counts[1].startswith(f"COUNTS  study {study_uid}: kept ") and "modalities 'XA'" in counts[1]
    assert "counts wrong: 2" in wrong.stdout and "pacs verify --recount" in wrong.stdout

    fixed = archive.pacs("verify", "--quiet", "--recount")
    assert fixed.returncode == 0, output(fixed)
    assert len([ln for ln in fixed.stdout.splitlines() if ln.startswith("RECOUNTED")]) == 2
    again = archive.pacs("verify", "--quiet")
    assert again.returncode == 0 and "counts wrong: 0" in again.stdout, output(again)
    with archive.services() as svc:
        query = FindQuery.parse("SERIES", Model.STUDY_ROOT, {
            "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
            "NumberOfSeriesRelatedInstances": ""})
        assert run_find(svc.index.engine, query).rows[0]["NumberOfSeriesRelatedInstances"] == right
        with svc.index.engine.connect() as conn:
            modalities = conn.execute(text("SELECT modalities FROM study WHERE study_instance_uid = :u"),
                                      {"u": study_uid}).scalar_one()
        assert modalities and "XA" not in modalities.split(",")


def test_verify_orphans_alone_are_not_damage(archive: Archive) -> None:
    imported = archive.pacs("import", str(SAMPLES / "CT" / "CT_small.dcm"), "--quiet")
    assert imported.returncode == 0, output(imported)
    with archive.services() as svc:
        orphan = new_blob_key()
        svc.blobs.put(orphan, b"half of an instance")

    res = archive.pacs("verify", "--quiet")
    assert res.returncode == 0, output(res)
    assert re.search(rf"^ORPHAN +{re.escape(orphan)} ", res.stdout, re.MULTILINE), res.stdout
    assert "checked: 1  missing: 0  corrupt: 0  orphans: 1" in res.stdout


# -- pacs reindex -------------------------------------------------------------------


def wipe_index(archive: Archive) -> None:
    if archive.backend == "fs-sqlite":
        db = archive.data_dir / "index.sqlite"
        assert db.is_file()
        for path in archive.data_dir.glob("index.sqlite*"):  # with any -wal / -shm
            path.unlink()
        return
    with archive.services() as svc:
        svc.index.clear()
        assert svc.index.counts().instances == 0
        assert svc.index.counts().patients == 0


def test_reindex_rebuilds_the_index_from_blobs(archive: Archive) -> None:
    imported = archive.pacs("import", str(SAMPLES), "--quiet")
    assert imported.returncode == 0, output(imported)
    before = archive.blob_rows()
    names_before = archive.patient_names()
    assert len(before) == len(SAMPLE_FILES)
    assert VIETNAMESE_NAMES <= names_before

    wipe_index(archive)
    res = archive.pacs("reindex", "--yes")
    assert res.returncode == 0, output(res)
    assert f"indexed: {len(before)}  duplicates: 0  unreadable: 0" in res.stdout

    assert archive.blob_rows() == before  # same UIDs, same blob keys, same SHA-256 and sizes
    assert archive.patient_names() == names_before
    assert VIETNAMESE_NAMES <= archive.patient_names()
    with archive.services() as svc, svc.index.session() as s:
        assert set(s.scalars(select(Instance.origin))) == {"reindex"}

    check = archive.pacs("verify", "--quiet")
    assert check.returncode == 0, output(check)
    assert f"checked: {len(before)}  missing: 0  corrupt: 0  orphans: 0" in check.stdout


# -- pacs settings and bad settings ------------------------------------------------------


def test_settings_prints_effective_values_and_hides_secrets(tmp_path: Path) -> None:
    env = base_env({
        "PACS_AE_TITLE": "SETTINGSAE",
        "PACS_MINIO_ACCESS_KEY": "visible-access-key",
        "PACS_MINIO_SECRET_KEY": "s3cr3t-Value-42",
        "PACS_DATABASE_URL": "postgresql+psycopg://pacs:hunter2@db.example:5432/pacs",
    })
    res = run_pacs(["settings"], env, tmp_path)
    assert res.returncode == 0, output(res)
    lines = set(res.stdout.splitlines())
    assert "ae_title = SETTINGSAE" in lines
    assert "dicom_port = 11112" in lines  # a default, still printed
    assert "minio_access_key = visible-access-key" in lines
    assert "minio_secret_key = ***" in lines
    assert "database_url = postgresql+psycopg://pacs:***@db.example:5432/pacs" in lines
    assert "s3cr3t" not in res.stdout + res.stderr
    assert "hunter2" not in res.stdout + res.stderr


def test_bad_setting_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    res = run_pacs(["verify", "--data-dir", str(data_dir)], base_env({"PACS_DICOM_PORT": "abc"}),
                   tmp_path)
    assert res.returncode != 0, output(res)
    assert "dicom_port" in res.stderr and "'abc'" in res.stderr, output(res)
    assert "Traceback" not in res.stdout + res.stderr
    assert not data_dir.exists()  # refused before touching any storage
