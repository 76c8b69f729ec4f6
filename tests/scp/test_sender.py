"""Sub-operations sent as stored (pacs.scp.sender) and requestor DULs that wait for events (reactor).

The encoders are compared byte for byte with pynetdicom's own (command sets, P-DATA-TF
PDUs) and the Part 10 walk with ``pynetdicom.dsutils.split_dataset``. The end-to-end tests
run pynetdicom's storage SCP in this process and our ``send_c_store`` on a pynetdicom
requestor association, over loopback, with ``pacs.scp.reactor`` installed.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.errors import BlobNotFound, PacsError
from pacs.scp import reactor, sender
from pacs.scp.sender import EncodedInstance, Prefetcher, park_reactor, split_part10

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "sample_dicom").rglob("*.dcm"))


@pytest.fixture(scope="module", autouse=True)
def _reactor() -> None:
    reactor.install()  # process-wide and idempotent, as in every receiver


# -- the Part 10 walk ------------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_split_part10_matches_pynetdicom(path: Path) -> None:
    meta, offset = split_dataset(path)
    got_offset, syntax, values = split_part10(path.read_bytes())
    assert (got_offset, syntax) == (offset, str(meta.TransferSyntaxUID))
    assert values[0x00020003].rstrip(b"\0 ").decode() == meta.MediaStorageSOPInstanceUID


@pytest.mark.parametrize("raw", [
    b"", b"\0" * 128 + b"DICX" + b"\0" * 20,
    b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x20\x00" + b"1.2",  # value cut short
    b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0\xff\xff\xff\xff",  # undefined length
    b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00\x04\x00\x00\x001.2\0",  # implicit VR meta
    b"\0" * 128 + b"DICM" + b"\x02\x00\x02\x00UI\x04\x001.2\0\x08\x00",  # no transfer syntax
])
def test_split_part10_refuses_what_it_cannot_walk(raw: bytes) -> None:
    with pytest.raises(sender.NotPart10):
        split_part10(raw)


# -- command sets and PDUs vs pynetdicom ---------------------------------------------------------


def _pynetdicom_store(sop_class: str, sop_instance: str, msg_id: int, priority: int,
                      aet: str | None, originator_id: int | None, data: bytes) -> C_STORE_RQ:
    req = C_STORE()
    req.MessageID, req.Priority = msg_id, priority
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, sop_instance
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = originator_id
    req.DataSet = BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return msg


@pytest.mark.parametrize(("sop_instance", "msg_id", "priority", "aet", "originator_id"), [
    ("1.2.3.4", 1, 2, None, None),
    ("1.2.3.45", 65535, 0, "MINIPACS", 7),
    ("1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567", 300, 1, "ODD", 65535),
    ("1.2.3", 2, 2, "SIXTEEN_CHARS_AE", 1),
    ("1.2.3.4", 2, 2, "A", None),
])
def test_store_request_command_matches_pynetdicom(sop_instance: str, msg_id: int, priority: int,
                                                  aet: str | None, originator_id: int | None) -> None:
    for sop_class in (CTImageStorage, "1.2.840.10008.5.1.4.1.1.4"):  # even and odd lengths
        msg = _pynetdicom_store(sop_class, sop_instance, msg_id, priority, aet, originator_id, b"x")
        assert sender.store_request_command(sop_class, sop_instance, msg_id, priority, aet,
                                            originator_id) == encode(msg.command_set, True, True)


@pytest.mark.parametrize(("cls", "message", "field"), [(C_MOVE, C_MOVE_RSP, 0x8021),
                                                       (C_GET, C_GET_RSP, 0x8010)])
@pytest.mark.parametrize("model", [StudyRootQueryRetrieveInformationModelMove,
                                   StudyRootQueryRetrieveInformationModelGet])
def test_pending_response_command_matches_pynetdicom(cls: Any, message: Any, field: int, model: str) -> None:
    for counts in [(299, 1, 0, 0), (0, 65535, 3, 2), (5, 0, 0, 0)]:
        rsp = cls()
        rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID, rsp.Status = 65535, model, 0xFF00
        rsp.Identifier = None
        (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
         rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
        msg = message()
        msg.primitive_to_message(rsp)
        assert sender.pending_response_command(field, model, 65535, *counts) == \
            encode(msg.command_set, True, True)


@pytest.mark.parametrize("max_pdu", [4096, 16382, 16384, 131072])
@pytest.mark.parametrize("size", [0, 1, 4089, 4090, 4091, 100_000])
def test_pdata_pdus_match_pynetdicom(max_pdu: int, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    msg = _pynetdicom_store(CTImageStorage, "1.2.3.4", 9, 2, "MINIPACS", 3, data)
    expected = [P_DATA_TF(p).encode() for p in msg.encode_msg(5, max_pdu)]
    command = encode(msg.command_set, True, True)
    assert command is not None
    if not data:
        expected = expected[:1]  # pynetdicom sends no data PDU for an empty data set
        assert list(sender.pdata_pdus(5, command, None, max_pdu)) == expected
        return
    assert list(sender.pdata_pdus(5, command, data, max_pdu)) == expected


def test_pdata_pdus_unlimited_peer_gets_big_fragments() -> None:
    data = b"\x01\x02" * (1_500_000 // 2)
    pdus = list(sender.pdata_pdus(3, b"cmd!", memoryview(data), 0))
    assert [len(p) for p in pdus] == [6 + 6 + 4, 6 + 6 + sender.UNLIMITED_FRAGMENT,
                                     6 + 6 + len(data) - sender.UNLIMITED_FRAGMENT]
    assert [p[11] for p in pdus] == [0x03, 0x00, 0x02]
    assert b"".join(p[12:] for p in pdus[1:]) == data


# -- read-ahead --------------------------------------------------------------------------------


class SlowBlobs:
    """A blob store stand-in that counts reads in flight and blobs handed out but not yet sent."""

    def __init__(self, missing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.missing = missing
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def get(self, key: str) -> bytes:
        with self.lock:
            self.started.append(key)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(0.002)
        with self.lock:
            self.in_flight -= 1
        if key in self.missing:
            raise BlobNotFound(key)
        return key.encode()


def test_prefetcher_keeps_order_hands_back_errors_and_reads_ahead_within_bounds() -> None:
    blobs = SlowBlobs(missing={"k3"})
    keys = [(f"k{i}", 10) for i in range(20)]
    got = []
    for i, item in enumerate(Prefetcher(blobs, keys)):  # type: ignore[arg-type]
        got.append(item)
        # Never more than PREFETCH_DEPTH blobs read ahead of the one handed out.
        assert len(blobs.started) <= i + 1 + sender.PREFETCH_DEPTH
    assert [g for g in got if not isinstance(g, PacsError)] == [f"k{i}".encode() for i in range(20) if i != 3]
    assert isinstance(got[3], BlobNotFound)
    assert blobs.started == [k for k, _ in keys]


def test_prefetcher_byte_budget_and_close() -> None:
    blobs = SlowBlobs()
    big = sender.PREFETCH_BYTES // 2 + 1
    keys = [(f"k{i}", big) for i in range(10)]
    it = iter(Prefetcher(blobs, keys))  # type: ignore[arg-type]
    assert next(it) == b"k0"
    time.sleep(0.05)
    # One held (k1: two would exceed the budget), none beyond: budget, not depth, binds.
    assert blobs.started == ["k0", "k1"]
    it.close()  # type: ignore[attr-defined]
    time.sleep(0.05)
    assert blobs.started == ["k0", "k1"]


# -- parking the reactor -----------------------------------------------------------------------


def test_parked_needs_the_reactor_waiting_on_the_checkpoint() -> None:
    checkpoint = threading.Event()
    fake = SimpleNamespace(_is_paused=True, _reactor_checkpoint=checkpoint)
    # pynetdicom's flag alone: still True just after the reactor was let go.
    assert not sender._parked(fake)  # type: ignore[arg-type]
    waiter = threading.Thread(target=checkpoint.wait)
    waiter.start()
    deadline = time.monotonic() + 5
    while not sender._parked(fake) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.001)
    assert sender._parked(fake)  # type: ignore[arg-type]
    checkpoint.set()
    waiter.join()


# -- end to end: our send_c_store on a pynetdicom requestor association --------------------------


class StorageSCP:
    """pynetdicom's storage SCP in this process, recording every C-STORE as received."""

    def __init__(self, max_pdu: int = 16382, abort_at: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.abort_at = abort_at
        ae = AE(ae_title="STORESCP")
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(Verification)
        classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in SAMPLES}
        for sop_class in sorted(classes | {CTImageStorage}):
            ae.add_supported_context(sop_class, list(AllTransferSyntaxes))
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        req: Any = event.request
        self.received.append({
            "uid": str(req.AffectedSOPInstanceUID), "message_id": req.MessageID,
            "syntax": str(event.context.transfer_syntax), "data": req.DataSet.getvalue(),
            "originator": req.MoveOriginatorApplicationEntityTitle,
            "originator_id": req.MoveOriginatorMessageID,
        })
        if len(self.received) == self.abort_at:
            event.assoc.abort()
        return 0x0000

    def shutdown(self) -> None:
        self.server.shutdown()


@pytest.fixture(params=[16382, 4096, 0], ids=["pdu16k", "pdu4k", "unlimited"])
def storage_scp(request: pytest.FixtureRequest) -> Iterator[StorageSCP]:
    scp = StorageSCP(request.param)
    yield scp
    scp.shutdown()


def _requestor(port: int, pairs: set[tuple[str, str]], handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title="MINIPACS")
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP", evt_handlers=handlers or [])
    assert assoc.is_established
    return assoc


def _encoded(path: Path) -> tuple[EncodedInstance, bytes]:
    raw = path.read_bytes()
    offset, syntax, _ = split_part10(raw)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return EncodedInstance(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax,
                           memoryview(raw)[offset:]), raw[offset:]


def test_every_sample_arrives_byte_identical_in_its_stored_syntax(storage_scp: StorageSCP) -> None:
    items = [_encoded(p) for p in SAMPLES]
    pairs = {(str(e.SOPClassUID), e.encoded_transfer_syntax) for e, _ in items}
    assoc = _requestor(storage_scp.port, pairs)
    sender.attach(assoc)
    assert reactor._event_driven(assoc.dul)  # connected requestor: waits for events
    try:
        statuses = [assoc.send_c_store(e, msg_id=i + 1, originator_aet="MOVER", originator_id=77)
                    for i, (e, _) in enumerate(items)]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [0] * len(items)
    assert not reactor._event_driven(assoc.dul)  # closed: back to pynetdicom's polling
    got = {r["uid"]: r for r in storage_scp.received}
    for e, data in items:
        r = got[str(e.SOPInstanceUID)]
        assert r["syntax"] == e.encoded_transfer_syntax
        # A deflated stream of odd length is padded with one NUL, as pynetdicom does (PS3.5 A.5).
        assert r["data"] == (data + b"\0" if len(data) % 2 else data)
        assert (r["originator"], r["originator_id"]) == ("MOVER", 77)


def test_a_dataset_goes_to_pynetdicom_and_dimse_listeners_keep_its_path() -> None:
    scp = StorageSCP()
    seen: list[str] = []
    try:
        item, data = _encoded(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
        assoc = _requestor(scp.port, {(CTImageStorage, ExplicitVRLittleEndian),
                                      (CTImageStorage, ImplicitVRLittleEndian)},
                           handlers=[(evt.EVT_DIMSE_SENT, lambda e: seen.append(type(e.message).__name__))])
        sender.attach(assoc)
        try:
            assert assoc.send_c_store(item).Status == 0  # through pynetdicom: the event fires
            ds = pydicom.dcmread(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
            ds.SOPInstanceUID = "1.2.3.4.5.6.7.8"
            assert assoc.send_c_store(ds, msg_id=2).Status == 0  # a Dataset: pynetdicom's send_c_store
        finally:
            assoc.release()
    finally:
        scp.shutdown()
    assert seen.count("C_STORE_RQ") == 2
    assert scp.received[0]["data"] == data
    assert pydicom.dcmread(BytesIO(scp.received[1]["data"]), force=True).SOPInstanceUID == "1.2.3.4.5.6.7.8"


def test_many_sub_operations_mixed_with_pynetdicom_sends_lose_no_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pynetdicom's pause check lets its reactor steal a response now and then; parking does not."""
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    scp = StorageSCP()
    path = next(p for p in SAMPLES if p.name == "CT_small.dcm")
    raw = path.read_bytes()
    offset, syntax, _ = split_part10(raw)
    template = pydicom.dcmread(path)
    try:
        assoc = _requestor(scp.port, {(CTImageStorage, syntax)})
        sender.attach(assoc)
        statuses = []
        t0 = time.monotonic()
        try:
            for i in range(600):
                if i % 50 == 49:  # a plain Dataset: pynetdicom's own send, which lets the reactor go
                    template.SOPInstanceUID = f"1.2.3.{i}"
                    statuses.append(assoc.send_c_store(template, msg_id=i + 1).Status)
                else:
                    item = EncodedInstance(CTImageStorage, f"1.2.3.{i}", syntax, memoryview(raw)[offset:])
                    statuses.append(assoc.send_c_store(item, msg_id=i + 1).Status)
        finally:
            assoc.release()
        elapsed = time.monotonic() - t0
    finally:
        scp.shutdown()
    assert statuses == [0] * 600
    assert len(scp.received) == 600
    assert [r["message_id"] for r in scp.received] == list(range(1, 601))
    assert "unexpected" not in caplog.text
    assert elapsed < 30  # a stolen response would cost a whole DIMSE timeout


def test_pynetdicom_requestor_use_is_unchanged_with_the_reactor_installed() -> None:
    """Echo, stores and release through pynetdicom's own send_* API, on an event-driven
    requestor DUL.

    Each call is preceded by :func:`park_reactor`, as our sender does: pynetdicom's own pause
    of the association thread has a race (the thread may pass its checkpoint just before the
    pause is asked for and take the response: "Received unexpected C-ECHO service message",
    then a DIMSE timeout), seen here about once in a full suite run on a busy machine.
    """
    scp = StorageSCP()

    def echo(assoc: Any) -> int:
        park_reactor(assoc)
        return int(assoc.send_c_echo().Status)

    try:
        assoc = _requestor(scp.port, {(Verification, ExplicitVRLittleEndian),
                                      (CTImageStorage, ExplicitVRLittleEndian)})
        assert reactor._event_driven(assoc.dul)
        t0 = time.monotonic()
        assert all(echo(assoc) == 0 for _ in range(50))
        echo_s = time.monotonic() - t0
        ds = pydicom.dcmread(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
        park_reactor(assoc)
        assert assoc.send_c_store(ds).Status == 0
        time.sleep(0.05)  # idle: the DUL waits on its socket and wake-up pipe
        assert echo(assoc) == 0
        assoc.release()
        assert assoc.is_released
        # and an abort from our side still goes out and ends the association
        assoc = _requestor(scp.port, {(Verification, ExplicitVRLittleEndian)})
        assoc.abort()
        assert assoc.is_aborted
    finally:
        scp.shutdown()
    assert echo_s < 5  # 50 round trips: no stalls waiting for a polling turn
    assert len(scp.received) == 1


def test_odd_length_deflated_sample_is_padded_and_inflates_the_same() -> None:
    path = next(p for p in SAMPLES if p.name == "image_dfl.dcm")
    _, data = _encoded(path)
    assert len(data) % 2  # the sample this is about
    assert zlib.decompress(data + b"\0", -zlib.MAX_WBITS) == zlib.decompress(data, -zlib.MAX_WBITS)


def test_a_peer_abort_fails_the_rest_at_once() -> None:
    scp = StorageSCP(abort_at=3)
    item, _ = _encoded(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
    try:
        assoc = _requestor(scp.port, {(CTImageStorage, ExplicitVRLittleEndian)})
        sender.attach(assoc)
        outcomes: list[Any] = []
        t0 = time.monotonic()
        for i in range(10):
            try:
                outcomes.append(getattr(assoc.send_c_store(item, msg_id=i + 1), "Status", None))
            except RuntimeError:
                outcomes.append("refused")
        elapsed = time.monotonic() - t0
    finally:
        scp.shutdown()
    assert outcomes[:2] == [0, 0]
    assert outcomes[2] is None  # aborted before its response: no status
    assert outcomes[3:] == ["refused"] * 7
    assert elapsed < 10  # not one DIMSE timeout per remaining instance
    deadline = time.monotonic() + 5
    while assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert assoc.is_aborted and not assoc.is_alive()  # pynetdicom's reactor took over again


def test_encoded_instance_without_attach_fails_instead_of_sending_a_stub() -> None:
    scp = StorageSCP()
    try:
        item, _ = _encoded(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
        assoc = _requestor(scp.port, {(CTImageStorage, ExplicitVRLittleEndian)})
        try:
            with pytest.raises(AttributeError):
                assoc.send_c_store(item)  # pynetdicom's own: no Transfer Syntax UID
        finally:
            assoc.release()
    finally:
        scp.shutdown()
    assert scp.received == []


def test_no_context_for_the_stored_syntax_is_a_value_error() -> None:
    scp = StorageSCP()
    try:
        item, _ = _encoded(next(p for p in SAMPLES if p.name == "CT_small.dcm"))
        assoc = _requestor(scp.port, {(CTImageStorage, ImplicitVRLittleEndian)})
        sender.attach(assoc)
        try:
            with pytest.raises(ValueError):
                assoc.send_c_store(item)  # explicit VR stored, only implicit accepted: no conversion here
        finally:
            assoc.release()
    finally:
        scp.shutdown()
    assert scp.received == []


def test_dataset_for_send_c_store_is_a_dataset() -> None:
    item = EncodedInstance(CTImageStorage, "1.2.3", ExplicitVRLittleEndian, b"\x08\x00")
    assert isinstance(item, Dataset)  # pynetdicom's C-MOVE / C-GET loops insist on it
    assert item.SOPInstanceUID == "1.2.3"
    assert getattr(item, "file_meta", None) is None  # so pynetdicom's send_c_store refuses it
