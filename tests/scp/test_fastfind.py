"""The fast C-FIND answer path (pacs.scp.fastfind) against pydicom and pynetdicom as references.

Every encoding here is compared byte for byte with what the project sent before: the
``Dataset`` from :func:`pacs.scp.find.answer`, encoded by pynetdicom's ``dsutils.encode``
(pydicom's writer), and pynetdicom's own DIMSE/PDU encoders. The end-to-end tests run a real
pynetdicom SCU against the SCP started in this process, over loopback.
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode as pydicom_encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from pynetdicom.transport import AssociationSocket

from pacs.config import Settings
from pacs.scp import fastfind
from pacs.scp.find import answer
from pacs.store.query import ATTRIBUTES, UNIQUE_KEY, Level

SETTINGS = Settings()

# -- identifiers: fast encoder vs pydicom ------------------------------------------------------

NAMES = ["Nguyễn^Văn An", "Đặng^Minh Châu", "Trần^Thị Bình", "Lê", "Hồ^Ngọc Hà^^Bs.",
         "Nguyễn^Thị Hương=阮^氏香", "O'Brien^Seán", "A", "AB", "Phạm^Quốc Huy "]
TEXTS = ["CT ngực", "MRI sọ não", "X quang", "a\\b", "odd", "even", "Siêu âm", "A_4%", "x" * 64]
UIDS = ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.10.1999.1.1", "1.2.826.0.1.3680043.10.1999.1.12"]
MODALITIES = ["CT", "MR", "SR", "US", "CR", "DX"]


def _value(keyword: str, rnd: random.Random) -> Any:
    """A value as run_find returns it for ``keyword`` (sometimes empty or missing)."""
    if rnd.random() < 0.15:
        return rnd.choice([None, ""])
    attr = ATTRIBUTES[keyword]
    if keyword == "ModalitiesInStudy":
        return sorted(rnd.sample(MODALITIES, rnd.randint(0, 4)))
    if keyword.startswith("NumberOf"):
        return rnd.randint(0, 5000)  # SQL count(*): int
    if attr.kind == "pn":
        return rnd.choice(NAMES)
    if attr.kind == "uid":
        return rnd.choice(UIDS)
    if attr.kind == "date":
        return rnd.choice(["20261105", "19800101"])
    if attr.kind == "time":
        return rnd.choice(["101500", "1015", "101500.123", "235959.999999"])
    if attr.kind == "int":
        return rnd.randint(0, 65535) if keyword in ("Rows", "Columns") else rnd.randint(-5, 100000)
    if keyword == "Modality":
        return rnd.choice(MODALITIES)
    if keyword == "PatientSex":
        return rnd.choice(["M", "F", "O"])
    return rnd.choice(TEXTS)


#: Requested keys the index does not have: answered empty (or fixed), with many VRs.
EXTRA_KEYS = ["RetrieveAETitle", "InstanceAvailability", "PatientAge", "PatientWeight",
              "ReferencedStudySequence", "OtherPatientIDsSequence", "IssuerOfPatientID",
              "PatientComments", "InstitutionName", "AcquisitionDateTime", "ImageComments"]


def _request(level: Level, rnd: random.Random) -> tuple[Dataset, dict[str, Any]]:
    """A random identifier for ``level`` and a random index row for it."""
    usable = [k for k, a in ATTRIBUTES.items() if a.level.value <= level.value]
    below = [k for k, a in ATTRIBUTES.items() if a.level.value > level.value]
    asked = rnd.sample(usable, rnd.randint(0, len(usable)))
    ds = Dataset()
    if rnd.random() < 0.8:
        ds.SpecificCharacterSet = rnd.choice(["ISO_IR 192", "ISO_IR 100", ""])
    if rnd.random() < 0.9:
        ds.QueryRetrieveLevel = level.name
    extra = rnd.sample(EXTRA_KEYS, rnd.randint(0, 4)) + rnd.sample(below, min(len(below), rnd.randint(0, 2)))
    for keyword in asked + extra:
        setattr(ds, keyword, [] if keyword.endswith("Sequence") else None)
    if rnd.random() < 0.3:
        ds.add_new(0x00091010, "LO", None)  # a private element: answered empty
        ds.add_new(0x00090010, "LO", "ACME")  # its creator
    if rnd.random() < 0.2:
        ds.add_new(0x00080000, "UL", 0)  # a (retired) group length: never answered
    row = {k: _value(k, rnd) for k in dict.fromkeys([*asked, UNIQUE_KEY[level]])}
    return ds, row


def _reference(identifier: Dataset, row: dict[str, Any], level: Level, implicit: bool,
               deflated: bool = False) -> bytes | None:
    return pydicom_encode(answer(identifier, row, level.name, SETTINGS), implicit, True, deflated)


def _fast(identifier: Dataset, row: dict[str, Any], level: Level, implicit: bool,
          deflated: bool = False, little: bool = True) -> bytes | None:
    plan = fastfind.IdentifierPlan.build(identifier, row, level.name, SETTINGS.ae_title)
    assert plan is not None
    ident = plan.answer(row, lambda: answer(identifier, row, level.name, SETTINGS))
    return ident.encode(implicit, little, deflated)


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_identifiers_match_pydicom_byte_for_byte(level: Level, implicit: bool) -> None:
    rnd = random.Random(f"{level.name}-{implicit}")
    for _ in range(300):
        identifier, row = _request(level, rnd)
        assert _fast(identifier, row, level, implicit) == _reference(identifier, row, level, implicit), (
            identifier, row)


def test_bench_like_rows_match_and_decode() -> None:
    """The benchmark's STUDY query: UTF-8 names, multi-valued ModalitiesInStudy, counts."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "STUDY"
    for k in ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]:
        setattr(identifier, k, None)
    identifier.StudyDate = "20250315-20250315"
    row = {"StudyInstanceUID": "1.2.826.0.1.3680043.10.2000.1.271", "PatientName": "Nguyễn^Minh Huy",
           "PatientID": "BN0000270", "StudyDate": "20250315", "StudyTime": "165800",
           "AccessionNumber": "ACC00000270", "StudyDescription": "Chụp cắt lớp",
           "ModalitiesInStudy": ["CT", "SR"], "NumberOfStudyRelatedSeries": 2,
           "NumberOfStudyRelatedInstances": 4}
    for implicit in (True, False):
        raw = _fast(identifier, row, Level.STUDY, implicit)
        assert raw == _reference(identifier, row, Level.STUDY, implicit)
        assert raw is not None and len(raw) % 2 == 0
        ds = decode(BytesIO(raw), implicit, True)
        assert str(ds.PatientName) == "Nguyễn^Minh Huy"
        assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
        assert ds.StudyDescription == "Chụp cắt lớp"
        assert int(ds.NumberOfStudyRelatedInstances) == 4
        assert ds.QueryRetrieveLevel == "STUDY" and ds.SpecificCharacterSet == "ISO_IR 192"


def test_deflated_and_big_endian_match_pynetdicom() -> None:
    rnd = random.Random(7)
    for _ in range(50):
        identifier, row = _request(Level.STUDY, rnd)
        assert (_fast(identifier, row, Level.STUDY, False, deflated=True)
                == _reference(identifier, row, Level.STUDY, False, deflated=True))
        # Explicit VR Big Endian (retired) is left to pydicom entirely.
        big = pydicom_encode(answer(identifier, row, "STUDY", SETTINGS), False, False)
        assert _fast(identifier, row, Level.STUDY, False, little=False) == big


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("Modality", "CTé"),  # non-ASCII in a CS value: pydicom writes it as Latin-1
        ("Modality", "Đ"),  # not even Latin-1: pydicom cannot write it (None -> 0xC312)
        ("Rows", 70000),  # out of range for US: pydicom cannot write it either
        ("Rows", "abc"),
    ],
)
def test_values_the_fast_path_declines_go_to_pydicom(keyword: str, value: Any) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    setattr(identifier, keyword, None)
    row = {keyword: value, "SOPInstanceUID": "1.2.3"}
    plan = fastfind.IdentifierPlan.build(identifier, row, "IMAGE", SETTINGS.ae_title)
    assert plan is not None
    with pytest.raises(fastfind._Decline):
        plan.encode(row, True)
    for implicit in (True, False):
        got = plan.answer(row, lambda: answer(identifier, row, "IMAGE", SETTINGS)).encode(implicit, True)
        if value == "abc":  # answer() itself raises: pynetdicom then answers 0xC312
            assert got is None
            continue
        assert got == pydicom_encode(answer(identifier, row, "IMAGE", SETTINGS), implicit, True)


def test_ambiguous_vr_in_the_request_means_no_plan() -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SmallestImagePixelValue = None  # (0028,0106) "US or SS"
    assert fastfind.IdentifierPlan.build(identifier, {"SOPInstanceUID": "1.2"}, "IMAGE", "AE") is None


def test_encoded_identifier_is_iterable_like_a_dataset() -> None:
    """pynetdicom's optional response logging iterates the identifier (pretty_dataset)."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = None
    row = {"PatientName": "Nguyễn^Văn An", "StudyInstanceUID": "1.2.3"}
    plan = fastfind.IdentifierPlan.build(identifier, row, "STUDY", "AE")
    assert plan is not None
    ident = plan.answer(row, lambda: answer(identifier, row, "STUDY", SETTINGS))
    assert [e.keyword for e in ident] == ["SpecificCharacterSet", "QueryRetrieveLevel",
                                          "PatientName", "StudyInstanceUID"]


# -- DIMSE command set and P-DATA-TF vs pynetdicom ------------------------------------------------


def _pynetdicom_message(status: int, identifier: bytes | None, sop_class: str, msg_id: int,
                        context_id: int) -> list[P_DATA]:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    rsp.Identifier = BytesIO(identifier) if identifier is not None else None
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return list(msg.encode_msg(context_id, 0))


@pytest.mark.parametrize("sop_class", [StudyRootQueryRetrieveInformationModelFind,
                                       PatientRootQueryRetrieveInformationModelFind])
@pytest.mark.parametrize(("status", "identifier"),
                         [(0xFF00, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "), (0xFF01, b"ab"),
                          (0x0000, None), (0xFE00, None), (0xA700, None)])
def test_command_set_and_pdu_match_pynetdicom(sop_class: str, status: int, identifier: bytes | None) -> None:
    msg_id, cx = 65535, 7
    pdatas = _pynetdicom_message(status, identifier, sop_class, msg_id, cx)
    (_, expected_command), = pdatas[0].presentation_data_value_list
    command = fastfind.find_response_command(sop_class, msg_id, status, data_set=identifier is not None)
    assert b"\x03" + command == expected_command
    if identifier is not None:
        (_, expected_data), = pdatas[1].presentation_data_value_list
        assert expected_data == b"\x02" + identifier
    # One PDU with both PDVs, as pynetdicom itself would encode that P-DATA.
    one = P_DATA()
    one.presentation_data_value_list.append((cx, b"\x03" + command))
    if identifier is not None:
        one.presentation_data_value_list.append((cx, b"\x02" + identifier))
    assert fastfind.p_data_tf(cx, command, identifier or b"") == P_DATA_TF(one).encode()


# -- end to end: a pynetdicom SCU against the SCP in this process -------------------------------


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pacs.ingest import IngestService, Origin
    from pacs.scp.server import start_scp, stop_scp
    from pacs.store.blobs import FilesystemBlobStore
    from pacs.store.index import Index
    from tests.fixtures.find_data import datasets
    from tests.test_dicom import part10

    tmp = tmp_path_factory.mktemp("fastfind")
    index = Index(f"sqlite:///{tmp / 'i.sqlite'}", fsync=False)
    index.migrate()
    ingest = IngestService(FilesystemBlobStore(tmp / "b", fsync=False), index)
    for ds in datasets():
        ingest.store(part10(ds), Origin("import"))
    settings = Settings(host="127.0.0.1", dicom_port=0, data_dir=Path(tmp), fsync=False)
    server = start_scp(settings, ingest)
    yield server
    stop_scp(server, 5)
    index.dispose()


def _scu_find(port: int, syntax: str, max_pdu: int, keys: dict[str, Any],
              handlers: list[Any] | None = None) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FASTSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS", max_pdu=max_pdu,
                         evt_handlers=handlers or [])
    assert assoc.is_established
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 192"
    query.QueryRetrieveLevel = "STUDY"
    for k, v in keys.items():
        setattr(query, k, v)
    out = [(int(status.Status), ident) for status, ident in
           assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    return out


KEYS = {"StudyInstanceUID": "", "PatientName": "", "PatientID": "", "StudyDescription": "",
        "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}


def _answers(results: list[tuple[int, Dataset | None]]) -> dict[str, Dataset]:
    assert [s for s, _ in results] == [0xFF00] * (len(results) - 1) + [0x0000]
    return {str(ds.StudyInstanceUID): ds for _, ds in results[:-1] if ds is not None}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts which way the SCP sent its C-FIND responses (queued: one PDU, via the DUL)."""
    counts = {"direct": 0, "pynetdicom": 0, "queued": 0}
    original_send = AssociationSocket.send
    original_msg = fastfind._ORIGINAL_SEND_MSG

    def send(self: AssociationSocket, data: bytes) -> None:
        counts["direct"] += threading.current_thread().__class__.__name__ == "Association"
        original_send(self, data)

    def msg(self: Any, primitive: Any, context_id: int) -> None:
        counts["pynetdicom"] += type(primitive) is C_FIND and primitive.MessageIDBeingRespondedTo is not None
        original_msg(self, primitive, context_id)

    class CountedPData(P_DATA):
        def __init__(self) -> None:
            super().__init__()
            counts["queued"] += 1

    monkeypatch.setattr(AssociationSocket, "send", send)
    monkeypatch.setattr(fastfind, "_ORIGINAL_SEND_MSG", msg)
    monkeypatch.setattr(fastfind, "P_DATA", CountedPData)
    return counts


SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            ExplicitVRBigEndian]


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_scu_receives_the_same_answers_in_one_pdu_or_fragmented(scp: Any, sent: dict[str, int],
                                                                syntax: str) -> None:
    from tests.fixtures.find_data import S1, S2, S3, S4, S5

    port = scp.server_address[1]
    big = _answers(_scu_find(port, syntax, 0, KEYS))
    assert set(big) == {S1, S2, S3, S4, S5}
    reference = _answers(_scu_find(port, ImplicitVRLittleEndian, 0, KEYS))
    # Little endian, not deflated: the handler writes the answers itself (AnswerWriter): the
    # first at once, the other four in one write, then pynetdicom's final response: 3 writes.
    # Otherwise pynetdicom sends each answer and the final, one PDU each (_send_msg): 6.
    writes = 3 if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) else 6
    assert sent == {"direct": writes + 3, "pynetdicom": 0, "queued": 0}
    a = big[S1]
    assert str(a.PatientName) == "Nguyễn^Văn An" and a.StudyDescription == "CT ngực"
    assert list(a.ModalitiesInStudy) == ["CT", "SR"] and int(a.NumberOfStudyRelatedInstances) == 4
    # A peer that takes 128-byte PDUs: answers do not fit one PDU and go through pynetdicom,
    # fragmented; the final response (one 100-byte PDU) then follows them through the DUL queue.
    sent.update(direct=0, pynetdicom=0)
    small = _answers(_scu_find(port, syntax, 128, KEYS))
    assert sent == {"direct": 0, "pynetdicom": 5, "queued": 1}
    def values(answers: dict[str, Dataset]) -> dict[str, list[tuple[int, str, Any]]]:
        return {u: [(e.tag, e.VR, e.value) for e in ds] for u, ds in answers.items()}

    assert values(small) == values(big) == values(reference)


@pytest.mark.parametrize("batch", [1, 400, 1 << 20])
def test_answers_written_in_batches_arrive_whole_and_in_order(scp: Any, sent: dict[str, int],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               batch: int) -> None:
    """However the writer groups its PDUs into writes, the SCU reads the same answers in the
    order of the rows, then the final status; one write per answer with batch 1."""
    reference = _scu_find(scp.server_address[1], ImplicitVRLittleEndian, 0, KEYS)
    monkeypatch.setattr(fastfind.AnswerWriter, "batch_bytes", batch)
    sent.update(direct=0)
    results = _scu_find(scp.server_address[1], ImplicitVRLittleEndian, 0, KEYS)
    assert [s for s, _ in results] == [0xFF00] * 5 + [0x0000]
    order = [str(ds.StudyInstanceUID) for s, ds in results if s == 0xFF00]
    assert order == [str(ds.StudyInstanceUID) for s, ds in reference if s == 0xFF00]
    assert _answers(results).keys() == _answers(reference).keys()
    assert sent["direct"] == {1: 6, 400: 4, 1 << 20: 3}[batch]


def test_dimse_listeners_get_pynetdicoms_path(scp: Any, sent: dict[str, int]) -> None:
    """Someone listening to EVT_DIMSE_SENT on the SCP side sees every message as before."""
    seen: list[int] = []
    port = scp.server_address[1]
    assoc_handlers = [(evt.EVT_DIMSE_SENT, lambda e: seen.append(1))]
    scp.bind(evt.EVT_DIMSE_SENT, assoc_handlers[0][1])
    try:
        results = _scu_find(port, ImplicitVRLittleEndian, 0, KEYS)
    finally:
        scp.unbind(evt.EVT_DIMSE_SENT, assoc_handlers[0][1])
    assert len(_answers(results)) == 5
    assert sent["pynetdicom"] == 6 and len(seen) >= 6


def test_an_aborted_association_stops_the_answers(scp: Any, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The SCU aborts after its first answer: the handler stops reading rows and making
    answers (its writer finds the association gone) instead of encoding all of them."""
    from pacs.scp import find

    pulled: list[int] = []

    class Slow(find.FindStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for row in super().__iter__():
                pulled.append(1)
                if len(pulled) > 1:
                    time.sleep(0.3)  # time for the A-ABORT to arrive between answers
                yield row

    monkeypatch.setattr(find, "FindStream", Slow)
    monkeypatch.setattr(fastfind.AnswerWriter, "batch_bytes", 1)  # every answer written at once
    ae = AE(ae_title="FASTSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.server_address[1], ae_title="MINIPACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    caplog.set_level("INFO", logger="pacs.scp.find")
    responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
    status, _ = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()
    deadline = time.monotonic() + 10
    while "association ended" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "association ended" in caplog.text
    assert len(pulled) < 5  # of the five matching studies


def test_cancel_status_reaches_the_scu(scp: Any, sent: dict[str, int]) -> None:
    """C-CANCEL (PS3.7 9.3.2.3): the handler's Cancel after two answers ends the operation."""
    from pacs.scp import find

    polls = iter([False, False, True])
    original = find.handle_find

    def handle(event: Any, index: Any, settings: Any) -> Iterator[Any]:
        event._is_cancelled = lambda msg_id: next(polls)  # what a C-CANCEL-RQ would set
        yield from original(event, index, settings)

    handlers = scp.get_handlers(evt.EVT_C_FIND)
    scp.unbind(evt.EVT_C_FIND, handlers[0])
    scp.bind(evt.EVT_C_FIND, handle, handlers[1])
    try:
        results = _scu_find(scp.server_address[1], ExplicitVRLittleEndian, 0, KEYS)
    finally:
        scp.unbind(evt.EVT_C_FIND, handle)
        scp.bind(evt.EVT_C_FIND, handlers[0], handlers[1])
    assert [s for s, _ in results] == [0xFF00, 0xFF00, 0xFE00]
    assert sent == {"direct": 3, "pynetdicom": 0, "queued": 0}


# -- TCP_QUICKACK before a blocking read ------------------------------------------------------


def _split_pdu_read_ms(recv: Any) -> float:
    """A peer with Nagle on writes a PDU header, then the rest; how long until we have it all."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(20):  # interactive traffic: the kernel starts delaying our ACKs
            client.sendall(b"q" * 10)
            server.recv(10)
            server.sendall(b"r" * 10)
            client.recv(10)
        client.sendall(b"h" * 12)  # DCMTK: PDU + PDV header in one write() ...
        time.sleep(0.005)  # ... already here when the reactor gets to read it
        client.sendall(b"d" * 88)  # ... the PDV value: held by Nagle until our ACK
        wrapped = AssociationSocket(SimpleNamespace(dul=SimpleNamespace(event_queue=queue.Queue())),
                                    client_socket=server)
        t0 = time.perf_counter()
        data = recv(wrapped, 100)
        assert len(data) == 100
        return (time.perf_counter() - t0) * 1000
    finally:
        for s in (client, server, listener):
            s.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")
def test_reading_a_split_pdu_does_not_wait_for_a_delayed_ack() -> None:
    # Without the ACK the rest arrives after Linux's delayed-ACK timer (up to 40 ms); with it,
    # at once. A ratio inside one run, not an absolute time: the machines are shared.
    delayed = min(_split_pdu_read_ms(fastfind._ORIGINAL_RECV) for _ in range(2))
    quick = min(_split_pdu_read_ms(fastfind._recv_quickack) for _ in range(3))
    assert quick * 3 < delayed, (quick, delayed)
    assert AssociationSocket.recv is fastfind._recv_quickack  # installed by pacs.scp.find


def test_mixed_paths_keep_the_order_of_answers(scp: Any, sent: dict[str, int]) -> None:
    """Some answers fit the peer's PDU and some do not: once one went through the DUL queue,
    the rest of the operation follows it there, so the peer still gets them in order."""
    port = scp.server_address[1]
    expected = [str(ds.StudyInstanceUID) for _, ds in _scu_find(port, ImplicitVRLittleEndian, 0, KEYS)[:-1]]
    mixed = 0
    for max_pdu in range(240, 420, 4):
        sent.update(direct=0, pynetdicom=0, queued=0)
        results = _scu_find(port, ImplicitVRLittleEndian, max_pdu, KEYS)
        assert [str(ds.StudyInstanceUID) for _, ds in results[:-1]] == expected
        assert results[-1][0] == 0x0000
        if sent["pynetdicom"] and sent["queued"] > 1:  # fitting answers queued behind others
            mixed += 1
            assert sent["direct"] + sent["pynetdicom"] + sent["queued"] == len(results)
    assert mixed  # the scan did hit a size where both paths were used in one operation
