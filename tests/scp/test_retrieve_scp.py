"""C-MOVE / C-GET end to end, and the remote AE registry: dcmtk against the real ``pacs serve``.

Every test here that uses ``pacs_server`` runs twice: filesystem + SQLite and S3 + PostgreSQL.
A study of two series is stored first (an explicit VR little endian CT series and an MR
series in implicit VR, RLE and JPEG 2000), then pulled back with dcmtk ``movescu`` into a
dcmtk ``storescp`` the test starts, and with ``getscu``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.store.aes import parse_remote_aes
from pacs.errors import ConfigError
from tests.fixtures.dcmtk import DcmtkTools, run_tool
from tests.fixtures.server import PacsServer
from tests.scp.test_store_scp import sample_files, scu_store

DEST = "DESTSCP"


@dataclass
class StoredStudy:
    study_uid: str
    ct_series: str
    mr_series: str
    #: SOP Instance UID -> the file as sent (and as stored: the archive keeps the bytes).
    files: dict[str, Path]
    #: SOP Instance UID -> transfer syntax UID.
    syntaxes: dict[str, str]

    def in_series(self, series_uid: str) -> set[str]:
        return {uid for uid, f in self.files.items()
                if pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID == series_uid}


def _rewrite(src: str | Path, out: Path, study: str, series: str, number: int, patient: str) -> Path:
    """A real sample moved into our study: new UIDs, pixel data untouched (still encoded)."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.InstanceNumber = patient, number
    path = out / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(pacs_server: PacsServer, tmp_path: Path) -> StoredStudy:
    """Two series of one study stored in the server through C-STORE."""
    out = tmp_path / "sent"
    out.mkdir()
    study_uid, ct, mr = generate_uid(), generate_uid(), generate_uid()
    patient = "RET-" + study_uid[-8:]
    files = [_rewrite(str(get_testdata_file("CT_small.dcm")), out, study_uid, ct, n, patient) for n in (1, 2, 3)]
    files += [
        _rewrite(str(get_testdata_file(name)), out, study_uid, mr, n, patient)
        for n, name in enumerate(["MR_small_implicit.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm"], start=1)
    ]
    statuses = scu_store(pacs_server, list(files))
    assert [s.Status for s in statuses] == [0] * len(files)
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
    syntaxes = {uid: str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for uid, f in by_uid.items()}
    return StoredStudy(study_uid, ct, mr, by_uid, syntaxes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StoreSCP:
    """A dcmtk ``storescp`` writing what it receives, bit for bit, into ``folder``."""

    proc: subprocess.Popen[str]
    port: int
    folder: Path
    ae_title: str

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> received file."""
        return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
                for f in self.folder.iterdir() if f.is_file()}

    def clear(self) -> None:
        for f in self.folder.iterdir():
            f.unlink()


def start_storescp(dcmtk: DcmtkTools, folder: Path, *flags: str, ae_title: str = DEST) -> StoreSCP:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk.storescp, "-aet", ae_title, "+B", "-od", str(folder), *flags, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # dcmtk leaves Nagle on unless told: its small C-STORE responses then wait for
        # delayed ACKs (~45 ms per instance), whoever the sender is.
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # ready when it answers C-ECHO
        if run_tool([dcmtk.echoscu, "-aec", ae_title, "127.0.0.1", str(port)], timeout=10).returncode == 0:
            return StoreSCP(proc, port, folder, ae_title)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"storescp did not start: {proc.communicate()[0]}")


@pytest.fixture
def storescp(dcmtk: DcmtkTools, tmp_path: Path) -> Iterator[StoreSCP]:
    """Accepts every transfer syntax dcmtk knows (``+xa``): the stored one is taken as is."""
    scp = start_storescp(dcmtk, tmp_path / "received", "+xa")
    try:
        yield scp
    finally:
        scp.proc.terminate()
        scp.proc.wait(10)


def dataset_bytes(path: Path) -> bytes:
    """The data set after the file meta (inflated when deflated): what was on the wire."""
    meta, offset = split_dataset(path)
    body = path.read_bytes()[offset:]
    if str(meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1.99":
        body = zlib.decompress(body, -zlib.MAX_WBITS)
    return body


def movescu(dcmtk: DcmtkTools, server: PacsServer, dest: str, *keys: str,
            model: str = "-S") -> subprocess.CompletedProcess[str]:
    args = [dcmtk.movescu, "-v", model, "-aet", "MOVER", "-aec", server.ae_title, "-aem", dest]
    for k in keys:
        args += ["-k", k]
    return run_tool([*args, "127.0.0.1", str(server.dicom_port)], timeout=120)


def move_status(server: PacsServer, dest: str, identifier: Dataset, *,
                model: str = StudyRootQueryRetrieveInformationModelMove, calling: str = "PYMOVER") -> Dataset:
    """Final C-MOVE response status dataset, through pynetdicom's SCU."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_move(identifier, dest, model))
    finally:
        assoc.release()
    return responses[-1][0]


def ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def register(server: PacsServer, name: str, scp: StoreSCP, *flags: str) -> None:
    out = server.pacs("ae", "add", name, scp.ae_title, "127.0.0.1", str(scp.port), *flags)
    assert out.returncode == 0, out.stdout + out.stderr


# -- C-MOVE ------------------------------------------------------------------------


def test_move_study_series_image_byte_identical_registry_live(
    pacs_server: PacsServer, study: StoredStudy, storescp: StoreSCP, dcmtk: DcmtkTools
) -> None:
    # Not registered yet: 0xA801, nothing sent.
    status = move_status(pacs_server, DEST, ident("STUDY", StudyInstanceUID=study.study_uid))
    assert status.Status == 0xA801
    assert storescp.received() == {}

    # Registered while the server runs: the next request uses it (no restart).
    register(pacs_server, "dest", storescp)
    out = movescu(dcmtk, pacs_server, DEST, "QueryRetrieveLevel=STUDY",
                  f"StudyInstanceUID={study.study_uid}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = storescp.received()
    assert set(got) == set(study.files)
    for uid, sent in study.files.items():
        # As stored: same transfer syntax, same data set bytes.
        assert str(split_dataset(got[uid])[0].TransferSyntaxUID) == study.syntaxes[uid]
        assert dataset_bytes(got[uid]) == dataset_bytes(sent), uid

    storescp.clear()
    out = movescu(dcmtk, pacs_server, DEST, "QueryRetrieveLevel=SERIES",
                  f"StudyInstanceUID={study.study_uid}", f"SeriesInstanceUID={study.mr_series}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(storescp.received()) == study.in_series(study.mr_series)

    storescp.clear()
    two = sorted(study.in_series(study.ct_series))[:2]
    out = movescu(dcmtk, pacs_server, DEST, "QueryRetrieveLevel=IMAGE",
                  f"StudyInstanceUID={study.study_uid}", f"SeriesInstanceUID={study.ct_series}",
                  "SOPInstanceUID=" + "\\".join(two))
    assert out.returncode == 0, out.stdout + out.stderr
    got = storescp.received()
    assert set(got) == set(two)
    assert all(dataset_bytes(got[u]) == dataset_bytes(study.files[u]) for u in two)

    # Removed while running: unknown again.
    out = pacs_server.pacs("ae", "remove", "dest")
    assert out.returncode == 0, out.stderr
    status = move_status(pacs_server, DEST, ident("STUDY", StudyInstanceUID=study.study_uid))
    assert status.Status == 0xA801
    assert pacs_server.running


def test_move_patient_root_and_statuses(
    pacs_server: PacsServer, study: StoredStudy, storescp: StoreSCP, dcmtk: DcmtkTools
) -> None:
    register(pacs_server, "dest", storescp)
    patient_id = pydicom.dcmread(next(iter(study.files.values())), stop_before_pixels=True).PatientID
    out = movescu(dcmtk, pacs_server, DEST, "QueryRetrieveLevel=PATIENT", f"PatientID={patient_id}",
                  model="-P")
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(storescp.received()) == set(study.files)

    # Nothing matches: success with zero sub-operations.
    status = move_status(pacs_server, DEST, ident("STUDY", StudyInstanceUID="1.2.3.4.5.6.7"))
    assert (status.Status, status.NumberOfCompletedSuboperations) == (0x0000, 0)
    # No unique key at the level, or a level the model does not have: 0xA900.
    assert move_status(pacs_server, DEST, ident("SERIES", StudyInstanceUID=study.study_uid)).Status == 0xA900
    assert move_status(pacs_server, DEST, ident("PATIENT", PatientID=patient_id)).Status == 0xA900
    assert move_status(pacs_server, DEST, ident("PATIENT", PatientID=patient_id),
                       model=PatientRootQueryRetrieveInformationModelMove).Status == 0x0000

    # A blob gone from the store: that sub-operation fails, the others are sent (0xB000).
    storescp.clear()
    victim = sorted(study.in_series(study.ct_series))[0]
    services = pacs_server.services()
    try:
        rec = services.index.get_instance(victim)
        assert rec is not None
        services.blobs.delete(rec.blob_key)
    finally:
        services.close()
    status = move_status(pacs_server, DEST, ident("SERIES", SeriesInstanceUID=study.ct_series))
    assert status.Status == 0xB000
    assert (status.NumberOfFailedSuboperations, status.NumberOfCompletedSuboperations) == (1, 2)
    assert set(storescp.received()) == study.in_series(study.ct_series) - {victim}
    # Every sub-operation failed: 0xA702 (PS3.4 C.4.2.1.5).
    status = move_status(pacs_server, DEST, ident("IMAGE", SOPInstanceUID=victim))
    assert status.Status == 0xA702

    # A calling AE registered without the right to retrieve is refused.
    out = pacs_server.pacs("ae", "add", "badcaller", "PYMOVER", "127.0.0.1", "104", "--no-retrieve")
    assert out.returncode == 0, out.stderr
    status = move_status(pacs_server, DEST, ident("STUDY", StudyInstanceUID=study.study_uid))
    assert status.Status == 0xA801
    status = move_status(pacs_server, DEST, ident("STUDY", StudyInstanceUID=study.study_uid),
                         calling="OTHER")
    assert status.Status == 0xB000  # allowed; the deleted blob still fails its sub-operation
    assert (status.NumberOfFailedSuboperations, status.NumberOfCompletedSuboperations) == (1, 5)


def test_move_converts_for_a_destination_without_the_stored_syntax(
    pacs_server: PacsServer, study: StoredStudy, dcmtk: DcmtkTools, tmp_path: Path
) -> None:
    # storescp without +xa accepts only uncompressed syntaxes; +xe prefers explicit little endian.
    scp = start_storescp(dcmtk, tmp_path / "native", "+xe", ae_title="NATIVE")
    try:
        register(pacs_server, "native", scp)
        compressed = [u for u, ts in study.syntaxes.items() if ts in ("1.2.840.10008.1.2.5",
                                                                      "1.2.840.10008.1.2.4.90")]
        assert len(compressed) == 2
        out = movescu(dcmtk, pacs_server, "NATIVE", "QueryRetrieveLevel=IMAGE",
                      "SOPInstanceUID=" + "\\".join(compressed))
        assert out.returncode == 0, out.stdout + out.stderr
        got = scp.received()
        assert set(got) == set(compressed)
        for uid in compressed:
            received = pydicom.dcmread(got[uid])
            original = pydicom.dcmread(study.files[uid])
            assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert received.SOPInstanceUID == uid
            assert np.array_equal(received.pixel_array, original.pixel_array)  # lossless
    finally:
        scp.proc.terminate()
        scp.proc.wait(10)


def _stored_samples(server: PacsServer) -> dict[str, Path]:
    """Every file of sample_dicom/ stored through C-STORE as it is on disk (every syntax)."""
    files = sample_files()
    statuses = scu_store(server, list(files))
    assert [s.Status for s in statuses] == [0] * len(files)
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}


def _as_stored(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes as in the file, inflated when deflated)."""
    return str(split_dataset(path)[0].TransferSyntaxUID), dataset_bytes(path)


def _inflated(syntax: str, data: bytes) -> bytes:
    return zlib.decompress(data, -zlib.MAX_WBITS) if syntax == "1.2.840.10008.1.2.1.99" else data


def test_move_sends_every_stored_syntax_as_stored(
    pacs_server: PacsServer, storescp: StoreSCP, dcmtk: DcmtkTools
) -> None:
    """Sent without a parse or re-encode (pacs.scp.sender): the same bytes, every syntax."""
    files = _stored_samples(pacs_server)
    register(pacs_server, "dest", storescp)
    out = movescu(dcmtk, pacs_server, DEST, "QueryRetrieveLevel=IMAGE",
                  "SOPInstanceUID=" + "\\".join(sorted(files)))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert text.count("(Pending)") == len(files)  # one Pending response per sub-operation
    assert "Received Final Move Response (Success)" in text
    got = storescp.received()
    assert set(got) == set(files)
    for uid, sent in files.items():
        assert _as_stored(got[uid]) == _as_stored(sent), sent.name


def test_move_mixes_as_stored_and_converted_on_one_sub_association(
    pacs_server: PacsServer, study: StoredStudy, dcmtk: DcmtkTools, tmp_path: Path
) -> None:
    # Implicit VR little endian only: the implicit MR goes as stored, every other instance
    # (explicit CT, RLE, JPEG 2000) is converted, one after the other on one association.
    scp = start_storescp(dcmtk, tmp_path / "implicit", "+xi", ae_title="IMPLICIT")
    try:
        register(pacs_server, "implicit", scp)
        out = movescu(dcmtk, pacs_server, "IMPLICIT", "QueryRetrieveLevel=STUDY",
                      f"StudyInstanceUID={study.study_uid}")
        assert out.returncode == 0, out.stdout + out.stderr
        got = scp.received()
        assert set(got) == set(study.files)
        for uid, sent in study.files.items():
            received = pydicom.dcmread(got[uid])
            assert received.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
            if study.syntaxes[uid] == "1.2.840.10008.1.2":
                assert dataset_bytes(got[uid]) == dataset_bytes(sent), uid
            else:
                assert np.array_equal(received.pixel_array, pydicom.dcmread(sent).pixel_array), uid
    finally:
        scp.proc.terminate()
        scp.proc.wait(10)


# -- C-GET -------------------------------------------------------------------------


def test_get_sends_every_stored_syntax_as_stored(pacs_server: PacsServer) -> None:
    """A pynetdicom C-GET SCU that proposes each stored syntax: the same bytes come back."""
    files = _stored_samples(pacs_server)
    pairs = sorted({(str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID), _as_stored(f)[0])
                    for f in files.values()})
    received: dict[str, tuple[str, bytes]] = {}

    def on_store(event: evt.Event) -> int:
        syntax, req = str(event.context.transfer_syntax), cast(Any, event.request)
        received[str(req.AffectedSOPInstanceUID)] = (syntax, _inflated(syntax, req.DataSet.getvalue()))
        return 0x0000

    ae = AE(ae_title="PYGETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class, syntax in pairs:
        ae.add_requested_context(sop_class, syntax)
    roles: list[Any] = [build_role(c, scp_role=True) for c in sorted({c for c, _ in pairs})]
    assoc = ae.associate("127.0.0.1", pacs_server.dicom_port, ae_title=pacs_server.ae_title,
                         ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        responses = [status for status, _ in assoc.send_c_get(
            ident("IMAGE", SOPInstanceUID="\\".join(sorted(files))),
            StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    n = len(files)
    assert [r.Status for r in responses] == [0xFF00] * n + [0x0000]
    assert [r.NumberOfRemainingSuboperations for r in responses[:-1]] == list(range(n - 1, -1, -1))
    assert [r.NumberOfCompletedSuboperations for r in responses[:-1]] == list(range(1, n + 1))
    assert responses[-1].NumberOfCompletedSuboperations == n
    assert set(received) == set(files)
    for uid, path in files.items():
        assert received[uid] == _as_stored(path), path.name




def getscu(dcmtk: DcmtkTools, server: PacsServer, folder: Path, *keys: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    args = [dcmtk.getscu, "-v", "-S", "-aet", "GETTER", "-aec", server.ae_title, "-od", str(folder), "+B"]
    for k in keys:
        args += ["-k", k]
    return run_tool([*args, "127.0.0.1", str(server.dicom_port)], timeout=120)


def received_in(folder: Path) -> dict[str, Path]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
            for f in folder.iterdir() if f.is_file()}


def test_get_study_and_image(
    pacs_server: PacsServer, study: StoredStudy, dcmtk: DcmtkTools, tmp_path: Path
) -> None:
    out = getscu(dcmtk, pacs_server, tmp_path / "study", "QueryRetrieveLevel=STUDY",
                 f"StudyInstanceUID={study.study_uid}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = received_in(tmp_path / "study")
    assert set(got) == set(study.files)
    for uid, sent in study.files.items():
        ts = study.syntaxes[uid]
        if ts == "1.2.840.10008.1.2.1":  # what getscu proposes first: sent as stored
            assert dataset_bytes(got[uid]) == dataset_bytes(sent), uid
        else:  # getscu proposes uncompressed syntaxes only: converted, same pixels
            received, original = pydicom.dcmread(got[uid]), pydicom.dcmread(sent)
            assert np.array_equal(received.pixel_array, original.pixel_array), uid
            assert received.StudyInstanceUID == original.StudyInstanceUID

    one = sorted(study.in_series(study.ct_series))[1]
    out = getscu(dcmtk, pacs_server, tmp_path / "image", "QueryRetrieveLevel=IMAGE",
                 f"StudyInstanceUID={study.study_uid}", f"SeriesInstanceUID={study.ct_series}",
                 f"SOPInstanceUID={one}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = received_in(tmp_path / "image")
    assert set(got) == {one}
    assert dataset_bytes(got[one]) == dataset_bytes(study.files[one])


def test_get_refused_for_a_caller_without_retrieve_right(
    pacs_server: PacsServer, study: StoredStudy
) -> None:
    out = pacs_server.pacs("ae", "add", "nogets", "NOGET", "127.0.0.1", "104", "--no-retrieve")
    assert out.returncode == 0, out.stderr
    ae = AE(ae_title="NOGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate("127.0.0.1", pacs_server.dicom_port, ae_title=pacs_server.ae_title)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(ident("STUDY", StudyInstanceUID=study.study_uid),
                                          StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert responses[-1][0].Status == 0x0124


# -- registry CLI and settings -------------------------------------------------------


def test_ae_cli_add_list_remove(tmp_path: Path) -> None:
    from tests.fixtures.server import make_server

    server = make_server(tmp_path / "data", {"PACS_REMOTE_AES": "CONF=CONFAET@10.0.0.9:104"})
    out = server.pacs("ae", "add", "ws1", "WORKSTATION1", "127.0.0.1", "11113")
    assert out.returncode == 0 and "added ws1" in out.stdout, out.stderr
    out = server.pacs("ae", "add", "ws2", "WS2", "10.1.2.3", "104", "--no-store")
    assert out.returncode == 0, out.stderr
    # Same name again, a bad AE title, a bad port: refused with a message, nothing changed.
    assert server.pacs("ae", "add", "ws1", "OTHER", "127.0.0.1", "104").returncode != 0
    assert server.pacs("ae", "add", "ws3", "A" * 17, "127.0.0.1", "104").returncode != 0
    assert server.pacs("ae", "add", "ws3", "WS3", "127.0.0.1", "70000").returncode != 0
    out = server.pacs("ae", "list")
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [line[:4] for line in lines] == [
        ["CONF", "CONFAET", "10.0.0.9", "104"],
        ["ws1", "WORKSTATION1", "127.0.0.1", "11113"],
        ["ws2", "WS2", "10.1.2.3", "104"],
    ]
    assert lines[0][4] == "settings" and lines[1][4] == "database"
    assert "denied: store" in out.stdout
    assert server.pacs("ae", "remove", "ws1").returncode == 0
    assert server.pacs("ae", "remove", "ws1").returncode != 0  # already gone
    assert server.pacs("ae", "remove", "CONF").returncode != 0  # from the settings
    out = server.pacs("ae", "list")
    assert "ws1" not in out.stdout and "ws2" in out.stdout


def test_remote_aes_setting_parses() -> None:
    peers = parse_remote_aes("A=AET1@host1:104, AET2@[::1]:11112")
    assert [(p.name, p.ae_title, p.host, p.port) for p in peers] == [
        ("A", "AET1", "host1", 104), ("AET2", "AET2", "::1", 11112)]
    for bad in ("A=AET@host", "A=@host:104", "A=AET@host:0", "A=AET@:104", "A=" + "X" * 17 + "@h:1"):
        with pytest.raises(ConfigError):
            parse_remote_aes(bad)
