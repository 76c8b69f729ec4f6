"""Shared study links through the web app: create, open, PIN, expiry, revoke, scope, de-identification,
download, notes, management pages; and one run against the real ``pacs serve``.

Study A and study B are synthetic, full of distinctive PHI, so that "no PHI in any byte" is a
plain substring check; the link for A must never reach B whatever UID is put in which URL.
"""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import text

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web.app import create_app

RADIOLOGIST = {"Authorization": "Basic " + base64.b64encode(b"binh:radiologist-pass").decode()}
REFERRER = {"Authorization": "Basic " + base64.b64encode(b"an:referrer-pass").decode()}
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"root:admin-pass-123").decode()}

#: Identifying values of study A: none of them may appear in anything a de-identified link gives.
PHI_A = {
    "PatientName": "Hoàng^Thị Xuân Mai", "PatientID": "PHI-ID-99871", "PatientBirthDate": "19620317",
    "AccessionNumber": "ACC55123", "InstitutionName": "Bệnh viện Đa khoa Tỉnh Lào Cai",
    "ReferringPhysicianName": "Vũ^Đức Thắng", "StudyDescription": "CT ngực Hoàng Thị Xuân Mai",
    "PatientAddress": "12 Phố Huế Hà Nội", "OtherPatientIDs": "OTHER-ID-4471",
    "OperatorsName": "Kỹ thuật viên Lưu", "StationName": "LAOCAI-CT01",
}
PHI_B = {"PatientName": "Trịnh^Văn Khải", "PatientID": "PHI-ID-31337", "PatientBirthDate": "19550101"}
PRIVATE_TEXT = "Hoàng Thị Xuân Mai private"


def _phi_needles(phi: dict[str, str]) -> list[bytes]:
    needles = []
    for value in phi.values():
        needles.append(value.encode())
        needles += [part.encode() for part in re.split(r"[\^ ]", value) if len(part) >= 4]
    needles.append(PRIVATE_TEXT.encode())
    return needles


def make_instance(phi: dict[str, str], study: str, series: str, number: int, series_number: int) -> bytes:
    """A small CT slice carrying ``phi`` (and a private element with the name)."""
    pixels = (np.arange(32 * 48, dtype="<u2").reshape(32, 48) * (number + 1)) % 4096
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    for keyword, value in phi.items():
        setattr(ds, keyword, value)
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20261120", "101500", "S77"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, number
    ds.SeriesDescription = f"Series {series_number} {phi['PatientName']}"
    ds.ImagePositionPatient = [0, 0, number * 5]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    block = ds.private_block(0x0011, "PACS TEST", create=True)
    block.add_new(0x01, "LO", PRIVATE_TEXT)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("share")
    settings = Settings(data_dir=tmp / "data", fsync=False, render_cache_mb=32,
                        share_default_days=7, share_max_days=30)
    settings.data_dir.mkdir()
    index = Index(settings.resolved_database_url, fsync=False)
    index.migrate()
    blobs = FilesystemBlobStore(settings.resolved_blob_dir, fsync=False)
    users = Users(index)
    users.add("binh", "radiologist-pass", "radiologist", "BS. Bình")
    users.add("an", "referrer-pass", "referrer", "BS. An")
    users.add("root", "admin-pass-123", "admin", "Quản trị")
    ingest = IngestService(blobs, index)
    uids: dict[str, Any] = {}
    for name, phi in (("A", PHI_A), ("B", PHI_B)):
        study = generate_uid()
        series = [generate_uid(), generate_uid()]
        raws = [make_instance(phi, study, se, n, k + 1) for k, se in enumerate(series) for n in (1, 2)]
        for raw in raws:
            ingest.store(raw, Origin("import"))
        uids[name] = {"study": study, "series": series, "raws": raws,
                      "sops": [str(pydicom.dcmread(io.BytesIO(r)).SOPInstanceUID) for r in raws]}
    ingest.close()
    app = create_app(settings, index, blobs, test_config={"TESTING": True})
    app.config["uids"] = uids
    yield app
    index.dispose()


@pytest.fixture
def clock(app: Flask) -> Iterator[Clock]:
    clock = Clock()
    shares = app.extensions["pacs"]["shares"]
    shares.clock = clock
    yield clock
    clock.now = datetime.now(timezone.utc)


@pytest.fixture
def client(app: Flask, clock: Clock) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def visitor(app: Flask, clock: Clock) -> FlaskClient:
    """Someone without an account (a fresh cookie jar)."""
    return app.test_client()


def U(app: Flask) -> dict[str, Any]:
    return app.config["uids"]  # type: ignore[no-any-return]


def create(client: FlaskClient, study: str, **body: Any) -> dict[str, Any]:
    res = client.post(f"/api/studies/{study}/shares", json=body, headers=RADIOLOGIST)
    assert res.status_code == 201, res.get_json()
    return res.get_json()  # type: ignore[no-any-return]


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page) or re.search(
        r'name="csrf-token" content="([^"]+)"', page)
    assert m, page[:400]
    return m.group(1)


def viewer_urls(study: str, series: str, sop: str) -> list[str]:
    """Every per-study URL the viewer (and a DICOMweb client) uses, for the given UIDs."""
    inst = f"studies/{study}/series/{series}/instances/{sop}"
    return [
        f"/api/studies/{study}",
        f"/api/{inst}/meta", f"/api/{inst}/tags", f"/api/{inst}/info",
        f"/api/{inst}/frames/1/pixel?x=1&y=1",
        f"/api/{inst}/frames/1/roi?shape=rect&x0=0&y0=0&x1=4&y1=4",
        f"/dicomweb/studies/{study}/thumbnail", f"/dicomweb/studies/{study}/series/{series}/thumbnail",
        f"/dicomweb/{inst}/thumbnail", f"/dicomweb/{inst}/rendered",
        f"/dicomweb/{inst}/frames/1/rendered?window=40,400", f"/dicomweb/{inst}/frames/1/thumbnail",
        f"/dicomweb/studies/{study}/metadata", f"/dicomweb/studies/{study}/series/{series}/metadata",
        f"/dicomweb/{inst}/metadata", f"/dicomweb/studies/{study}", f"/dicomweb/studies/{study}/series/{series}",
        f"/dicomweb/{inst}", f"/dicomweb/{inst}/frames/1", f"/dicomweb/{inst}/bulkdata/7FE00010",
    ]


def get(client: FlaskClient, url: str) -> Any:
    headers = {}
    if url.startswith("/dicomweb/") and not url.endswith(("metadata", "rendered", "thumbnail", "7FE00010")) \
            and "/frames/" not in url and "rendered?" not in url:
        headers["Accept"] = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    if "/frames/1" in url and url.endswith("/frames/1"):
        headers["Accept"] = "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"
    if url.endswith("7FE00010"):
        headers["Accept"] = "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*"
    return client.get(url, headers=headers)


# -- creating and listing ----------------------------------------------------------------------


def test_create_answers_a_url_a_qr_code_and_stores_only_the_hash(app: Flask, client: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], label="Hội chẩn BV Bạch Mai", days=3)
    assert made["url"] == f"/s/{made['token']}"  # no public_url: a path
    assert len(base64.urlsafe_b64decode(made["token"] + "==")) * 8 >= 128
    assert made["qr_svg"].startswith("<svg") and "share-qr" in made["qr_svg"]
    assert made["expires"].endswith("Z")
    expires = datetime.fromisoformat(made["expires"].replace("Z", "+00:00"))
    assert timedelta(days=2.9) < expires - datetime.now(timezone.utc) < timedelta(days=3.1)
    with app.extensions["pacs"]["index"].session() as s:
        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM share_link")) for v in row)
    assert made["token"] not in dump
    assert PHI_A["PatientID"] not in made["url"] and a["study"] not in made["url"]
    listed = client.get(f"/api/studies/{a['study']}/shares", headers=RADIOLOGIST).get_json()["shares"]
    mine = next(s for s in listed if s["id"] == made["id"])
    assert mine["label"] == "Hội chẩn BV Bạch Mai" and mine["creator"] == "binh"
    assert mine["state"] == "active" and mine["views"] == 0 and mine["last_access"] is None
    assert mine["pin"] is False and mine["deidentify"] is False and mine["series"] == []
    assert "token" not in mine


@pytest.mark.parametrize(("body", "status"), [
    ({"days": 31}, 400), ({"days": 0}, 400), ({"days": "7"}, 400), ({"pin": "12"}, 400),
    ({"pin": "123456789"}, 400), ({"pin": "12ab"}, 400), ({"series": ["1.2.3.4"]}, 400),
    ({"deidentify": "yes"}, 400), ({"label": "x" * 200}, 400),
])
def test_create_refuses_bad_input(app: Flask, client: FlaskClient, body: dict[str, Any], status: int) -> None:
    res = client.post(f"/api/studies/{U(app)['A']['study']}/shares", json=body, headers=RADIOLOGIST)
    assert res.status_code == status
    assert res.get_json()["error"]


def test_create_needs_a_known_study_and_the_share_capability(app: Flask, client: FlaskClient) -> None:
    assert client.post("/api/studies/1.2.3.999/shares", json={}, headers=RADIOLOGIST).status_code == 404
    res = client.post(f"/api/studies/{U(app)['A']['study']}/shares", json={}, headers=REFERRER)
    assert res.status_code == 403
    assert client.post(f"/api/studies/{U(app)['A']['study']}/shares", json={}).status_code == 401
    assert client.post(f"/api/studies/{U(app)['A']['study']}/shares", data="nope",
                       headers=RADIOLOGIST).status_code == 400


# -- opening --------------------------------------------------------------------------------------


def test_open_shows_the_viewer_for_the_study_and_is_audited(app: Flask, client: FlaskClient,
                                                            visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], label="second opinion")
    res = visitor.get(made["url"], headers={"User-Agent": "consultant-browser/1.0"})
    assert res.status_code == 200
    page = res.get_data(as_text=True)
    assert a["study"] in page and 'id="study-data"' in page
    assert res.headers["Referrer-Policy"] == "no-referrer"
    study = visitor.get(f"{made['url']}/api/studies/{a['study']}").get_json()
    assert study["study_uid"] == a["study"] and len(study["series"]) == 2
    listed = client.get(f"/api/studies/{a['study']}/shares", headers=RADIOLOGIST).get_json()["shares"]
    mine = next(s for s in listed if s["id"] == made["id"])
    assert mine["views"] == 1 and mine["last_access"]
    events = app.extensions["pacs"]["users"].audit_events(20)
    opened = [e for e in events if e.action == "share-open" and e.username == f"share:{made['id']}"]
    assert opened and opened[0].user_agent == "consultant-browser/1.0"
    assert opened[0].study_instance_uid == a["study"] and opened[0].address
    assert made["token"] not in " ".join(f"{e.username} {e.detail}" for e in events)


def test_every_viewer_url_works_inside_the_link(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"])
    for url in viewer_urls(a["study"], a["series"][0], a["sops"][0]):
        res = get(visitor, made["url"] + url)
        assert res.status_code == 200, (url, res.status_code, res.get_data()[:200])
    meta = visitor.get(f"{made['url']}/dicomweb/studies/{a['study']}/metadata").get_json()
    assert len(meta) == 4
    bulk = [v["BulkDataURI"] for obj in meta for v in obj.values() if "BulkDataURI" in v]
    assert bulk and all(u.startswith(f"{made['url']}/dicomweb/") for u in bulk)


@pytest.mark.parametrize("token", [
    "", "x", "A" * 32, "not-a-token-at-all-but-long-enough", "%00", "a/b",
])
def test_unknown_tokens_are_404(visitor: FlaskClient, token: str) -> None:
    res = visitor.get(f"/s/{token}")
    assert res.status_code == 404


def test_tampered_truncated_and_random_tokens_are_404_everywhere(app: Flask, client: FlaskClient,
                                                                 visitor: FlaskClient) -> None:
    import secrets

    a = U(app)["A"]
    token = create(client, a["study"], download=True)["token"]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    bodies = set()
    for bad in (token[:-1], token[:16], flipped, token.upper(), secrets.token_urlsafe(24), token + "x"):
        for path in ("", "/download", f"/api/studies/{a['study']}", f"/dicomweb/studies/{a['study']}/metadata"):
            res = visitor.get(f"/s/{bad}{path}")
            assert res.status_code == 404, (bad, path)
            if path == "":
                bodies.add(res.get_data())
    assert len(bodies) == 1  # one page for every unknown token


def test_expired_and_revoked_links_are_410_with_the_same_page(app: Flask, client: FlaskClient,
                                                              visitor: FlaskClient, clock: Clock) -> None:
    a, b = U(app)["A"], U(app)["B"]
    expiring = create(client, a["study"], days=1)
    revoked = create(client, b["study"])
    assert visitor.get(expiring["url"]).status_code == 200
    clock.now += timedelta(days=1, seconds=1)
    assert client.post(f"/api/shares/{revoked['id']}/revoke", headers=RADIOLOGIST).get_json() == {
        "id": revoked["id"], "state": "revoked"}
    pages = []
    for made, study in ((expiring, a["study"]), (revoked, b["study"])):
        res = visitor.get(made["url"])
        assert res.status_code == 410
        pages.append(res.get_data())
        assert visitor.get(f"{made['url']}/api/studies/{study}").status_code == 410
        assert visitor.get(f"{made['url']}/dicomweb/studies/{study}/thumbnail").status_code == 410
    assert pages[0] == pages[1]
    assert a["study"].encode() not in pages[0] and b"Ho\xc3\xa0ng" not in pages[0]
    states = {s["id"]: s["state"] for s in
              client.get(f"/api/studies/{a['study']}/shares", headers=RADIOLOGIST).get_json()["shares"]}
    assert states[expiring["id"]] == "expired"


def test_revoke_needs_the_capability_and_a_known_link(app: Flask, client: FlaskClient) -> None:
    made = create(client, U(app)["A"]["study"])
    assert client.post(f"/api/shares/{made['id']}/revoke", headers=REFERRER).status_code == 403
    assert client.post("/api/shares/999999/revoke", headers=RADIOLOGIST).status_code == 404


# -- PIN --------------------------------------------------------------------------------------


def test_pin_right_and_wrong_and_lock_out(app: Flask, client: FlaskClient, visitor: FlaskClient,
                                          clock: Clock) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], pin="4711")
    url = made["url"]
    res = visitor.get(url)
    assert res.status_code == 200
    page = res.get_data(as_text=True)
    assert 'name="pin"' in page and a["study"] not in page and "Hoàng" not in page
    assert visitor.get(f"{url}/api/studies/{a['study']}").status_code == 401
    csrf = csrf_of(page)
    assert visitor.post(f"{url}/pin", data={"pin": "4711"}).status_code == 403  # no CSRF token
    res = visitor.post(f"{url}/pin", data={"pin": "0000", "csrf_token": csrf})
    assert res.status_code == 403 and "pin" in res.get_data(as_text=True).lower()
    res = visitor.post(f"{url}/pin", data={"pin": "4711", "csrf_token": csrf})
    assert res.status_code == 302 and res.headers["Location"].endswith(url)
    assert visitor.get(url).status_code == 200
    assert visitor.get(f"{url}/api/studies/{a['study']}").status_code == 200
    # Another browser: locked out after a few wrong PINs, even with the right one.
    other = app.test_client()
    csrf = csrf_of(other.get(url).get_data(as_text=True))
    codes = [other.post(f"{url}/pin", data={"pin": "9999", "csrf_token": csrf}).status_code for _ in range(5)]
    assert codes[:4] == [403] * 4 and codes[4] == 429
    assert other.post(f"{url}/pin", data={"pin": "4711", "csrf_token": csrf}).status_code == 429
    clock.now += timedelta(minutes=16)
    assert other.post(f"{url}/pin", data={"pin": "4711", "csrf_token": csrf}).status_code == 302
    failed = [e for e in app.extensions["pacs"]["users"].audit_events(50) if e.action == "share-pin-failed"]
    assert failed and failed[0].username == f"share:{made['id']}"


# -- scope ------------------------------------------------------------------------------------


def test_a_link_for_study_a_never_reaches_study_b(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a, b = U(app)["A"], U(app)["B"]
    made = create(client, a["study"], download=True)
    visitor.get(made["url"])
    combos = [
        (b["study"], b["series"][0], b["sops"][0]),   # all of B
        (a["study"], b["series"][0], b["sops"][0]),   # A's study, B's series and instance
        (a["study"], a["series"][0], b["sops"][0]),   # A's study and series, B's instance
        (b["study"], a["series"][0], a["sops"][0]),   # B's study, A's series and instance
        (a["study"], a["series"][1], a["sops"][0]),   # A's UIDs, instance not in that series
    ]
    for study, series, sop in combos:
        for url in viewer_urls(study, series, sop):
            uses_series, uses_sop = "/series/" in url, "/instances/" in url
            legit = study == a["study"] and (not uses_series or series in a["series"]) and (
                not uses_sop or (sop in a["sops"] and a["sops"].index(sop) // 2 == a["series"].index(series)))
            if legit:
                continue  # only A's UIDs, where they belong: allowed
            res = get(visitor, made["url"] + url)
            assert res.status_code == 404, (url, res.status_code)
            assert PHI_B["PatientID"].encode() not in res.get_data()


def test_nothing_outside_the_viewer_urls_is_reachable_through_a_link(app: Flask, client: FlaskClient,
                                                                     visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"])
    url = made["url"]
    for path in ("/api/worklist", "/dicomweb/studies", f"/dicomweb/studies?PatientID={PHI_A['PatientID']}",
                 "/dicomweb/series", "/dicomweb/instances", f"/dicomweb/studies/{a['study']}/series",
                 f"/dicomweb/studies/{a['study']}/instances", f"/api/studies/{a['study']}/shares",
                 f"/api/studies/{a['study']}/notes", "/admin/shares", "/worklist", f"/viewer/{a['study']}",
                 "/api/studies", "/wado", "/health", "/s/x", "/dicomweb/studies/",
                 f"/api/studies/{a['study']}/"):
        assert visitor.get(url + path).status_code == 404, path
    assert visitor.post(f"{url}/dicomweb/studies", data=b"").status_code == 404
    assert visitor.post(f"{url}/api/studies/{a['study']}/shares", json={}).status_code == 404
    # The link's cookie is no sign-in for the normal URLs.
    assert visitor.get(f"/api/studies/{a['study']}").status_code == 401
    assert visitor.get("/api/worklist").status_code == 401


def test_odd_requests_through_a_link_never_fail_with_500(app: Flask, client: FlaskClient,
                                                         visitor: FlaskClient) -> None:
    a = U(app)["A"]
    plain = create(client, a["study"])["url"]
    deid = create(client, a["study"], deidentify=True)["url"]
    st, se, sop = a["study"], a["series"][0], a["sops"][0]
    inst = f"studies/{st}/series/{se}/instances/{sop}"
    odd = [
        f"/dicomweb/{inst}/frames/0/rendered", f"/dicomweb/{inst}/frames/x/rendered",
        f"/dicomweb/{inst}/frames/1,2/rendered", f"/dicomweb/{inst}/frames/99/rendered",
        f"/dicomweb/{inst}/rendered?window=a,b", f"/dicomweb/{inst}/rendered?viewport=-1,0",
        f"/api/{inst}/frames/1/pixel", f"/api/{inst}/frames/1/roi?shape=star",
        f"/dicomweb/studies/{st}/series/{se}/instances/..%2F..%2Fetc/rendered",
        f"/dicomweb/studies/{'9' * 300}/thumbnail", f"/api/studies/{st}/series/{se}/instances/%00/meta",
        f"/dicomweb/{inst}/bulkdata/00100010", f"/dicomweb/{inst}/bulkdata/7FE00010/1/2",
        f"/dicomweb/{inst}/metadata?accept=image/png",
    ]
    for base in (plain, deid):
        for url in odd:
            res = visitor.get(base + url)
            assert res.status_code < 500, (base, url, res.status_code)
        assert visitor.head(f"{base}/api/studies/{st}").status_code in (200, 404)
    # Header bulk data through a de-identified link: refused (it would be the original values).
    assert visitor.get(f"{deid}/dicomweb/{inst}/bulkdata/00100010").status_code == 404


def test_series_subset_limits_everything(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], series=[a["series"][1]], download=True)
    url = made["url"]
    study = visitor.get(f"{url}/api/studies/{a['study']}").get_json()
    assert [s["series_uid"] for s in study["series"]] == [a["series"][1]]
    assert study["modalities"] == ["CT"]
    for u in viewer_urls(a["study"], a["series"][0], a["sops"][0]):
        if "/series/" in u:
            assert get(visitor, url + u).status_code == 404, u
    meta = visitor.get(f"{url}/dicomweb/studies/{a['study']}/metadata").get_json()
    assert {m["0020000E"]["Value"][0] for m in meta} == {a["series"][1]}
    with zipfile.ZipFile(io.BytesIO(visitor.get(f"{url}/download").get_data())) as zf:
        files = [n for n in zf.namelist() if n != "DICOMDIR"]
        assert len(files) == 2
        assert {str(pydicom.dcmread(io.BytesIO(zf.read(n))).SeriesInstanceUID) for n in files} == {a["series"][1]}


# -- de-identified links ------------------------------------------------------------------------


def assert_no_phi(data: bytes, what: str, app: Flask) -> None:
    a = U(app)["A"]
    for needle in _phi_needles(PHI_A) + [u.encode() for u in (a["study"], *a["series"], *a["sops"])]:
        assert needle not in data, f"{what} holds {needle!r}"


def test_deidentified_link_shows_no_phi_anywhere(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], deidentify=True, download=True)
    url = made["url"]
    page = visitor.get(url)
    assert page.status_code == 200
    assert_no_phi(page.get_data(), "the page", app)
    study = visitor.get(f"{url}/api/studies/{a['study']}")
    assert study.status_code == 404  # real UIDs mean nothing to a de-identified link
    embedded = re.search(r'id="study-data">(.*?)</script>', page.get_data(as_text=True), re.S)
    assert embedded
    pseudo_study = re.search(r'"study_uid":\s*"([0-9.]+)"', embedded.group(1)).group(1)  # type: ignore[union-attr]
    res = visitor.get(f"{url}/api/studies/{pseudo_study}")
    assert res.status_code == 200
    data = res.get_json()
    assert_no_phi(res.get_data(), "the study JSON", app)
    assert data["deidentified"] and data["patient_name"] and data["patient_id"]
    series, sop = data["series"][0]["series_uid"], data["series"][0]["instances"][0]["sop_uid"]
    for u in viewer_urls(pseudo_study, series, sop):
        res = get(visitor, url + u)
        assert res.status_code == 200, (u, res.status_code, res.get_data()[:300])
        if not u.split("?")[0].endswith(("rendered", "thumbnail", "/frames/1", "7FE00010", "pixel", "roi")):
            body = res.get_data()
            if u.startswith("/dicomweb/") and not u.endswith("metadata"):
                # multipart of DICOM files: check every part as a parsed dataset and as bytes
                assert_no_phi(body, u, app)
            else:
                assert_no_phi(body, u, app)
    tags = visitor.get(f"{url}/api/studies/{pseudo_study}/series/{series}/instances/{sop}/tags").get_json()
    shown = {e["keyword"]: e["value"] for e in tags["elements"]}
    assert shown["PatientIdentityRemoved"] == "YES" and shown["PatientName"] == data["patient_name"]
    assert shown["StudyInstanceUID"] == pseudo_study and shown["SOPInstanceUID"] == sop
    assert shown["StudyDate"] == data["study_date"]  # the same shifted date in the overlay and tags
    meta = visitor.get(f"{url}/api/studies/{pseudo_study}/series/{series}/instances/{sop}/meta").get_json()
    assert meta["sop_uid"] == sop and meta["rows"] == 32 and meta["institution"] == ""
    # Pixels stay intact: the same rendering as through a plain link to the same instance.
    plain = create(client, a["study"])
    r1 = visitor.get(f"{url}/dicomweb/studies/{pseudo_study}/series/{series}/instances/{sop}/rendered",
                     headers={"Accept": "image/png"})
    r2 = visitor.get(f"{plain['url']}/dicomweb/studies/{a['study']}/series/{a['series'][0]}"
                     f"/instances/{a['sops'][0]}/rendered", headers={"Accept": "image/png"})
    assert r1.get_data() == r2.get_data()


def test_deidentified_download_and_retrieve_carry_no_phi_in_any_byte(app: Flask, client: FlaskClient,
                                                                    visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], deidentify=True, download=True)
    url = made["url"]
    page = visitor.get(url).get_data(as_text=True)
    data = json.loads(re.search(r'id="study-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    res = visitor.get(f"{url}/download")
    assert res.status_code == 200 and res.mimetype == "application/zip"
    assert "attachment" in res.headers["Content-Disposition"]
    assert PHI_A["PatientID"] not in res.headers["Content-Disposition"]
    originals = {str(pydicom.dcmread(io.BytesIO(r)).SOPInstanceUID): pydicom.dcmread(io.BytesIO(r)) for r in a["raws"]}
    pixels = {ds.PixelData for ds in originals.values()}
    pseudo_sops = {i["sop_uid"] for s in data["series"] for i in s["instances"]}
    with zipfile.ZipFile(io.BytesIO(res.get_data())) as zf:
        names = zf.namelist()
        assert "DICOMDIR" in names and len(names) == 5
        for name in names:
            raw = zf.read(name)
            assert_no_phi(raw, name, app)
            ds = pydicom.dcmread(io.BytesIO(raw))
            if name == "DICOMDIR":
                assert len(ds.DirectoryRecordSequence) == 1 + 1 + 2 + 4
                continue
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.StudyInstanceUID == data["study_uid"] and ds.SOPInstanceUID in pseudo_sops
            assert ds.PixelData in pixels  # images intact
            assert not any(e.tag.is_private for e in ds)
    # WADO-RS retrieve of the whole study: de-identified files too.
    res = visitor.get(f"{url}/dicomweb/studies/{data['study_uid']}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert res.status_code == 200
    assert_no_phi(res.get_data(), "WADO-RS", app)
    assert res.get_data().count(b"DICM") == 4
    kinds = {e.action for e in app.extensions["pacs"]["users"].audit_events(30)
             if e.username == f"share:{made['id']}"}
    assert {"share-open", "share-download", "share-retrieve"} <= kinds


def test_download_only_when_allowed(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    made = create(client, U(app)["A"]["study"])
    assert visitor.get(f"{made['url']}/download").status_code == 403


def test_links_differ_in_pseudonyms(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    one = create(client, a["study"], deidentify=True)
    two = create(client, a["study"], deidentify=True)
    uid = re.compile(r'"study_uid":\s*"([0-9.]+)"')
    first = uid.search(visitor.get(one["url"]).get_data(as_text=True))
    second = uid.search(visitor.get(two["url"]).get_data(as_text=True))
    assert first and second and first.group(1) != second.group(1)
    # ... and one link's pseudonyms are nothing to the other link.
    assert visitor.get(f"{two['url']}/api/studies/{first.group(1)}").status_code == 404
    assert visitor.get(f"{one['url']}/api/studies/{first.group(1)}").status_code == 200


# -- notes ------------------------------------------------------------------------------------


def test_notes_round_trip(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], label="BV tỉnh", notes=True)
    url = made["url"]
    csrf = csrf_of(visitor.get(url).get_data(as_text=True))
    headers = {"X-CSRF-Token": csrf}
    assert visitor.post(f"{url}/notes", json={"author": "BS. Minh", "text": "ok"}).status_code == 403  # CSRF
    res = visitor.post(f"{url}/notes", json={"author": "BS. Minh", "text": "Nốt mờ thùy trên phải, đề nghị CT."},
                       headers=headers)
    assert res.status_code == 201, res.get_json()
    assert visitor.post(f"{url}/notes", json={"author": "", "text": "x"}, headers=headers).status_code == 400
    assert visitor.post(f"{url}/notes", json={"author": "a", "text": "x" * 5000}, headers=headers).status_code == 400
    assert visitor.post(f"{url}/notes", json={"author": 3, "text": "x"}, headers=headers).status_code == 400
    mine = visitor.get(f"{url}/notes").get_json()["notes"]
    assert [(n["author"], n["text"]) for n in mine] == [("BS. Minh", "Nốt mờ thùy trên phải, đề nghị CT.")]
    thread = client.get(f"/api/studies/{a['study']}/notes", headers=RADIOLOGIST).get_json()["notes"]
    ours = [n for n in thread if n["share_id"] == made["id"]]
    assert ours and ours[0]["label"] == "BV tỉnh" and ours[0]["author"] == "BS. Minh" and ours[0]["created"]
    closed = create(client, a["study"], notes=False)
    csrf = csrf_of(visitor.get(closed["url"]).get_data(as_text=True))
    assert visitor.post(f"{closed['url']}/notes", json={"author": "x", "text": "y"},
                        headers={"X-CSRF-Token": csrf}).status_code == 403


def test_a_link_takes_a_bounded_number_of_notes(app: Flask, client: FlaskClient, visitor: FlaskClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs.web import share as share_module

    monkeypatch.setattr(share_module, "MAX_NOTES_PER_LINK", 2)
    made = create(client, U(app)["A"]["study"], notes=True)
    headers = {"X-CSRF-Token": csrf_of(visitor.get(made["url"]).get_data(as_text=True))}
    codes = [visitor.post(f"{made['url']}/notes", json={"author": "a", "text": str(i)}, headers=headers).status_code
             for i in range(3)]
    assert codes == [201, 201, 429]
    assert len(visitor.get(f"{made['url']}/notes").get_json()["notes"]) == 2


# -- admin page -------------------------------------------------------------------------------


def test_admin_page_lists_active_links_and_revokes(app: Flask, client: FlaskClient, visitor: FlaskClient) -> None:
    a = U(app)["A"]
    made = create(client, a["study"], label="for the admin page")
    assert client.get("/admin/shares", headers=RADIOLOGIST).status_code == 403
    admin = app.test_client()
    res = admin.get("/admin/shares", headers=ADMIN)
    assert res.status_code == 200
    page = res.get_data(as_text=True)
    assert "for the admin page" in page and f'data-share="{made["id"]}"' in page
    assert made["token"] not in page
    # A browser session: the revoke form carries the CSRF token.
    login = admin.get("/login").get_data(as_text=True)
    admin.post("/login", data={"username": "root", "password": "admin-pass-123",
                               "csrf_token": csrf_of(login), "next": "/admin/shares"})
    page = admin.get("/admin/shares").get_data(as_text=True)
    res = admin.post(f"/admin/shares/{made['id']}/revoke", data={"csrf_token": csrf_of(page)})
    assert res.status_code == 302 and res.headers["Location"].endswith("/admin/shares")
    assert visitor.get(made["url"]).status_code == 410
    assert f'data-share="{made["id"]}"' not in admin.get("/admin/shares").get_data(as_text=True)


# -- the real server --------------------------------------------------------------------------


@pytest.mark.slow
def test_share_end_to_end_on_the_real_server(tmp_path: Path) -> None:
    import requests

    from tests.fixtures.server import make_server

    src = tmp_path / "in"
    src.mkdir()
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    raws = [make_instance(PHI_A, study, se, n, k + 1) for k, se in enumerate(series) for n in (1, 2)]
    other = make_instance(PHI_B, generate_uid(), generate_uid(), 1, 1)
    for i, raw in enumerate([*raws, other]):
        (src / f"{i}.dcm").write_bytes(raw)
    b = pydicom.dcmread(io.BytesIO(other))
    server = make_server(tmp_path / "data", workers=1, http_workers=1)
    server.start()
    try:
        assert server.pacs("import", "-q", str(src)).returncode == 0
        auth = {"Authorization": server.basic_auth()}
        res = requests.post(server.url(f"/api/studies/{study}/shares"), headers=auth, timeout=30,
                            json={"pin": "2580", "deidentify": True, "download": True, "label": "e2e"})
        assert res.status_code == 201, res.text
        made = res.json()
        link = server.url(made["url"])
        s = requests.Session()
        page = s.get(link, timeout=30)
        assert page.status_code == 200 and 'name="pin"' in page.text
        csrf = csrf_of(page.text)
        assert s.post(link + "/pin", data={"pin": "1111", "csrf_token": csrf}, timeout=30).status_code == 403
        res = s.post(link + "/pin", data={"pin": "2580", "csrf_token": csrf}, timeout=30)
        assert res.status_code == 200 and 'id="study-data"' in res.text  # followed the redirect
        assert PHI_A["PatientID"] not in res.text and study not in res.text
        data = json.loads(re.search(r'id="study-data">(.*?)</script>', res.text, re.S).group(1))  # type: ignore[union-attr]
        pseudo = data["study_uid"]
        se, sop = data["series"][0]["series_uid"], data["series"][0]["instances"][0]["sop_uid"]
        img = s.get(f"{link}/dicomweb/studies/{pseudo}/series/{se}/instances/{sop}/frames/1/rendered",
                    headers={"Accept": "image/png"}, timeout=30)
        assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
        # Study B through A's link: refused whatever the URL.
        for u in viewer_urls(str(b.StudyInstanceUID), str(b.SeriesInstanceUID), str(b.SOPInstanceUID)):
            assert s.get(link + u, timeout=30).status_code == 404, u
        z = s.get(link + "/download", timeout=60)
        assert z.status_code == 200
        with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
            assert "DICOMDIR" in zf.namelist() and len(zf.namelist()) == 5
            for name in zf.namelist():
                raw = zf.read(name)
                for needle in _phi_needles(PHI_A) + [study.encode(), *(u.encode() for u in series)]:
                    assert needle not in raw, (name, needle)
                pydicom.dcmread(io.BytesIO(raw))
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', res.text).group(1)  # type: ignore[union-attr]
        note = s.post(link + "/notes", json={"author": "BS. Hà", "text": "Không thấy tổn thương."},
                      headers={"X-CSRF-Token": csrf}, timeout=30)
        assert note.status_code == 201
        thread = requests.get(server.url(f"/api/studies/{study}/notes"), headers=auth, timeout=30).json()
        assert thread["notes"][0]["text"] == "Không thấy tổn thương."
        assert requests.post(server.url(f"/api/shares/{made['id']}/revoke"), headers=auth,
                             timeout=30).status_code == 200
        assert s.get(link, timeout=30).status_code == 410
        assert s.get(f"{link}/api/studies/{pseudo}", timeout=30).status_code == 410
    finally:
        server.stop()
    assert made["token"] not in server.log


def test_expiry_settings_are_checked() -> None:
    from pacs.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings().replace(share_default_days=40)
    with pytest.raises(ConfigError):
        Settings().replace(share_default_days=0)
    assert Settings().replace(share_max_days=90, share_default_days=60).share_default_days == 60
