"""``pacs share create | list | revoke`` on a real index (SQLite), through click's runner."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from pacs.cli import main
from pacs.config import load_settings
from pacs.ingest import IngestService, Origin
from pacs.services import build_services
from pacs.store.shares import token_hash

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicom"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("PACS_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    services = build_services(load_settings(env={}, data_dir=data, fsync=False), migrate=True)
    ingest = IngestService(services.blobs, services.index)
    for path in sorted((SAMPLES / "patient_77654033").glob("CR*.dcm")):
        ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    services.close()
    return data


def study_of_samples() -> tuple[str, list[str]]:
    files = sorted((SAMPLES / "patient_77654033").glob("CR*.dcm"))
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return str(headers[0].StudyInstanceUID), [str(h.SeriesInstanceUID) for h in headers]


def run(data: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data)], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_create_prints_the_url_and_stores_only_its_hash(data_dir: Path) -> None:
    study, series = study_of_samples()
    code, out, err = run(data_dir, "share", "create", study, "--days", "2", "--pin", "1234",
                         "--deidentify", "--download", "--series", series[0], "--label", "BV tỉnh",
                         "--creator", "binh", "--no-qr", env={"PACS_PUBLIC_URL": "https://pacs.example.vn"})
    assert code == 0, err
    url = out.strip()
    m = re.fullmatch(r"https://pacs\.example\.vn/s/([A-Za-z0-9_-]{32,})", url)
    assert m, url
    assert "expires" in err
    services = build_services(load_settings(env={}, data_dir=data_dir))
    try:
        from sqlalchemy import text

        with services.index.session() as s:
            row = s.execute(text("SELECT token_hash, created_by, deidentify, allow_download, series_uids "
                                 "FROM share_link")).one()
    finally:
        services.close()
    assert row[0] == token_hash(m.group(1)) and m.group(1) not in str(row)
    assert row[1] == "binh" and row[2] and row[3] and row[4] == series[0]


def test_create_with_qr_and_errors(data_dir: Path) -> None:
    study, _ = study_of_samples()
    code, out, _ = run(data_dir, "share", "create", study, "--qr")
    assert code == 0 and out.startswith("/s/") and len(out.splitlines()) > 10  # URL, then the QR code
    assert run(data_dir, "share", "create", study, "--days", "99")[0] != 0
    assert run(data_dir, "share", "create", study, "--pin", "12")[0] != 0
    assert run(data_dir, "share", "create", "1.2.3.4")[0] != 0


def test_list_and_revoke(data_dir: Path) -> None:
    study, _ = study_of_samples()
    run(data_dir, "share", "create", study, "--label", "first", "--no-qr")
    run(data_dir, "share", "create", study, "--label", "second", "--pin", "5555", "--no-qr")
    code, out, _ = run(data_dir, "share", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all("\tactive\t" in line for line in lines)
    assert any(line.endswith("\tfirst") for line in lines) and any("pin" in line for line in lines)
    first = next(line for line in lines if line.endswith("first")).split("\t")[0]
    code, out, _ = run(data_dir, "share", "revoke", first)
    assert code == 0 and f"revoked link {first}" in out
    assert len(run(data_dir, "share", "list", study)[1].strip().splitlines()) == 1
    shown = run(data_dir, "share", "list", study, "--all")[1]
    assert "\trevoked\t" in shown
    assert run(data_dir, "share", "revoke", "9999")[0] != 0
