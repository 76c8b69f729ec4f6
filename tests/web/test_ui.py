"""The reading room's pages and JSON: worklist search (accents, paging, sorting), study
detail, per-instance meta, tag browser, ROI statistics, audit of study opens, sign-in."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.users import Users
from pacs.web.app import create_app
from pacs.web.ui import display_name

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
DOE_CT = sorted((SAMPLES / "patient_77654033").glob("CT2_*.dcm"))
CT_SMALL = SAMPLES / "CT" / "CT_small.dcm"
AUTH = {"Authorization": "Basic " + base64.b64encode("lan:mật khẩu dài".encode()).decode()}
PHANTOM_SPACING = (0.5, 0.8)  # row, column (mm)


def phantom(path: Path) -> Path:
    """A 40x60 CT whose stored values are known: HU = stored - 1024, a 100 HU block at
    rows 10..19, columns 20..39, and -1000 HU elsewhere."""
    stored = np.full((40, 60), 24, dtype="<u2")  # -1000 HU
    stored[10:20, 20:40] = 1124  # 100 HU
    stored[15, 30] = 1524  # one 500 HU pixel inside the block
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Lý^Thị Hoa"
    ds.PatientID = "ROI-1"
    ds.StudyDate = "20261120"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [str(PHANTOM_SPACING[0]), str(PHANTOM_SPACING[1])]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    tmp = tmp_path_factory.mktemp("ui")
    settings = Settings(data_dir=tmp / "data", fsync=False, render_cache_mb=64)
    settings.data_dir.mkdir()
    index = Index(settings.resolved_database_url, fsync=False)
    index.migrate()
    blobs = FilesystemBlobStore(settings.resolved_blob_dir, fsync=False)
    Users(index).add("lan", "mật khẩu dài", "radiologist", "BS. Lan")
    ingest = IngestService(blobs, index)
    for path in [*sorted(SAMPLES.rglob("*.dcm")), phantom(tmp / "phantom.dcm")]:
        ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    app = create_app(settings, index, blobs, test_config={"TESTING": True})
    app.config["phantom"] = pydicom.dcmread(tmp / "phantom.dcm", stop_before_pixels=True)
    yield app
    index.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def worklist(client: FlaskClient, **params: Any) -> dict[str, Any]:
    res = client.get("/api/worklist", query_string=params, headers=AUTH)
    assert res.status_code == 200, res.get_json()
    return res.get_json()  # type: ignore[no-any-return]


def names(data: dict[str, Any]) -> list[str]:
    return [r["patient_name_display"] for r in data["rows"]]


def all_studies(client: FlaskClient) -> list[dict[str, Any]]:
    return worklist(client, page_size=200)["rows"]  # type: ignore[no-any-return]


def study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("pn", "shown"), [
    ("Nguyễn^Văn An", "NGUYỄN VĂN AN"),
    ("Đặng^Minh Châu", "ĐẶNG MINH CHÂU"),
    ("Trần^Bình^Thị", "TRẦN THỊ BÌNH"),  # family^given^middle: read family, middle, given
    ("Trần^Thị Bình", "TRẦN THỊ BÌNH"),
    ("Doe^Archibald", "DOE ARCHIBALD"),
    ("OB^^^^", "OB"),
    ("^^^^", ""),
    ("", ""),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "YAMADA TAROU"),
    ("=山田^太郎", "山田 太郎"),
    ("Nguyễn^Văn  An^^BS.", "BS. NGUYỄN VĂN AN"),
])
def test_person_names_are_shown_family_first_in_capitals(pn: str, shown: str) -> None:
    assert display_name(pn) == shown


def test_person_names_can_keep_their_case() -> None:
    assert display_name("Lê^Văn Tâm", upper=False) == "Lê Văn Tâm"


# -- sign-in ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/worklist", "/api/worklist?name=nguyen", "/api/studies/1.2.3",
    "/api/studies/1.2/series/3.4/instances/5.6/tags",
    "/api/studies/1.2/series/3.4/instances/5.6/meta",
    "/api/studies/1.2/series/3.4/instances/5.6/frames/1/roi?shape=rect&x0=0&y0=0&x1=1&y1=1",
])
def test_apis_need_a_signed_in_user(client: FlaskClient, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 401
    assert res.headers["WWW-Authenticate"].startswith("Basic ")
    assert "rows" not in (res.get_json() or {})


def test_wrong_password_gets_nothing(client: FlaskClient) -> None:
    bad = {"Authorization": "Basic " + base64.b64encode(b"lan:wrong password").decode()}
    res = client.get("/api/worklist", headers=bad)
    assert res.status_code == 401
    assert "NGUY" not in res.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/worklist", "/viewer/1.2.3"])
def test_pages_send_a_browser_to_sign_in(client: FlaskClient, path: str) -> None:
    res = client.get(path, headers={"Accept": "text/html"})
    assert res.status_code == 302
    assert res.headers["Location"].startswith("/login?next=" + path.replace("/", "%2F")) or \
        res.headers["Location"].startswith("/login?next=" + path)


def test_viewer_code_is_public_and_holds_no_patient_data(client: FlaskClient) -> None:
    for name in ("js/viewer.js", "js/worklist.js", "js/viewport.js", "css/app.css"):
        res = client.get(f"/static/viewer/{name}")
        assert res.status_code == 200, name
        text = res.get_data(as_text=True)
        assert not any(x in text for x in ("Archibald", "VN-0001", "Nguyễn^Văn", "CT1")), name
        assert "Set-Cookie" not in res.headers  # served the same to everyone
    assert client.get("/static/viewer/js/viewer.js").mimetype == "text/javascript"


def test_home_is_the_status_page_signed_out_and_the_worklist_signed_in(client: FlaskClient) -> None:
    res = client.get("/")
    assert res.status_code == 200 and "AE title" in res.get_data(as_text=True)
    assert client.get("/status").status_code == 200
    res = client.get("/", headers=AUTH)
    assert res.status_code == 302 and res.headers["Location"] == "/worklist"


def test_pages_render_for_a_signed_in_user(client: FlaskClient) -> None:
    page = client.get("/worklist", headers=AUTH)
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert 'name="csrf-token"' in text and "js/worklist.js" in text
    assert "BS. Lan" in text
    st = study_of(CT_SMALL)
    page = client.get(f"/viewer/{st}", headers={**AUTH, "Accept-Language": "vi-VN,vi;q=0.9"})
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert f'data-study="{st}"' in text and '<html lang="vi">' in text
    # The study header comes with the page, as JSON that cannot break out of its script tag.
    m = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', text, re.S)
    assert m and json.loads(m.group(1))["study_uid"] == st
    assert json.loads(m.group(1))["patient_name_display"] == "COMPRESSEDSAMPLES CT1"
    assert client.get("/viewer/1.2.3.4", headers=AUTH).status_code == 404


def test_the_chosen_language_wins_over_the_browser(client: FlaskClient) -> None:
    client.set_cookie("pacs_lang", "en")
    page = client.get("/worklist", headers={**AUTH, "Accept-Language": "vi"})
    assert '<html lang="en">' in page.get_data(as_text=True)


# -- worklist ---------------------------------------------------------------------------


def test_worklist_lists_every_study_with_counts(client: FlaskClient) -> None:
    data = worklist(client, page_size=200)
    uids = {study_of(p) for p in SAMPLES.rglob("*.dcm")}
    assert data["total"] == len(uids) + 1  # + the ROI phantom
    assert {r["study_uid"] for r in data["rows"]} >= uids
    by_uid = {r["study_uid"]: r for r in data["rows"]}
    doe_ct = by_uid[study_of(DOE_CT[0])]
    assert (doe_ct["series"], doe_ct["images"], doe_ct["modalities"]) == (1, 4, ["CT"])
    doe_cr = by_uid[study_of(SAMPLES / "patient_77654033" / "CR1_6154.dcm")]
    assert (doe_cr["series"], doe_cr["images"], doe_cr["modalities"]) == (3, 3, ["CR"])
    assert doe_ct["patient_name_display"] == "DOE ARCHIBALD" and doe_ct["patient_name"] == "Doe^Archibald"
    assert data["latest"]


@pytest.mark.parametrize("typed", [
    "nguyen", "NGUYEN", "Nguyễn", "nguyễn văn", "nguyen van an", "van an", "  Nguyen   VAN ",
    "nguy", "Nguyen*",
])
def test_names_match_with_or_without_accents(client: FlaskClient, typed: str) -> None:
    assert names(worklist(client, name=typed)) == ["NGUYỄN VĂN AN"]


@pytest.mark.parametrize(("typed", "expected"), [
    ("dang", ["ĐẶNG MINH CHÂU"]),
    ("Đặng Minh", ["ĐẶNG MINH CHÂU"]),
    ("châu", ["ĐẶNG MINH CHÂU"]),
    ("tran thi binh", ["TRẦN THỊ BÌNH"]),
    ("pham quoc dung", ["PHẠM QUỐC DŨNG"]),
    ("ly thi hoa", ["LÝ THỊ HOA"]),
    ("guyen", []),  # words match from their start, not in the middle
    ("nguyen binh", []),  # every word must match
    ("100%", []),  # LIKE wildcards are taken literally
])
def test_name_search_matches_words(client: FlaskClient, typed: str, expected: list[str]) -> None:
    assert names(worklist(client, name=typed)) == expected


def test_search_by_patient_id_accession_modality_and_date(client: FlaskClient) -> None:
    vn = worklist(client, patient_id="VN-000")["rows"]
    assert sorted(r["patient_id"] for r in vn) == ["VN-0001", "VN-0002", "VN-0003", "VN-0004"]
    assert names(worklist(client, patient_id="77654033")) == ["DOE ARCHIBALD", "DOE ARCHIBALD"]
    assert worklist(client, patient_id="VN_0")["total"] == 0  # "_" is not a wildcard
    acc = worklist(client, accession="FUJI")
    assert [r["accession"] for r in acc["rows"]] == ["FUJI95706"]
    cr = worklist(client, modality="CR", page_size=200)
    assert cr["total"] == 3 and all("CR" in r["modalities"] for r in cr["rows"])
    both = worklist(client, modality="CR,CT", page_size=200)
    assert both["total"] == cr["total"] + worklist(client, modality="CT")["total"]
    day = worklist(client, **{"from": "20040826", "to": "20040826"}, page_size=200)
    assert day["total"] > 0 and {r["study_date"] for r in day["rows"]} == {"20040826"}
    dashed = worklist(client, **{"from": "2004-08-26", "to": "2004-08-26"}, page_size=200)
    assert dashed["total"] == day["total"]
    since = worklist(client, **{"from": "20100101"}, page_size=200)
    assert since["total"] > 0 and all(r["study_date"] >= "20100101" for r in since["rows"])
    until = worklist(client, to="19991231", page_size=200)
    # ExplVR_BigEnd.dcm has the legacy "1997.04.24" form (kept as stored: "1997.04."); it
    # still sorts as 1997, which is right.
    assert sorted(r["study_date"] for r in until["rows"]) == ["19950903", "1997.04."]


@pytest.mark.parametrize(("params", "keyword"), [
    ({"from": "2026-13-01"}, "from"),
    ({"from": "yesterday"}, "from"),
    ({"from": "20260102", "to": "20260101"}, "to"),
    ({"sort": "patient_name; drop table study"}, "sort"),
    ({"dir": "sideways"}, "dir"),
    ({"page": "0"}, "page"),
    ({"page_size": "100000"}, "page_size"),
    ({"modality": "C'T"}, "modality"),
])
def test_bad_search_parameters_are_400(client: FlaskClient, params: dict[str, str], keyword: str) -> None:
    res = client.get("/api/worklist", query_string=params, headers=AUTH)
    assert res.status_code == 400
    assert res.get_json()["keyword"] == keyword


def test_paging_covers_every_study_once(client: FlaskClient) -> None:
    total = worklist(client)["total"]
    seen: list[str] = []
    page = 1
    while True:
        data = worklist(client, page=page, page_size=7, sort="name", dir="asc")
        assert data["total"] == total and data["page"] == page
        if not data["rows"]:
            break
        assert len(data["rows"]) <= 7
        seen += [r["study_uid"] for r in data["rows"]]
        page += 1
    assert page == math.ceil(total / 7) + 1
    assert len(seen) == len(set(seen)) == total


def test_sorting(client: FlaskClient) -> None:
    rows = worklist(client, sort="name", dir="asc", page_size=200)["rows"]
    from pacs.dicom import fold_text

    folded = [fold_text(r["patient_name"]) for r in rows]
    assert folded == sorted(folded)
    rows = worklist(client, sort="name", dir="desc", page_size=200)["rows"]
    assert [fold_text(r["patient_name"]) for r in rows] == sorted(folded, reverse=True)
    images = [r["images"] for r in worklist(client, sort="images", dir="desc", page_size=200)["rows"]]
    assert images == sorted(images, reverse=True) and images[0] == 4
    series = [r["series"] for r in worklist(client, sort="series", page_size=200)["rows"]]
    assert series == sorted(series) and series[-1] == 3
    dates = [r["study_date"] for r in worklist(client, sort="date", dir="asc", page_size=200)["rows"]]
    assert dates == sorted(dates)
    default = worklist(client, page_size=200)
    assert (default["sort"], default["dir"]) == ("date", "desc")
    assert [r["study_date"] for r in default["rows"]] == sorted(dates, reverse=True)


def test_a_new_study_shows_up_in_the_next_poll(client: FlaskClient, app: Flask, tmp_path: Path) -> None:
    before = worklist(client)
    ds = pydicom.dcmread(CT_SMALL)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "Hoàng^Văn Nam", "POLL-1"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDate = "20991231"
    path = tmp_path / "new.dcm"
    ds.save_as(path, enforce_file_format=True)
    ext = app.extensions["pacs"]
    ingest = IngestService(ext["blobs"], ext["index"])
    ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    after = worklist(client)
    assert after["total"] == before["total"] + 1
    assert after["latest"] > before["latest"]
    assert after["rows"][0]["patient_name_display"] == "HOÀNG VĂN NAM"  # newest date first


# -- study, meta, tags, ROI -------------------------------------------------------------


def test_study_detail_lists_series_and_instances_in_reading_order(client: FlaskClient, app: Flask) -> None:
    st = study_of(DOE_CT[0])
    res = client.get(f"/api/studies/{st}", headers=AUTH)
    assert res.status_code == 200
    body = res.get_json()
    assert body["patient_name_display"] == "DOE ARCHIBALD" and body["patient_id"] == "77654033"
    assert body["modalities"] == ["CT"] and len(body["series"]) == 1
    series = body["series"][0]
    # Instance numbers 18, 180, 181, 182: numeric order, not text order.
    assert [i["number"] for i in series["instances"]] == [18, 180, 181, 182]
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in DOE_CT}
    assert {i["sop_uid"] for i in series["instances"]} == expected
    assert series["count"] == series["images"] == 4 and series["modality"] == "CT"
    assert all(i["rows"] and i["frames"] == 1 for i in series["instances"])
    cr = client.get(f"/api/studies/{study_of(SAMPLES / 'patient_77654033' / 'CR1_6154.dcm')}",
                    headers=AUTH).get_json()
    assert len(cr["series"]) == 3
    assert client.get("/api/studies/1.2.3.4", headers=AUTH).status_code == 404


def test_opening_a_study_is_audited_without_the_patient_name(client: FlaskClient, app: Flask) -> None:
    st = study_of(CT_SMALL)
    client.get(f"/api/studies/{st}", headers={**AUTH, "User-Agent": "pytest-viewer"})
    event = app.extensions["pacs"]["users"].audit_events(1)[0]
    assert (event.action, event.username, event.study_instance_uid) == ("open-study", "lan", st)
    assert event.user_agent == "pytest-viewer" and event.address
    assert "CompressedSamples" not in f"{event.detail}{event.user_agent}"


def test_opening_the_viewer_page_is_audited(client: FlaskClient, app: Flask) -> None:
    st = study_of(SAMPLES / "MR" / "MR_small_implicit.dcm")
    assert client.get(f"/viewer/{st}", headers=AUTH).status_code == 200
    event = app.extensions["pacs"]["users"].audit_events(1)[0]
    assert (event.action, event.username, event.study_instance_uid) == ("open-study", "lan", st)
    client.get("/viewer/1.2.3.4.5", headers=AUTH)
    assert app.extensions["pacs"]["users"].audit_events(1)[0].study_instance_uid == st  # 404: none


def test_study_json_cannot_break_out_of_the_page(client: FlaskClient, app: Flask, tmp_path: Path) -> None:
    ds = pydicom.dcmread(CT_SMALL)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDescription = "</script><script>alert(1)</script>"
    path = tmp_path / "xss.dcm"
    ds.save_as(path, enforce_file_format=True)
    ext = app.extensions["pacs"]
    ingest = IngestService(ext["blobs"], ext["index"])
    ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    text = client.get(f"/viewer/{ds.StudyInstanceUID}", headers=AUTH).get_data(as_text=True)
    assert "<script>alert(1)" not in text
    m = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', text, re.S)
    assert m and json.loads(m.group(1))["description"] == "</script><script>alert(1)</script>"


def instance_url(path: Path, tail: str) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (f"/api/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/{tail}")


def test_meta_gives_overlay_values_windows_and_spacing(client: FlaskClient) -> None:
    res = client.get(instance_url(CT_SMALL, "meta"), headers=AUTH)
    assert res.status_code == 200
    m = res.get_json()
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    assert m["renderable"] is True and m["color"] is False
    assert (m["rows"], m["columns"], m["frames"]) == (128, 128, 1)
    assert m["spacing"] == {"row": float(ds.PixelSpacing[0]), "column": float(ds.PixelSpacing[1]),
                            "source": "PixelSpacing"}
    assert m["slice_location"] == pytest.approx(float(ds.SliceLocation))
    assert m["instance_number"] == str(ds.InstanceNumber) and m["modality"] == "CT"
    assert m["window"] is not None and m["window"]["width"] > 0
    colour = client.get(instance_url(SAMPLES / "US" / "examples_rgb_color.dcm", "meta"), headers=AUTH)
    assert colour.get_json()["color"] is True and colour.get_json()["spacing"] is None
    # Without a window in the file the drag starts from the frame's range.
    multi = client.get(instance_url(SAMPLES / "MR" / "emri_small.dcm", "meta"), headers=AUTH).get_json()
    assert multi["frames"] == 10 and multi["window"]["width"] >= 1


def test_meta_of_an_instance_of_another_study_is_404(client: FlaskClient) -> None:
    ds = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    res = client.get(f"/api/studies/1.2.3/series/{ds.SeriesInstanceUID}/instances/"
                     f"{ds.SOPInstanceUID}/meta", headers=AUTH)
    assert res.status_code == 404


def test_tag_browser_lists_the_header_and_elides_binaries(client: FlaskClient) -> None:
    res = client.get(instance_url(SAMPLES / "MR" / "MR-SIEMENS-DICOM-WithOverlays.dcm", "tags"),
                     headers=AUTH)
    assert res.status_code == 200
    elements = res.get_json()["elements"]
    by_tag = {e["tag"]: e for e in elements}
    assert by_tag["(0002,0010)"]["value"] == "1.2.840.10008.1.2.1"  # file meta comes too
    assert by_tag["(0010,0010)"] == {"tag": "(0010,0010)", "keyword": "PatientName",
                                     "name": "Patient's Name", "vr": "PN", "value": "Sssssss^Jsssss"}
    assert "(7FE0,0010)" not in by_tag  # the header is read without the pixel data
    overlay = by_tag["(6000,3000)"]  # Overlay Data: a large binary
    assert overlay["elided"] is True and re.fullmatch(r"\(\d+ bytes\)", overlay["value"])
    icon = by_tag["(0088,0200)"]  # Icon Image Sequence: items nested, its pixels elided
    assert icon["vr"] == "SQ" and icon["items"]
    inner = {e["tag"]: e for e in icon["items"][0]}
    assert inner["(0028,0010)"]["value"] and inner["(7FE0,0010)"]["elided"] is True
    assert all(len(str(e["value"])) <= 1100 for e in elements)


def test_tags_decode_vietnamese_names(client: FlaskClient) -> None:
    elements = client.get(instance_url(SAMPLES / "MR" / "MR_small_implicit.dcm", "tags"),
                          headers=AUTH).get_json()["elements"]
    assert {e["keyword"]: e["value"] for e in elements}["PatientName"] == "Nguyễn^Văn An"


def phantom_url(app: Flask, tail: str) -> str:
    ds = app.config["phantom"]
    return (f"/api/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/{tail}")


def test_rect_roi_statistics_in_hu(client: FlaskClient, app: Flask) -> None:
    # Columns 20..39, rows 10..19 (pixel edges 20.0-40.0 x 10.0-20.0): 200 pixels,
    # 199 at 100 HU and one at 500 HU.
    res = client.get(phantom_url(app, "frames/1/roi"), headers=AUTH,
                     query_string={"shape": "rect", "x0": 20, "y0": 10, "x1": 40, "y1": 20})
    assert res.status_code == 200
    s = res.get_json()
    values = np.array([100.0] * 199 + [500.0])
    assert s["pixels"] == 200 and s["kind"] == "modality"
    assert s["mean"] == pytest.approx(values.mean()) and s["sd"] == pytest.approx(values.std())
    assert (s["min"], s["max"]) == (100.0, 500.0)
    assert s["area_px"] == pytest.approx(200.0)
    assert s["area_mm2"] == pytest.approx(200 * PHANTOM_SPACING[0] * PHANTOM_SPACING[1])
    assert s["spacing_source"] == "PixelSpacing"
    # Dragged the other way round: the same region.
    back = client.get(phantom_url(app, "frames/1/roi"), headers=AUTH,
                      query_string={"shape": "rect", "x0": 40, "y0": 20, "x1": 20, "y1": 10})
    assert back.get_json()["pixels"] == 200


def test_ellipse_roi_counts_pixel_centres_inside(client: FlaskClient, app: Flask) -> None:
    res = client.get(phantom_url(app, "frames/1/roi"), headers=AUTH,
                     query_string={"shape": "ellipse", "x0": 0, "y0": 0, "x1": 10, "y1": 10})
    s = res.get_json()
    centres = (np.arange(10) + 0.5 - 5) / 5
    expected = int(((centres[:, None] ** 2 + centres[None, :] ** 2) <= 1).sum())
    assert s["pixels"] == expected and s["mean"] == -1000.0 and s["sd"] == 0.0
    assert s["area_px"] == pytest.approx(math.pi * 25)


@pytest.mark.parametrize("query", [
    {"shape": "triangle", "x0": 0, "y0": 0, "x1": 5, "y1": 5},
    {"shape": "rect", "x0": "a", "y0": 0, "x1": 5, "y1": 5},
    {"shape": "rect", "x0": 0, "y0": 0, "x1": "nan", "y1": 5},
    {"shape": "rect", "x0": 100, "y0": 100, "x1": 200, "y1": 200},
    {"shape": "rect", "x0": 3.2, "y0": 3.2, "x1": 3.4, "y1": 3.4},
])
def test_bad_roi_requests_are_400(client: FlaskClient, app: Flask, query: dict[str, Any]) -> None:
    res = client.get(phantom_url(app, "frames/1/roi"), headers=AUTH, query_string=query)
    assert res.status_code == 400 and res.get_json()["error"]


def test_roi_on_an_uncalibrated_colour_image(client: FlaskClient) -> None:
    res = client.get(instance_url(SAMPLES / "US" / "examples_rgb_color.dcm", "frames/1/roi"),
                     headers=AUTH, query_string={"shape": "rect", "x0": 0, "y0": 0, "x1": 4, "y1": 4})
    s = res.get_json()
    assert res.status_code == 200 and s["kind"] == "luminance" and s["area_mm2"] is None
    assert client.get(instance_url(SAMPLES / "US" / "examples_rgb_color.dcm", "frames/2/roi"),
                      headers=AUTH, query_string={"shape": "rect", "x0": 0, "y0": 0, "x1": 4,
                                                  "y1": 4}).status_code == 400


def test_the_viewer_scripts_get_no_password_dialog_challenge(client: FlaskClient) -> None:
    # A Basic challenge on a fetch() makes browsers show their own password dialog.
    res = client.get("/api/worklist", headers={"X-Requested-With": "pacs-viewer"})
    assert res.status_code == 401 and "WWW-Authenticate" not in res.headers
    assert "WWW-Authenticate" in client.get("/api/worklist").headers  # scripts still get one
