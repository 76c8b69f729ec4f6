"""The third-party ``dicomweb-client`` against the real ``pacs serve`` (waitress, worker processes).

Nobody here wrote that client: if it can search, retrieve and store, standard tools can.
One server for the module (it starts with the sample studies loaded).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from requests.auth import HTTPBasicAuth

from tests.fixtures.server import PacsServer, make_server

pytestmark = [pytest.mark.slow,
              # pydicom's from_json warns for each BulkDataURI it is not asked to fetch.
              pytest.mark.filterwarnings("ignore:No bulk data URI handler:UserWarning")]

SAMPLES = Path(__file__).resolve().parents[2] / "sample_dicom"
CT = SAMPLES / "CT" / "CT_small.dcm"
JLS_MULTIFRAME = SAMPLES / "MR" / "emri_small_jpeg_ls_lossless.dcm"
J2K = SAMPLES / "MR" / "MR_small_jp2klossless.dcm"


def uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    srv = make_server(tmp_path_factory.mktemp("dicomweb-client") / "data", samples=True, http_workers=2)
    srv.start()
    try:
        yield srv
    finally:
        if srv.running:
            srv.stop()


@pytest.fixture(scope="module")
def client(server: PacsServer) -> DICOMwebClient:
    session = requests.Session()
    session.auth = HTTPBasicAuth("admin", server.admin_password)
    return DICOMwebClient(url=server.url("/dicomweb"), session=session)


def test_search_studies_series_instances(client: DICOMwebClient) -> None:
    st, se, sop = uids(CT)
    studies = client.search_for_studies(search_filters={"PatientName": "nguyen*"})
    assert [pydicom.Dataset.from_json(s).PatientName for s in studies] == ["Nguyễn^Văn An"]
    found = client.search_for_studies(search_filters={"StudyInstanceUID": st}, fields=["StudyDescription"])
    assert pydicom.Dataset.from_json(found[0]).StudyInstanceUID == st
    series = client.search_for_series(study_instance_uid=st)
    assert [pydicom.Dataset.from_json(s).SeriesInstanceUID for s in series] == [se]
    instances = client.search_for_instances(study_instance_uid=st, series_instance_uid=se)
    assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances] == [sop]
    page = client.search_for_studies(limit=3, offset=2)
    assert len(page) == 3
    everything = client.search_for_studies(get_remaining=True)  # pages with offset until empty
    assert len(everything) == len({uids(p)[0] for p in SAMPLES.rglob("*.dcm")})
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_retrieve_study_series_instance(client: DICOMwebClient) -> None:
    st, se, sop = uids(CT)
    [study] = client.retrieve_study(st)
    assert study.SOPInstanceUID == sop
    assert np.array_equal(study.pixel_array, pydicom.dcmread(CT).pixel_array)
    [series] = client.retrieve_series(st, se)
    assert series.SOPInstanceUID == sop
    instance = client.retrieve_instance(*uids(J2K), media_types=(("application/dicom", "*"),))
    assert instance.file_meta.TransferSyntaxUID == pydicom.dcmread(J2K).file_meta.TransferSyntaxUID
    decoded = client.retrieve_instance(*uids(J2K), media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(decoded.pixel_array, pydicom.dcmread(J2K).pixel_array)


def test_retrieve_metadata(server: PacsServer, client: DICOMwebClient) -> None:
    st, se, sop = uids(CT)
    [study_meta] = client.retrieve_study_metadata(st)
    series_meta = client.retrieve_series_metadata(st, se)
    instance_meta = client.retrieve_instance_metadata(st, se, sop)
    assert study_meta == series_meta[0] == instance_meta
    ds = pydicom.Dataset.from_json(instance_meta)
    assert ds.SOPInstanceUID == sop and ds.Rows == 128
    # Without PACS_PUBLIC_URL the URIs are absolute paths, resolved against the server (RFC 3986 5.2).
    uri = instance_meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith("/dicomweb/studies/")
    pixels = client.retrieve_bulkdata(urljoin(server.url("/"), uri))
    assert pixels == [pydicom.dcmread(CT).PixelData]


def test_retrieve_frames_and_rendered(client: DICOMwebClient) -> None:
    ds = pydicom.dcmread(JLS_MULTIFRAME)
    stored = list(generate_frames(ds.PixelData, number_of_frames=10))
    frames = client.retrieve_instance_frames(*uids(JLS_MULTIFRAME), frame_numbers=[1, 10])
    assert frames == [stored[0], stored[9]]
    uncompressed = client.retrieve_instance_frames(
        *uids(JLS_MULTIFRAME), frame_numbers=[5], media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),))
    assert uncompressed == [ds.pixel_array[4].astype("<u2").tobytes()]
    png = client.retrieve_instance_rendered(*uids(CT), media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (128, 128)


def test_store_instances(client: DICOMwebClient) -> None:
    ds = pydicom.dcmread(CT)
    study = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
    answer = client.store_instances([ds])
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "FailedSOPSequence" not in answer
    [back] = client.retrieve_study(study)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    [meta] = client.retrieve_study_metadata(study)
    assert pydicom.Dataset.from_json(meta).StudyInstanceUID == study
    to_study = client.store_instances([ds], study_instance_uid=study)  # the same again: idempotent
    assert len(to_study.ReferencedSOPSequence) == 1


def test_store_a_large_body_sent_chunked(client: DICOMwebClient) -> None:
    """Over its chunk size (1 MB) dicomweb-client sends the body with chunked transfer encoding."""
    datasets = []
    study = generate_uid()
    for _ in range(3):
        ds = pydicom.dcmread(SAMPLES / "CT" / "eCT_Supplemental.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
        datasets.append(ds)
    answer = client.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in answer
    assert len(client.search_for_instances(study_instance_uid=study)) == 3


def test_bearer_token_and_no_credentials(server: PacsServer) -> None:
    token = server.pacs("token", "create", "admin").stdout.strip()
    assert token
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    studies = DICOMwebClient(url=server.url("/dicomweb"), session=session).search_for_studies(limit=1)
    assert len(studies) == 1
    anonymous = requests.get(server.url("/dicomweb/studies"), timeout=10)
    assert anonymous.status_code == 401
