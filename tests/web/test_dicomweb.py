"""DICOMweb over HTTP, in process: QIDO-RS, WADO-RS, STOW-RS, WADO-URI and their error answers."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from pacs.config import Settings
from pacs.ingest import IngestService, Origin
from pacs.multipart import decode, parse_media_type
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.models import InstanceMetadata
from pacs.store.users import Users
from pacs.web.app import create_app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
CT = SAMPLES / "CT" / "CT_small.dcm"
J2K_LOSSLESS = SAMPLES / "MR" / "MR_small_jp2klossless.dcm"
JLS_MULTIFRAME = SAMPLES / "MR" / "emri_small_jpeg_ls_lossless.dcm"  # 10 frames, JPEG-LS
JPEG_US = SAMPLES / "US" / "examples_ybr_color.dcm"  # 30 frames, JPEG baseline
OVERLAYS = SAMPLES / "MR" / "MR-SIEMENS-DICOM-WithOverlays.dcm"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"binh:long password").decode()}
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def instance_path(path: Path) -> str:
    st, se, sop = uids(path)
    return f"/dicomweb/studies/{st}/series/{se}/instances/{sop}"


_TEMPLATE: list[bytes] = []


def _template_index() -> bytes:
    """A migrated SQLite index with the test user, made once (migrating takes ~1 s)."""
    if not _TEMPLATE:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            index = Index(f"sqlite:///{tmp}/index.sqlite", fsync=False)
            index.migrate()
            Users(index).add("binh", "long password", "radiologist")
            with index.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            index.dispose()
            _TEMPLATE.append(Path(tmp, "index.sqlite").read_bytes())
    return _TEMPLATE[0]


def make_app(root: Path, files: list[Path] | None = None, **settings: Any) -> Flask:
    s = Settings(data_dir=root / "data", fsync=False, render_cache_mb=32, **settings)
    s.data_dir.mkdir(parents=True)
    (s.data_dir / "index.sqlite").write_bytes(_template_index())
    index = Index(s.resolved_database_url, fsync=False)
    index.migrate()  # already at head: a check, as at every start
    blobs = FilesystemBlobStore(s.resolved_blob_dir, fsync=False)
    ingest = IngestService(blobs, index)
    for path in files if files is not None else sorted(SAMPLES.rglob("*.dcm")):
        ingest.store(path.read_bytes(), Origin("import"))
    ingest.close()
    return create_app(s, index, blobs, test_config={"TESTING": True})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The samples, read only (tests that store use ``fresh``)."""
    a = make_app(tmp_path_factory.mktemp("dicomweb"))
    yield a
    a.extensions["pacs"]["index"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Flask]:
    a = make_app(tmp_path, [CT], duplicate_policy="reject")
    yield a
    a.extensions["pacs"]["index"].dispose()


def get(client: FlaskClient, url: str, **headers: str) -> Any:
    return client.get(url, headers={**AUTH, **headers})


def parts(resp: Any) -> list[tuple[dict[str, str], bytes]]:
    ctype = parse_media_type(resp.headers["Content-Type"])
    assert ctype.type == "multipart/related"
    return decode(resp.get_data(), ctype.params["boundary"])


def tag(obj: dict[str, Any], key: str) -> Any:
    return obj[key]["Value"][0]


# -- QIDO-RS ------------------------------------------------------------------------------


def all_studies() -> set[str]:
    return {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in SAMPLES.rglob("*.dcm")}


def test_search_studies_answers_dicom_json(client: FlaskClient) -> None:
    resp = get(client, "/dicomweb/studies")
    assert resp.status_code == 200 and resp.mimetype == "application/dicom+json"
    studies = resp.get_json()
    assert {tag(s, "0020000D") for s in studies} == all_studies()
    assert resp.headers["X-Total-Count"] == str(len(all_studies()))
    ct = next(s for s in studies if tag(s, "0020000D") == uids(CT)[0])
    assert tag(ct, "00081190") == f"/dicomweb/studies/{uids(CT)[0]}"  # RetrieveURL, relative
    assert ct["00100010"]["vr"] == "PN" and set(tag(ct, "00100010")) == {"Alphabetic"}
    assert ct["00201208"] == {"vr": "IS", "Value": [1]}  # NumberOfStudyRelatedInstances, a number
    assert tag(ct, "00080061") == "CT" and tag(ct, "00080005") == "ISO_IR 192"


@pytest.mark.parametrize("name", ["nguyen*", "NGUYỄN^VĂN*", quote("Nguyễn^Văn An"), "nguy?n van an"])
def test_names_match_without_accents_or_case(client: FlaskClient, name: str) -> None:
    resp = get(client, f"/dicomweb/studies?PatientName={name}")
    names = [tag(s, "00100010")["Alphabetic"] for s in resp.get_json()]
    assert names == ["Nguyễn^Văn An"]
    assert "Nguyễn".encode() in resp.get_data()  # UTF-8 in the body, not \\u escapes


def test_uid_lists_ranges_and_no_match(client: FlaskClient) -> None:
    ct, mr = uids(CT)[0], uids(J2K_LOSSLESS)[0]
    for sep in (",", "%5C"):
        found = get(client, f"/dicomweb/studies?StudyInstanceUID={ct}{sep}{mr}").get_json()
        assert {tag(s, "0020000D") for s in found} == {ct, mr}
    dated = get(client, "/dicomweb/studies?StudyDate=20040119-20040119&includefield=StudyDate").get_json()
    assert dated and all(tag(s, "00080020") == "20040119" for s in dated)
    none = get(client, "/dicomweb/studies?PatientID=NO-SUCH-PATIENT")
    # CP-2473 (PS3.18 8.3.4.4.1): a search without matches is 200 with an empty array.
    assert none.status_code == 200 and none.get_json() == [] and none.headers["X-Total-Count"] == "0"


def test_includefield_forms_and_instance_attributes_from_the_cache(client: FlaskClient) -> None:
    st, se, sop = uids(CT)
    url = f"/dicomweb/studies/{st}/series/{se}/instances"
    plain = get(client, url).get_json()[0]
    assert "00280100" not in plain and tag(plain, "00080018") == sop
    for query in ("includefield=BitsAllocated&includefield=00280030", "includefield=00280100,PixelSpacing"):
        obj = get(client, f"{url}?{query}").get_json()[0]
        assert obj["00280100"] == {"vr": "US", "Value": [16]}
        assert obj["00280030"]["Value"] == [0.661468, 0.661468]
    everything = get(client, f"{url}?includefield=all").get_json()[0]
    assert everything["7FE00010"]["BulkDataURI"].endswith(f"/instances/{sop}/bulkdata/7FE00010")
    assert tag(everything, "00100010") == {"Alphabetic": "CompressedSamples^CT1"}


def test_series_and_instances_across_studies(client: FlaskClient) -> None:
    series = get(client, "/dicomweb/series?Modality=MR").get_json()
    assert series and all(tag(s, "00080060") == "MR" for s in series)
    assert all("0020000D" in s and "00100010" in s for s in series)  # study attributes too
    sop = uids(JPEG_US)[2]
    inst = get(client, f"/dicomweb/instances?SOPInstanceUID={sop}").get_json()
    assert [tag(i, "00080018") for i in inst] == [sop] and tag(inst[0], "00280008") == 30
    st = uids(CT)[0]
    assert len(get(client, f"/dicomweb/studies/{st}/instances").get_json()) == 1


def test_paging_with_total_and_warning(client: FlaskClient) -> None:
    total = len(all_studies())
    seen: list[str] = []
    for offset in range(0, total, 5):
        resp = get(client, f"/dicomweb/studies?limit=5&offset={offset}")
        assert resp.headers["X-Total-Count"] == str(total)
        page = [tag(s, "0020000D") for s in resp.get_json()]
        assert len(page) == min(5, total - offset)
        more = offset + 5 < total
        assert ("additional results" in resp.headers.get("Warning", "")) is more
        seen += page
    assert len(seen) == len(set(seen)) == total


@pytest.mark.parametrize("query,word", [
    ("StudyDate=2004", "StudyDate"), ("NoSuchAttribute=1", "NoSuchAttribute"), ("limit=0", "limit"),
    ("limit=x", "limit"), ("offset=-1", "offset"), ("fuzzymatching=maybe", "fuzzymatching"),
    ("includefield=Nope", "Nope"), ("PatientID=A&PatientID=B", "once"),
    ("StudyInstanceUID=1.2.*", "UID"), ("NumberOfStudyRelatedSeries=2", "return key"),
])
def test_bad_search_parameters_are_400_with_a_message(client: FlaskClient, query: str, word: str) -> None:
    resp = get(client, f"/dicomweb/studies?{query}")
    assert resp.status_code == 400, query
    assert word in resp.get_json()["error"]


def test_unsupported_matching_is_a_warning_and_fuzzy_is_accepted(client: FlaskClient) -> None:
    resp = get(client, "/dicomweb/studies?InstitutionName=X&fuzzymatching=true")
    assert resp.status_code == 200 and len(resp.get_json()) == len(all_studies())
    assert "InstitutionName" in resp.headers["Warning"]


def test_search_in_unusable_media_type_is_406(client: FlaskClient) -> None:
    assert get(client, "/dicomweb/studies", Accept="application/dicom+xml").status_code == 406
    assert get(client, "/dicomweb/studies", Accept="application/json").status_code == 200
    assert get(client, "/dicomweb/studies/not-a-uid/series").status_code == 400


def test_sign_in_required(app: Flask) -> None:
    c = app.test_client()
    for url in ("/dicomweb/studies", "/wado?requestType=WADO"):
        resp = c.get(url, headers={"Accept": "text/html"})
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")


def test_urls_come_from_public_url_not_host(tmp_path: Path) -> None:
    a = make_app(tmp_path, [CT], public_url="https://pacs.benhvien.vn/")
    c = a.test_client()
    st, se, sop = uids(CT)
    found = get(c, f"/dicomweb/studies?StudyInstanceUID={st}", Host="evil.example").get_json()
    assert tag(found[0], "00081190") == f"https://pacs.benhvien.vn/dicomweb/studies/{st}"
    meta = get(c, f"/dicomweb/studies/{st}/series/{se}/metadata", Host="evil.example").get_json()
    assert meta[0]["7FE00010"]["BulkDataURI"] == (
        f"https://pacs.benhvien.vn/dicomweb/studies/{st}/series/{se}/instances/{sop}/bulkdata/7FE00010")
    a.extensions["pacs"]["index"].dispose()


# -- WADO-RS ------------------------------------------------------------------------------


def test_retrieve_study_streams_the_stored_bytes(client: FlaskClient) -> None:
    st = uids(SAMPLES / "patient_77654033" / "CT2_17106.dcm")[0]
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes()
             for p in SAMPLES.rglob("*.dcm") if uids(p)[0] == st}
    resp = get(client, f"/dicomweb/studies/{st}", Accept='multipart/related; type="application/dicom"')
    assert resp.status_code == 200 and resp.is_streamed
    got = parts(resp)
    assert len(got) == len(files) > 1
    for headers, body in got:
        ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        assert body == files[ds.SOPInstanceUID]  # byte for byte as stored
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"


def test_explicit_little_endian_on_request_decompresses(client: FlaskClient) -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    resp = get(client, instance_path(J2K_LOSSLESS), Accept=accept)
    [(headers, body)] = parts(resp)
    assert headers["content-type"].endswith(f"transfer-syntax={EXPLICIT_LE}")
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(J2K_LOSSLESS).pixel_array)
    # As stored when the client accepts anything:
    [(_, stored)] = parts(get(client, instance_path(J2K_LOSSLESS), Accept="multipart/related; type=application/dicom; transfer-syntax=*"))
    assert stored == J2K_LOSSLESS.read_bytes()


def test_retrieve_negotiation_errors(client: FlaskClient) -> None:
    st, se, _ = uids(CT)
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    resp = get(client, instance_path(CT), Accept=jpeg)
    assert resp.status_code == 406 and "1.2.840.10008.1.2.1" in resp.get_json()["error"]
    assert get(client, f"/dicomweb/studies/{st}", Accept="application/dicom").status_code == 406
    single = get(client, instance_path(CT), Accept="application/dicom")
    assert single.status_code == 200 and single.get_data() == CT.read_bytes()
    assert get(client, "/dicomweb/studies/1.2.3.4.5").status_code == 404
    assert get(client, f"/dicomweb/studies/{st}/series/1.2.3").status_code == 404
    assert get(client, "/dicomweb/studies/1.2.x").status_code == 400
    assert get(client, f"/dicomweb/studies/{st}", Accept='multipart/related; type="application/dicom').status_code == 400


def test_series_metadata_with_resolving_bulk_data(client: FlaskClient) -> None:
    st, se, sop = uids(CT)
    resp = get(client, f"/dicomweb/studies/{st}/series/{se}/metadata")
    assert resp.status_code == 200 and resp.mimetype == "application/dicom+json"
    [obj] = resp.get_json()
    back = pydicom.Dataset.from_json(obj, bulk_data_uri_handler=lambda *a: b"")
    original = pydicom.dcmread(CT)
    assert back.SOPInstanceUID == sop and back.Rows == original.Rows and back.PatientName == original.PatientName
    [(headers, pixels)] = parts(get(client, obj["7FE00010"]["BulkDataURI"]))
    assert pixels == original.PixelData


def test_every_bulk_data_uri_resolves(client: FlaskClient) -> None:
    [obj] = get(client, instance_path(OVERLAYS) + "/metadata").get_json()
    original = pydicom.dcmread(OVERLAYS)
    uris = {k: v["BulkDataURI"] for k, v in obj.items() if "BulkDataURI" in v}
    assert "60003000" in uris  # overlay data is large binary: bulk, not inline
    for key, uri in uris.items():
        [(_, value)] = parts(get(client, uri))
        assert value == original[int(key, 16)].value, key
    assert get(client, instance_path(OVERLAYS) + "/bulkdata/00100010").status_code == 404
    assert get(client, instance_path(OVERLAYS) + "/bulkdata/60003000", Accept="image/png").status_code == 406


def test_metadata_reads_no_blob(app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Series metadata comes from the cache built at ingest, not from the blob store."""
    st, se, _ = uids(SAMPLES / "patient_77654033" / "CT2_17106.dcm")
    before = get(client, f"/dicomweb/studies/{st}/metadata").get_data()
    blobs = app.extensions["pacs"]["blobs"]

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("metadata must not read blobs")

    for name in ("get", "get_range", "open"):
        monkeypatch.setattr(blobs, name, refuse)
    after = get(client, f"/dicomweb/studies/{st}/metadata")
    assert after.status_code == 200 and after.get_data() == before
    assert len(after.get_json()) == sum(uids(p)[0] == st for p in SAMPLES.rglob("*.dcm")) > 1


def test_missing_cache_rows_are_rebuilt_and_replaced_instances_are_not_stale(fresh: Flask) -> None:
    c = fresh.test_client()
    index = fresh.extensions["pacs"]["index"]
    with index.engine.begin() as conn:
        conn.execute(InstanceMetadata.__table__.delete())
    [obj] = get(c, instance_path(CT) + "/metadata").get_json()
    assert tag(obj, "00080018") == uids(CT)[2]
    with index.engine.connect() as conn:
        assert conn.execute(InstanceMetadata.__table__.select()).first() is not None  # rebuilt
    ds = pydicom.dcmread(CT)
    ds.StudyDescription = "REPLACED COPY"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    ingest = IngestService(fresh.extensions["pacs"]["blobs"], index, duplicate_policy="overwrite")
    ingest.store(out.getvalue(), Origin("import"))
    ingest.close()
    [obj] = get(c, instance_path(CT) + "/metadata").get_json()
    assert tag(obj, "00081030") == "REPLACED COPY"


def test_frames_native_compressed_and_decoded(client: FlaskClient) -> None:
    native = get(client, instance_path(CT) + "/frames/1",
                 Accept="multipart/related; type=application/octet-stream")
    [(headers, body)] = parts(native)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == pydicom.dcmread(CT).PixelData
    ds = pydicom.dcmread(JLS_MULTIFRAME)
    stored = list(generate_frames(ds.PixelData, number_of_frames=10))
    for accept in ('multipart/related; type="*/*"', "*/*", "multipart/related; type=image/jls",
                   None):
        resp = get(client, instance_path(JLS_MULTIFRAME) + "/frames/2,4", **({"Accept": accept} if accept else {}))
        got = parts(resp)  # no Accept at all is taken as */*: as stored
        assert [b for _, b in got] == [stored[1], stored[3]], accept
        assert got[0][0]["content-type"] == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
    raw = parts(get(client, instance_path(JLS_MULTIFRAME) + "/frames/3",
                    Accept="multipart/related; type=application/octet-stream; transfer-syntax=*"))
    assert raw[0][1] == stored[2] and raw[0][0]["content-type"].endswith("1.2.840.10008.1.2.4.80")
    decoded = parts(get(client, instance_path(JLS_MULTIFRAME) + "/frames/3",
                        Accept=f"multipart/related; type=application/octet-stream; transfer-syntax={EXPLICIT_LE}"))
    assert decoded[0][1] == ds.pixel_array[2].astype("<u2").tobytes()


def test_frames_errors(client: FlaskClient) -> None:
    base = instance_path(JPEG_US) + "/frames"
    assert get(client, f"{base}/1", Accept="multipart/related; type=image/jp2").status_code == 406
    assert get(client, f"{base}/0").status_code == 400
    assert get(client, f"{base}/1,x").status_code == 400
    resp = get(client, f"{base}/31")
    assert resp.status_code == 404 and "30 frame" in resp.get_json()["error"]
    jpeg = get(client, f"{base}/30", Accept="image/jpeg")  # one frame, single part
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg"
    ds = pydicom.dcmread(JPEG_US, stop_before_pixels=True)
    assert Image.open(io.BytesIO(jpeg.get_data())).size == (ds.Columns, ds.Rows)


# -- STOW-RS ------------------------------------------------------------------------------


def new_instance(path: Path = CT, study: str | None = None, **changes: Any) -> bytes:
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for k, v in changes.items():
        setattr(ds, k, v)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def body_of(instances: list[bytes], boundary: str = "stow-boundary-1") -> bytes:
    out = b""
    for raw in instances:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + raw + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=stow-boundary-1'


def stow(c: FlaskClient, instances: list[bytes], url: str = "/dicomweb/studies", **headers: str) -> Any:
    return c.post(url, data=body_of(instances), headers={**AUTH, "Content-Type": STOW_TYPE, **headers})


def test_stow_stores_and_answers_with_references(fresh: Flask) -> None:
    c = fresh.test_client()
    study = generate_uid()
    instances = [new_instance(study=study) for _ in range(3)]
    resp = stow(c, instances)
    assert resp.status_code == 200 and resp.mimetype == "application/dicom+json"
    answer = pydicom.Dataset.from_json(resp.get_json())
    assert answer.RetrieveURL == f"/dicomweb/studies/{study}"
    refs = answer.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [pydicom.dcmread(io.BytesIO(i)).SOPInstanceUID for i in instances]
    assert "FailedSOPSequence" not in answer
    [(_, stored)] = parts(get(c, refs[0].RetrieveURL))
    assert stored == instances[0]
    found = get(c, f"/dicomweb/studies?StudyInstanceUID={study}").get_json()
    assert found[0]["00201208"]["Value"] == [3]


def test_stow_partial_and_total_failures(fresh: Flask) -> None:
    c = fresh.test_client()
    good = new_instance()
    truncated = new_instance()[:-100]
    mixed = stow(c, [good, b"not dicom at all", truncated])
    assert mixed.status_code == 202
    answer = pydicom.Dataset.from_json(mixed.get_json())
    assert len(answer.ReferencedSOPSequence) == 1
    reasons = [f.FailureReason for f in answer.FailedSOPSequence]
    assert reasons == [0xC000, 0xC000]
    assert answer.FailedSOPSequence[1].ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(truncated), force=True).SOPInstanceUID
    assert stow(c, [b"garbage"]).status_code == 409


def test_stow_to_a_study_refuses_other_studies(fresh: Flask) -> None:
    c = fresh.test_client()
    study = generate_uid()
    resp = stow(c, [new_instance(study=study), new_instance()], url=f"/dicomweb/studies/{study}")
    assert resp.status_code == 202
    answer = pydicom.Dataset.from_json(resp.get_json())
    assert [f.FailureReason for f in answer.FailedSOPSequence] == [0xA900]
    assert stow(c, [new_instance()], url=f"/dicomweb/studies/{study}").status_code == 409


def test_stow_duplicates_follow_the_policy(fresh: Flask, tmp_path: Path) -> None:
    c = fresh.test_client()  # duplicate_policy=reject
    same = stow(c, [CT.read_bytes()])
    assert same.status_code == 200  # the same bytes again: idempotent success
    changed = new_instance(StudyDescription="other bytes")
    ds = pydicom.dcmread(io.BytesIO(changed))
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uids(CT)[2], *uids(CT)[:2]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    resp = stow(c, [out.getvalue()])
    assert resp.status_code == 409
    assert pydicom.Dataset.from_json(resp.get_json()).FailedSOPSequence[0].FailureReason == 0x0111
    keep_first = make_app(tmp_path / "kf", [CT])
    resp = stow(keep_first.test_client(), [out.getvalue()])
    assert resp.status_code == 202
    assert pydicom.Dataset.from_json(resp.get_json()).ReferencedSOPSequence[0].WarningReason == 0xB006
    keep_first.extensions["pacs"]["index"].dispose()


@pytest.mark.parametrize("ctype,code", [
    ("application/dicom", 415), ('multipart/related; type="application/dicom+json"; boundary=x', 415),
    ('multipart/related; type="application/dicom"', 400), ("", 415),
])
def test_stow_content_type_errors(fresh: Flask, ctype: str, code: int) -> None:
    resp = fresh.test_client().post("/dicomweb/studies", data=body_of([new_instance()]),
                                    headers={**AUTH, "Content-Type": ctype})
    assert resp.status_code == code and resp.get_json()["error"]


def test_stow_malformed_body_and_response_type(fresh: Flask) -> None:
    c = fresh.test_client()
    cut = body_of([new_instance()])[:-30]
    resp = c.post("/dicomweb/studies", data=cut, headers={**AUTH, "Content-Type": STOW_TYPE})
    assert resp.status_code == 400 and "truncated" in resp.get_json()["error"]
    assert stow(c, [new_instance()], Accept="application/dicom+xml").status_code == 406


def test_stow_oversize_is_413_and_stores_nothing(tmp_path: Path) -> None:
    a = make_app(tmp_path, [CT], max_instance_mb=1, stow_max_mb=3)
    c = a.test_client()
    index = a.extensions["pacs"]["index"]
    before = index.counts().instances
    big = new_instance(SAMPLES / "CT" / "eCT_Supplemental.dcm")
    assert len(big) > 1024 * 1024
    resp = stow(c, [new_instance(), big])
    assert resp.status_code == 413 and "max_instance_mb" in resp.get_json()["error"]
    resp = stow(c, [new_instance()] * 100)  # 100 x 39 KB > 3 MiB
    assert resp.status_code == 413 and "stow_max_mb" in resp.get_json()["error"]
    assert index.counts().instances == before
    index.dispose()


# -- WADO-URI -----------------------------------------------------------------------------


def wado(path: Path, extra: str = "") -> str:
    st, se, sop = uids(path)
    return f"/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID={sop}{extra}"


def test_wado_uri_images_and_dicom(client: FlaskClient) -> None:
    jpeg = get(client, wado(CT))
    assert jpeg.status_code == 200 and jpeg.mimetype == "image/jpeg"
    png = get(client, wado(CT, "&contentType=image/png&windowCenter=40&windowWidth=80"))
    wide = get(client, wado(CT, "&contentType=image/png&windowCenter=400&windowWidth=2000"))
    narrow_img, wide_img = (np.asarray(Image.open(io.BytesIO(r.get_data()))) for r in (png, wide))
    assert narrow_img.std() > wide_img.std()
    small = Image.open(io.BytesIO(get(client, wado(CT, "&rows=64")).get_data()))
    assert small.size == (64, 64)
    frame = get(client, wado(JPEG_US, "&frameNumber=30&columns=160"))
    assert Image.open(io.BytesIO(frame.get_data())).size == (160, 120)
    dicom = get(client, wado(CT, "&contentType=application/dicom"))
    assert dicom.mimetype == "application/dicom" and dicom.get_data() == CT.read_bytes()
    decoded = get(client, wado(J2K_LOSSLESS, f"&contentType=application/dicom&transferSyntax={EXPLICIT_LE}"))
    assert pydicom.dcmread(io.BytesIO(decoded.get_data())).file_meta.TransferSyntaxUID == EXPLICIT_LE


@pytest.mark.parametrize("extra,code", [
    ("&contentType=image/gif", 406), ("&frameNumber=2", 400), ("&windowCenter=40", 400),
    ("&windowCenter=a&windowWidth=3", 400), ("&rows=0", 400), ("&anonymize=yes", 400),
    ("&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.4.50", 406),
])
def test_wado_uri_errors(client: FlaskClient, extra: str, code: int) -> None:
    resp = get(client, wado(CT, extra))
    assert resp.status_code == code, extra
    assert resp.get_json()["error"]


def test_wado_uri_required_parameters(client: FlaskClient) -> None:
    st, se, sop = uids(CT)
    assert get(client, f"/wado?requestType=WADO&studyUID={st}&objectUID={sop}").status_code == 400
    assert get(client, f"/wado?requestType=WADOX&studyUID={st}&seriesUID={se}&objectUID={sop}").status_code == 400
    assert get(client, f"/wado?requestType=WADO&studyUID={st}&seriesUID={se}&objectUID=1.2.3").status_code == 404


def test_json_bodies_are_valid_json(client: FlaskClient) -> None:
    """No NaN or other non-JSON tokens anywhere in the metadata of every sample."""
    for study in all_studies():
        text = get(client, f"/dicomweb/studies/{study}/metadata").get_data(as_text=True)
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {study}"))


def test_includefield_asks_the_cache_once_per_series(client: FlaskClient,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance search with includefield: one metadata-cache query per series of the page
    (the 30-frame US is one instance; the MR series have several), the same answers."""
    from pacs.store.metadata import MetadataCache

    calls: list[tuple[str, str | None, str | None]] = []
    original = MetadataCache.listing

    def listing(self: MetadataCache, study: str, series: str | None = None,
                sop: str | None = None) -> Any:
        calls.append((study, series, sop))
        return original(self, study, series, sop)

    everything = get(client, "/dicomweb/instances?includefield=all").get_json()
    monkeypatch.setattr(MetadataCache, "listing", listing)
    again = get(client, "/dicomweb/instances?includefield=all").get_json()
    assert again == everything
    per_series = Counter((tag(i, "0020000D"), tag(i, "0020000E")) for i in everything)
    assert len(calls) == len(per_series) < len(everything)
    assert all(c[2] is None for c in calls if per_series[(c[0], c[1])] > 1)
    for obj in everything:  # the same as each instance asked for alone (one query for it)
        st, se, sop = tag(obj, "0020000D"), tag(obj, "0020000E"), tag(obj, "00080018")
        alone = get(client, f"/dicomweb/studies/{st}/series/{se}/instances"
                            f"?SOPInstanceUID={sop}&includefield=all").get_json()
        assert alone == [obj]
