"""The Flask app's /health and /status page: in process with the test client, and on the real server."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from flask.testing import FlaskClient
from pydicom.data import get_testdata_file

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.web.app import create_app
from tests.fixtures.server import PacsServer

AE_TITLE = "WEBTESTAE"
FILES = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, ae_title=AE_TITLE, dicom_port=11999, fsync=False)


@pytest.fixture
def index(settings: Settings) -> Iterator[Index]:
    idx = Index(settings.resolved_database_url, fsync=False)
    idx.migrate()
    yield idx
    idx.dispose()


@pytest.fixture
def blobs(settings: Settings) -> FilesystemBlobStore:
    return FilesystemBlobStore(settings.resolved_blob_dir, fsync=False)


def client_for(settings: Settings, index: Index, blobs: FilesystemBlobStore) -> FlaskClient:
    return create_app(settings, index, blobs, test_config={"TESTING": True}).test_client()


def test_health_counts_what_was_ingested(
    settings: Settings, index: Index, blobs: FilesystemBlobStore
) -> None:
    client = client_for(settings, index, blobs)
    empty = client.get("/health")
    assert empty.status_code == 200
    assert empty.get_json()["counts"] == {
        "patients": 0, "studies": 0, "series": 0, "instances": 0, "bytes": 0,
    }

    ingest = IngestService(blobs, index)
    try:
        for path in FILES:
            ingest.store(path.read_bytes(), Origin("import"))
    finally:
        ingest.close()
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in FILES]

    res = client.get("/health")
    assert res.status_code == 200
    assert res.mimetype == "application/json"
    body = res.get_json()
    assert body["ok"] is True
    assert body["index"] == "ok" and body["blobs"] == "ok"
    assert body["counts"] == {
        "patients": len({ds.PatientID for ds in datasets}),
        "studies": len({ds.StudyInstanceUID for ds in datasets}),
        "series": len({ds.SeriesInstanceUID for ds in datasets}),
        "instances": 2,
        "bytes": sum(p.stat().st_size for p in FILES),
    }


def test_status_page_shows_the_ae_title(
    settings: Settings, index: Index, blobs: FilesystemBlobStore
) -> None:
    client = client_for(settings, index, blobs)
    res = client.get("/status")
    assert res.status_code == 200
    assert res.mimetype == "text/html"
    page = res.get_data(as_text=True)
    assert f"AE title {AE_TITLE}, port 11999" in page
    assert "Running" in page and "Degraded" not in page
    # Signed out, the home page is the status page too (signed in, it is the worklist).
    assert client.get("/").get_data(as_text=True) == page


def test_unusable_blob_store_is_503_not_500(
    settings: Settings, index: Index, tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "blobs-is-a-file"
    not_a_folder.write_bytes(b"")
    client = client_for(settings, index, FilesystemBlobStore(not_a_folder))

    res = client.get("/health")
    assert res.status_code == 503
    body = res.get_json()
    assert body["ok"] is False
    assert body["blobs"].startswith("unavailable")
    assert body["index"] == "ok"  # the index still answers; only the blob store is down

    page = client.get("/status")
    assert page.status_code == 503
    text = page.get_data(as_text=True)
    assert "Degraded" in text and "Running" not in text
    assert AE_TITLE in text


def test_unmigrated_index_is_503_not_500(
    settings: Settings, blobs: FilesystemBlobStore, tmp_path: Path
) -> None:
    bare = Index(f"sqlite:///{tmp_path / 'empty.sqlite'}", fsync=False)  # no tables
    try:
        client = client_for(settings, bare, blobs)
        res = client.get("/health")
        assert res.status_code == 503
        body = res.get_json()
        assert body["ok"] is False and body["counts"] is None
        assert body["index"].startswith("unavailable")
        page = client.get("/status")
        assert page.status_code == 503 and "Degraded" in page.get_data(as_text=True)
    finally:
        bare.dispose()


def test_real_server_health(pacs_server: PacsServer) -> None:
    url = f"http://127.0.0.1:{pacs_server.http_port}/health"
    with urllib.request.urlopen(url, timeout=10) as res:
        assert res.status == 200
        assert res.headers.get_content_type() == "application/json"
        body = json.load(res)
    assert body["ok"] is True
    assert body["counts"]["instances"] == 0


def test_supervisor_builds_the_http_app_without_threads_or_open_connections(tmp_path: Path) -> None:
    """The supervisor builds the Flask app once and forks the HTTP workers from it (shared pages).

    That is only safe, and only happens, when building it starts no thread and leaves no pooled
    database connection behind: a thread would make the supervisor fall back to spawning fresh
    workers (each then ~10 MB bigger), a pooled connection would be shared by every worker.
    Run in a child interpreter so this test process's own threads do not count.
    """
    import subprocess
    import sys

    code = (
        "import threading, sys\n"
        "from pacs.config import load_settings\n"
        "from pacs.serve import _build_http_app\n"
        f"s = load_settings(env={{}}, data_dir={str(tmp_path)!r})\n"
        "from pacs.services import build_services\n"
        "build_services(s, migrate=True).close()\n"
        "services, app = _build_http_app(s, 11112)\n"
        "pool = services.index.engine.pool\n"
        "print(threading.active_count(), pool.checkedin() + pool.checkedout(), app.secret_key is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    threads, pooled, has_key = out.stdout.split()[-3:]
    assert threads == "1"
    assert pooled == "0"  # not even an idle connection in the pool
    assert has_key == "True"  # read from the index before the fork, so workers need not


def test_a_workers_first_image_request_compiles_no_sql(settings: Settings, index: Index,
                                                        blobs: FilesystemBlobStore) -> None:
    """The supervisor compiles the SQL of an image request (bearer token, instance row, series
    list) before it forks the HTTP workers, so no worker pays for it on its first image.

    SQLAlchemy keeps compiled statements in the engine's cache: a first request that compiled
    anything would add entries to it.
    """
    import time

    from pacs.serve import _build_http_app
    from pacs.store.users import Users

    ingest = IngestService(blobs, index)
    try:
        ingest.store(FILES[0].read_bytes(), Origin("import"))
    finally:
        ingest.close()
    users = Users(index)
    users.add("reader", "a long enough password", "radiologist")
    token = users.create_token("reader")
    # Used once elsewhere (another engine) within the last minute, so the request below has no
    # reason to write the token's last use: what it runs is the read path of any request.
    assert users.by_token(token) is not None
    ds = pydicom.dcmread(FILES[0], stop_before_pixels=True)
    url = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}/rendered")

    services, app = _build_http_app(settings, settings.dicom_port)
    try:
        cache = services.index.engine._compiled_cache  # noqa: SLF001 - what is being tested
        compiled = len(cache)
        assert compiled >= 3
        res = app.test_client().get(url, headers={"Authorization": f"Bearer {token}",
                                                  "Accept": "image/jpeg"})
        assert res.status_code == 200 and res.data[:2] == b"\xff\xd8"
        frames = app.extensions["pacs"]["frames"]
        deadline = time.monotonic() + 10
        while (frames._series_wanted or frames.working) and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)  # the render-ahead thread lists the series in the background
        assert len(cache) == compiled
    finally:
        app.extensions["pacs"]["frames"].close()
        services.close()

