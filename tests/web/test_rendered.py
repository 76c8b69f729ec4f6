"""Rendered / thumbnail resources and pixel values over HTTP: negotiation, caching, bad input."""

from __future__ import annotations

import base64
import contextlib
import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web.app import create_app
from tests.fixtures.server import PacsServer, make_server

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
CT = SAMPLES / "CT" / "CT_small.dcm"
MULTIFRAME = SAMPLES / "US" / "examples_ybr_color.dcm"  # 30 frames, JPEG baseline
JPEG_BASELINE = MULTIFRAME
AUTH = {"Authorization": "Basic " + base64.b64encode(b"binh:long password").decode()}


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def url(path: Path, tail: str = "rendered", root: str = "/dicomweb") -> str:
    st, se, sop = uids(path)
    return f"{root}/studies/{st}/series/{se}/instances/{sop}/{tail}"


def api(path: Path, tail: str) -> str:
    return url(path, tail, root="/api")


def broken_jpeg(tmp_path: Path) -> Path:
    """A JPEG Baseline file whose compressed frame is garbage of the same length (indexes fine)."""
    ds = pydicom.dcmread(JPEG_BASELINE)
    from pydicom.encaps import encapsulate, generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[0] = b"\xff\xd8" + bytes(len(frames[0]) - 2)
    ds.PixelData = encapsulate(frames)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.4242.1"  # same in the app and the test
    out = tmp_path / "broken.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@contextlib.contextmanager
def app_holding(tmp_path: Path, files: list[Path]) -> Iterator[Flask]:
    """An app on a fresh index and blob folder holding ``files``, and the radiologist binh."""
    settings = Settings(data_dir=tmp_path / "data", fsync=False, render_cache_mb=64)
    settings.data_dir.mkdir()
    index = Index(settings.resolved_database_url, fsync=False)
    index.migrate()
    blobs = FilesystemBlobStore(settings.resolved_blob_dir, fsync=False)
    Users(index).add("binh", "long password", "radiologist")
    ingest = IngestService(blobs, index)
    for path in files:
        ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    try:
        yield create_app(settings, index, blobs, test_config={"TESTING": True})
    finally:
        index.dispose()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    with app_holding(tmp_path, sorted(SAMPLES.rglob("*.dcm")) + [broken_jpeg(tmp_path)]) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def image(resp: object) -> Image.Image:
    return Image.open(io.BytesIO(resp.get_data()))  # type: ignore[attr-defined]


def test_rendered_default_is_jpeg_and_png_on_request(client: FlaskClient) -> None:
    jpeg = client.get(url(CT), headers=AUTH)
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg"
    assert image(jpeg).size == (128, 128)
    png = client.get(url(CT), headers={**AUTH, "Accept": "image/png"})
    assert png.mimetype == "image/png" and image(png).mode == "L"
    by_param = client.get(url(CT) + "?accept=image/png", headers={**AUTH, "Accept": "image/jpeg"})
    assert by_param.mimetype == "image/png"
    assert by_param.get_data() == png.get_data()


def test_unsupported_media_type_is_406(client: FlaskClient) -> None:
    resp = client.get(url(CT) + "?accept=image/tiff", headers=AUTH)
    assert resp.status_code == 406
    assert "image/jpeg" in resp.get_json()["error"]


def test_window_changes_the_pixels(client: FlaskClient) -> None:
    narrow = image(client.get(url(CT) + "?window=40,80&accept=image/png", headers=AUTH))
    wide = image(client.get(url(CT) + "?window=400,1800&accept=image/png", headers=AUTH))
    assert np.asarray(narrow).std() > np.asarray(wide).std()
    exact = image(client.get(url(CT) + "?window=40,80,linear_exact&accept=image/png", headers=AUTH))
    assert exact.size == narrow.size


@pytest.mark.parametrize(
    ("query", "words"),
    [("window=abc", "window"), ("window=40", "window"), ("window=40,0", "width"),
     ("window=40,80,cubic", "function"), ("viewport=0,10", "viewport"), ("quality=0", "quality"),
     ("quality=x", "quality")],
)
def test_bad_parameters_are_400_with_a_message(client: FlaskClient, query: str, words: str) -> None:
    resp = client.get(url(CT) + "?" + query, headers=AUTH)
    assert resp.status_code == 400, query
    assert words in resp.get_json()["error"].lower()
    assert client.get(url(CT), headers=AUTH).status_code == 200  # and the next request works


def test_frames_of_a_multiframe_instance(client: FlaskClient) -> None:
    first = client.get(url(MULTIFRAME, "frames/1/rendered") + "?accept=image/png", headers=AUTH)
    last = client.get(url(MULTIFRAME, "frames/30/rendered") + "?accept=image/png", headers=AUTH)
    assert first.status_code == last.status_code == 200
    assert image(first).mode == "RGB" and first.get_data() != last.get_data()
    assert client.get(url(MULTIFRAME, "frames/31/rendered"), headers=AUTH).status_code == 400
    assert client.get(url(MULTIFRAME, "frames/0/rendered"), headers=AUTH).status_code == 400
    assert client.get(url(MULTIFRAME, "frames/x/rendered"), headers=AUTH).status_code == 400
    assert client.get(url(MULTIFRAME, "frames/1,2/rendered"), headers=AUTH).status_code == 400


def test_viewport_fits_inside_and_keeps_the_aspect(client: FlaskClient) -> None:
    cr = SAMPLES / "CR" / "RG1_J2KI.dcm"  # 1955 rows x 1841 columns
    img = image(client.get(url(cr) + "?viewport=256,256", headers=AUTH))
    assert max(img.size) == 256 and img.size[0] < img.size[1]
    assert abs(img.size[0] / img.size[1] - 1841 / 1955) < 0.01


def test_etag_and_304(client: FlaskClient) -> None:
    first = client.get(url(CT) + "?window=40,80", headers=AUTH)
    etag = first.headers["ETag"]
    assert "max-age=31536000" in first.headers["Cache-Control"]
    assert "private" in first.headers["Cache-Control"]
    again = client.get(url(CT) + "?window=40,80", headers={**AUTH, "If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    other = client.get(url(CT) + "?window=50,80", headers={**AUTH, "If-None-Match": etag})
    assert other.status_code == 200 and other.headers["ETag"] != etag


def test_uids_must_belong_together(client: FlaskClient) -> None:
    st, se, sop = uids(CT)
    mst, mse, _ = uids(SAMPLES / "MR" / "MR_small.dcm")
    assert client.get(f"/dicomweb/studies/{mst}/series/{se}/instances/{sop}/rendered",
                      headers=AUTH).status_code == 404
    assert client.get(f"/dicomweb/studies/{st}/series/{mse}/instances/{sop}/rendered",
                      headers=AUTH).status_code == 404
    assert client.get(f"/dicomweb/studies/{st}/series/{se}/instances/1.2.3/rendered",
                      headers=AUTH).status_code == 404


def test_thumbnails_at_every_level(client: FlaskClient) -> None:
    st, se, sop = uids(SAMPLES / "CR" / "RG3_J2KR.dcm")
    for path in (f"/dicomweb/studies/{st}/thumbnail", f"/dicomweb/studies/{st}/series/{se}/thumbnail",
                 f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/thumbnail",
                 f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/frames/1/thumbnail"):
        resp = client.get(path, headers=AUTH)
        assert resp.status_code == 200, path
        assert max(image(resp).size) == 128
    assert client.get("/dicomweb/studies/1.2.3/thumbnail", headers=AUTH).status_code == 404


def test_pixel_value_is_the_modality_value(client: FlaskClient) -> None:
    ds = pydicom.dcmread(CT)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for x, y in ((0, 0), (64, 64), (100, 30)):
        body = client.get(api(CT, f"frames/1/pixel?x={x}&y={y}"), headers=AUTH).get_json()
        assert body["value"] == pytest.approx(hu[y, x])
        assert body["spacing"]["source"] == "PixelSpacing"
        assert body["spacing"]["row"] == pytest.approx(float(ds.PixelSpacing[0]))
    assert client.get(api(CT, "frames/1/pixel?x=500&y=0"), headers=AUTH).status_code == 400
    assert client.get(api(CT, "frames/1/pixel?x=1"), headers=AUTH).status_code == 400


def test_info_lists_frames_windows_and_calibration(client: FlaskClient) -> None:
    body = client.get(api(MULTIFRAME, "info"), headers=AUTH).get_json()
    assert body["frames"] == 30
    ct = client.get(api(CT, "info"), headers=AUTH).get_json()
    assert ct["frames"] == 1 and ct["rows"] == 128 and ct["spacing"]["source"] == "PixelSpacing"


def test_undecodable_pixels_are_a_4xx_and_the_server_goes_on(client: FlaskClient, tmp_path: Path) -> None:
    broken = broken_jpeg(tmp_path)
    resp = client.get(url(broken), headers=AUTH)
    assert resp.status_code == 422
    assert resp.get_json()["error"]
    assert client.get(url(CT), headers=AUTH).status_code == 200


def test_window_changes_reuse_the_decoded_frame(client: FlaskClient, app: Flask) -> None:
    cache = app.extensions["pacs"]["frames"].cache
    client.get(url(CT) + "?window=40,80", headers=AUTH)
    misses = cache.misses
    for center in range(10, 200, 10):
        assert client.get(url(CT) + f"?window={center},400", headers=AUTH).status_code == 200
    assert cache.misses == misses  # no re-read, no re-decode


def test_cache_stays_within_its_budget(tmp_path: Path) -> None:
    from pacs.frames import LRUCache

    cache = LRUCache(1000)
    for i in range(50):
        cache.put(i, object(), 300)
        assert cache.bytes <= 1000
    assert len(cache) == 3 and cache.get(49) is not None and cache.get(0) is None
    cache.put("huge", object(), 5000)  # larger than the cache: not kept
    assert cache.get("huge") is None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[PacsServer]:
    server = make_server(tmp_path / "data", samples=True, http_workers=2, workers=1)
    server.start()
    yield server
    server.stop()


def test_real_server_renders_through_waitress_workers(served: PacsServer) -> None:
    req = urllib.request.Request(served.url(url(CT) + "?window=40,400"),
                                 headers={"Authorization": served.basic_auth()})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
        assert resp.headers["Server"] == "mini-PACS"  # waitress, not the development server
        assert Image.open(io.BytesIO(resp.read())).size == (128, 128)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served.url(url(CT)), timeout=30)
    assert err.value.code == 401
    assert "waitress worker processes" in served.log


def _connections_per_process(root_pid: int, port: int) -> dict[int, int]:
    """Established connections to ``port`` held by each process under ``root_pid`` (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED
                inodes.add(fields[9])
    children = {int(p) for p in Path(f"/proc/{root_pid}/task/{root_pid}/children").read_text().split()}
    counts: dict[int, int] = {}
    for pid in children:
        n = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                n += 1
        if n:
            counts[pid] = n
    return counts


def test_http_workers_share_new_connections(served: PacsServer) -> None:
    """Four connections to two workers go two and two (each worker has one interpreter lock);
    left to the race for accept(), three often landed on one process."""
    import http.client

    assert served.proc is not None
    even = 0
    for _ in range(6):
        conns = []
        for _ in range(4):  # one after another, as a browser opens them
            conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=30)
            conn.request("GET", "/login")
            assert conn.getresponse().status == 200
            conns.append(conn)
        split = sorted(_connections_per_process(served.proc.pid, served.http_port).values())
        assert sum(split) == 4
        even += split == [2, 2]
        for conn in conns:
            conn.close()
    # A busy machine may keep a worker from its accept() past ACCEPT_DEFER now and then.
    assert even >= 4


def test_balance_accepts_defers_to_a_less_busy_sibling(monkeypatch: pytest.MonkeyPatch) -> None:
    from waitress.channel import HTTPChannel

    import pacs.serve as serve

    class FakeServer:
        def __init__(self) -> None:
            self._map: dict[int, object] = {}
            self.accepted = 0

        def readable(self) -> bool:
            return True

        def handle_accept(self) -> None:
            self.accepted += 1
            self._map[self.accepted] = HTTPChannel.__new__(HTTPChannel)

    clock = [100.0]
    monkeypatch.setattr(serve.time, "monotonic", lambda: clock[0])
    loads = [0, 0]
    server = FakeServer()
    serve.balance_accepts(server, loads, 0)
    assert server.readable() and loads[0] == 0
    server.handle_accept()  # level with the sibling: takes it
    assert server.accepted == 1 and loads == [1, 0]
    server.handle_accept()  # busier than the sibling: leaves it for a moment
    clock[0] += serve.ACCEPT_DEFER / 2
    server.handle_accept()
    assert server.accepted == 1
    clock[0] += serve.ACCEPT_DEFER  # nobody took it: takes it anyway
    server.handle_accept()
    assert server.accepted == 2 and loads == [2, 0]
    loads[1] = 2  # the sibling is as busy: no wait
    server.handle_accept()
    assert server.accepted == 3 and loads[0] == 3
    clock[0] += 60  # much later, busier again: a new connection gets a new wait
    server.handle_accept()
    assert server.accepted == 3


# --------------------------------------------------------------------------- scrolling a series


@pytest.fixture
def ct_app(tmp_path: Path) -> Iterator[tuple[Flask, list[Path]]]:
    """An app holding a generated 16-slice CT series (and nothing else)."""
    from scripts import make_ct_series

    folder = tmp_path / "ct"
    assert make_ct_series.main(["--out", str(folder), "--slices", "16"]) == 0
    files = sorted(folder.glob("*.dcm"))
    with app_holding(tmp_path, files) as app:
        yield app, files


@pytest.mark.parametrize("kind", ["image/jpeg", "image/png"])
def test_scrolling_a_series_gets_the_same_images_rendered_ahead(
    ct_app: tuple[Flask, list[Path]], kind: str
) -> None:
    """Slices rendered ahead of a scroll are byte for byte what the request would render."""
    import time

    from pacs.render import Instance, Window, encode

    app, files = ct_app
    client = app.test_client()
    frames = app.extensions["pacs"]["frames"]
    for path in files:
        resp = client.get(url(path) + "?window=40,400", headers={**AUTH, "Accept": kind})
        assert resp.status_code == 200 and resp.mimetype == kind
        expected = encode(Instance.from_bytes(path.read_bytes()).frame(1).render(Window(40, 400)), kind)
        assert resp.get_data() == expected
        again = client.get(url(path) + "?window=40,400",
                           headers={**AUTH, "Accept": kind, "If-None-Match": resp.headers["ETag"]})
        assert again.status_code == 304
        time.sleep(0.02)  # a user scrolls: the render-ahead thread gets a moment
    assert frames.ahead_hits > 0
    # Another window mid-scroll: the images rendered for the old one are not used for it.
    resp = client.get(url(files[-1]) + "?window=500,2000", headers={**AUTH, "Accept": kind})
    assert resp.get_data() == encode(
        Instance.from_bytes(files[-1].read_bytes()).frame(1).render(Window(500, 2000)), kind)
