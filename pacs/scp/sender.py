"""C-STORE sub-operations sent as stored: no parse, no re-encode, one write, blobs read ahead.

pynetdicom runs the sub-operations of a C-MOVE / C-GET: for every ``(Pending, dataset)``
our handler yields, it calls ``send_c_store(dataset, ...)`` on the association the
instances go out on (the sub-association of a C-MOVE, the requesting association of a
C-GET), then sends a Pending response with the counts on the requesting association.
Measured here per 0.5 MB CT slice, besides the wire, that costs: 0.7 ms to parse the blob
into a ``Dataset`` and 0.7 ms to encode it back into the bytes we already had; 0.7 ms to
build and encode each command set (the C-STORE request and the Pending response); and a
hand-over from our thread to the DUL thread for every P-DATA-TF PDU (32 at DCMTK's default
16 KiB maximum PDU), each one a fight for the GIL. ``send_c_store`` also races the reactor
of a requestor association for the response: now and then (here, once in a few thousand
C-STOREs) the reactor takes it, the sub-operation waits out the DIMSE timeout and every
later one fails (see :func:`park_reactor`).

:func:`attach` replaces, on one association only (instance attributes, no global patch):

- ``send_c_store`` by :func:`send_c_store`. For an :class:`EncodedInstance` (the data set
  bytes of a stored Part 10 blob, after its file meta) it picks a presentation context
  accepted for exactly the stored transfer syntax (PS3.7 9.3.1.1: the data set is encoded
  in the context's syntax; for Deflated Explicit VR Little Endian that is the deflated
  stream, PS3.5 A.5, which is how the blob holds it), encodes the command set itself
  (:func:`store_request_command`), writes the message (:func:`_write`) and waits for the
  C-STORE-RSP on the DIMSE queue as pynetdicom does, with the association's reactor
  parked. Any other dataset (one that needs conversion) goes to pynetdicom's own
  ``send_c_store``, also with the reactor parked first.
- ``dimse.send_msg`` by :func:`_send_msg`: a Pending C-MOVE / C-GET response carrying only
  the counts (PS3.7 9.3.3.2, 9.3.4.2) is encoded here (:func:`pending_response_command`)
  and written; every other message goes to pynetdicom's ``send_msg``.
- the socket's ``send`` by the same ``send`` under a lock, so that the DUL thread and
  :func:`_write` never interleave bytes.

Two odd cases keep pynetdicom's behaviour: a deflated stream of odd length goes out with
one NUL pad byte (as pydicom and pynetdicom write it), and once the peer has aborted,
every remaining sub-operation fails at once.

:func:`_write` cuts a message into P-DATA-TF PDUs of the peer's maximum length exactly as
pynetdicom does (:func:`pdata_pdus`) and writes them from the calling thread, about 1 MiB
per ``send``, holding that lock. It does so only in state Sta6 (PS3.8 9.2, data transfer:
DT-1 would send the same PDUs) with nothing queued for the DUL (so messages keep their
order) and nobody bound to ``EVT_DIMSE_SENT`` (it would not fire); otherwise the message
goes through pynetdicom's DIMSE layer as before. The bytes on the wire are the same
either way (tests compare them).

:class:`Prefetcher` reads the next blobs on a small thread pool while the current one is
on the wire, within a byte budget.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE

from pacs.errors import PacsError
from pacs.store.blobs import BlobStore

log = logging.getLogger(__name__)

PART10_PREFIX = 132  # 128-byte preamble + b"DICM" (PS3.10 7.1)
#: Explicit VR with a 4-byte length (PS3.5 Table 7.1-1); the file meta is always explicit
#: VR little endian (PS3.10 7.1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
PENDING = 0xFF00

#: How long to wait for a sub-association's reactor to park before sending anyway.
PARK_TIMEOUT = 1.0
#: How long to wait for the DUL to send what is queued before writing ourselves.
DRAIN_TIMEOUT = 0.05
#: Bytes handed to one ``send`` call (whole PDUs; at least one PDU).
WRITE_CHUNK = 1024 * 1024
#: Fragment size when the peer sets no maximum PDU length (0: unlimited, PS3.8 D.1).
UNLIMITED_FRAGMENT = 1024 * 1024

#: Read-ahead: at most this many blobs in memory or being read, and this many bytes of them.
PREFETCH_DEPTH = 4
PREFETCH_BYTES = 64 * 1024 * 1024
PREFETCH_THREADS = 2


# -- stored blobs ----------------------------------------------------------------------------


class NotPart10(ValueError):
    """The blob is not a Part 10 file whose meta can be walked."""


def split_part10(raw: bytes | memoryview) -> tuple[int, str, dict[int, bytes]]:
    """``(offset of the data set, transfer syntax UID, meta values)`` of a Part 10 blob.

    Walks the group 0002 element headers after the preamble (PS3.10 7.1) without decoding
    the data set; ``meta`` maps each meta element's tag to its raw value.
    """
    view = memoryview(raw)
    if len(view) < PART10_PREFIX or view[128:132] != b"DICM":
        raise NotPart10("no DICM prefix")
    pos, end = PART10_PREFIX, len(view)
    meta: dict[int, bytes] = {}
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise NotPart10("file meta cut short")
            (length,) = struct.unpack_from("<L", view, pos + 8)
            start = pos + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", view, pos + 6)
            start = pos + 8
        else:
            raise NotPart10(f"file meta element (0002,{element:04X}) is not explicit VR")
        if length == 0xFFFFFFFF or start + length > end:
            raise NotPart10(f"file meta element (0002,{element:04X}) has a bad length")
        meta[0x00020000 | element] = bytes(view[start:start + length])
        pos = start + length
    ts = meta.get(0x00020010, b"").decode("ascii", "replace").strip(" \x00")
    if not ts:
        raise NotPart10("file meta has no Transfer Syntax UID (0002,0010)")
    return pos, ts, meta


class EncodedInstance(Dataset):
    """A stored instance to send as it is: its data set bytes and their transfer syntax.

    ``encoded`` is a view of the blob from the first byte after the file meta. The object
    carries SOP Class and SOP Instance UID as elements (pynetdicom lists the latter when
    the sub-operation fails, PS3.4 C.4.2.1.4.2) and deliberately no file meta: if it ever
    reached pynetdicom's own ``send_c_store`` (no :func:`attach`), that refuses it for want
    of a Transfer Syntax UID, and counts a failure, instead of sending a stub.
    """

    def __init__(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                 encoded: bytes | memoryview) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.encoded_transfer_syntax = transfer_syntax
        self.encoded = memoryview(encoded)


class Prefetcher:
    """Blobs of ``keys`` (``(key, size)``) in order, each read while earlier ones are sent.

    At most :data:`PREFETCH_DEPTH` blobs are held or being read ahead, and no more than
    :data:`PREFETCH_BYTES` of them (sizes from the index) unless a single blob is larger.
    A failed read is handed back as its :class:`~pacs.errors.PacsError` in place of the
    bytes. ``close()`` drops what is left (a cancelled retrieve).
    """

    def __init__(self, blobs: BlobStore, keys: Sequence[tuple[str, int]]) -> None:
        self.blobs = blobs
        self.keys = keys
        self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="blob-prefetch")
        self._ahead: deque[tuple[Future[bytes], int]] = deque()
        self._next = 0
        self._bytes = 0

    def _fill(self) -> None:
        while self._next < len(self.keys) and len(self._ahead) < PREFETCH_DEPTH:
            key, size = self.keys[self._next]
            if self._ahead and self._bytes + size > PREFETCH_BYTES:
                return
            self._ahead.append((self._pool.submit(self.blobs.get, key), size))
            self._bytes += size
            self._next += 1

    def __iter__(self) -> Iterator[bytes | PacsError]:
        try:
            while True:
                self._fill()
                if not self._ahead:
                    return
                future, size = self._ahead.popleft()
                self._bytes -= size
                try:
                    result: bytes | PacsError = future.result()
                except PacsError as exc:
                    result = exc
                self._fill()  # start the next read before this one goes out
                yield result
        finally:
            self.close()

    def close(self) -> None:
        for future, _size in self._ahead:
            future.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- the wire: command sets (PS3.7 9.3, Implicit VR Little Endian, 6.3.1), P-DATA-TF ----------


def _element(element: int, value: bytes) -> bytes:
    # Implicit VR little endian: tag (group 0000), 4-byte length, value.
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    return _element(element, struct.pack("<H", value))


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) & 1 else value  # UI padded with NUL (PS3.5 6.2)


def _command(elements: Iterable[bytes]) -> bytes:
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<L", len(body))) + body  # (0000,0000) group length


def store_request_command(sop_class_uid: str, sop_instance_uid: str, message_id: int,
                          priority: int = 2, originator_aet: str | None = None,
                          originator_id: int | None = None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1, Table 9.3-1), as pynetdicom writes it.

    (0000,0002) Affected SOP Class UID, (0000,0100) Command Field 0x0001, (0000,0110)
    Message ID, (0000,0700) Priority, (0000,0800) Command Data Set Type 0x0001 (a data set
    follows, PS3.7 E.2), (0000,1000) Affected SOP Instance UID and, for a C-MOVE
    sub-operation, (0000,1030) Move Originator AE Title and (0000,1031) Move Originator
    Message ID.
    """
    elements = [
        _element(0x0002, _ui(sop_class_uid)),
        _us(0x0100, 0x0001),
        _us(0x0110, message_id),
        _us(0x0700, priority),
        _us(0x0800, 0x0001),
        _element(0x1000, _ui(sop_instance_uid)),
    ]
    if originator_aet is not None:
        aet = originator_aet.strip().encode("ascii")
        elements.append(_element(0x1030, aet + b" " if len(aet) & 1 else aet))  # AE: space pad
    if originator_id is not None:
        elements.append(_us(0x1031, originator_id))
    return _command(elements)


def pending_response_command(command_field: int, sop_class_uid: str, message_id: int,
                             remaining: int, completed: int, failed: int, warning: int) -> bytes:
    """A Pending C-MOVE-RSP (0x8021) or C-GET-RSP (0x8010) with the counts and no identifier.

    PS3.7 9.3.4.2 / 9.3.3.2: (0000,0002) Affected SOP Class UID, (0000,0100) Command Field,
    (0000,0120) Message ID Being Responded To, (0000,0800) Command Data Set Type 0x0101 (no
    data set), (0000,0900) Status 0xFF00, (0000,1020)-(0000,1023) Number of Remaining /
    Completed / Failed / Warning Sub-operations.
    """
    return _command([
        _element(0x0002, _ui(sop_class_uid)),
        _us(0x0100, command_field),
        _us(0x0120, message_id),
        _us(0x0800, 0x0101),
        _us(0x0900, PENDING),
        _us(0x1020, remaining),
        _us(0x1021, completed),
        _us(0x1022, failed),
        _us(0x1023, warning),
    ])


def _pdv_pdu(context_id: int, control: int, fragment: bytes | memoryview) -> bytes:
    # P-DATA-TF (PS3.8 9.3.5): type 0x04, reserved, PDU length; one PDV item: item length,
    # presentation context ID, message control header (PS3.8 E.2), the fragment.
    return struct.pack(">BBLLBB", 0x04, 0x00, 6 + len(fragment), 2 + len(fragment),
                       context_id, control) + fragment


def pdata_pdus(context_id: int, command: bytes, data: bytes | memoryview | None,
               max_pdu: int) -> Iterator[bytes]:
    """The P-DATA-TF PDUs of one message, one PDV each, cut as pynetdicom cuts them.

    Fragments of ``max_pdu - 6`` bytes, so that a PDU's variable field (its PDV item) is
    at most the peer's maximum length (PS3.8 D.1); control header 0x01 / 0x03 for command
    fragments (last: 0x03) and 0x00 / 0x02 for data set fragments (last: 0x02, PS3.8 E.2).
    """
    size = max_pdu - 6 if max_pdu else UNLIMITED_FRAGMENT
    for start in range(0, len(command), size):
        last = start + size >= len(command)
        yield _pdv_pdu(context_id, 0x03 if last else 0x01, command[start:start + size])
    if data is None:
        return
    view = memoryview(data)
    for start in range(0, len(view), size):
        last = start + size >= len(view)
        yield _pdv_pdu(context_id, 0x02 if last else 0x00, view[start:start + size])


def _write(assoc: Association, context_id: int, command: bytes,
           data: memoryview | None = None) -> bool:
    """Write one whole message on ``assoc``'s socket from this thread; False if we may not.

    We may when :func:`attach` put its lock on the socket, nobody is bound to
    ``EVT_DIMSE_SENT``, the DUL has nothing queued (waited for up to
    :data:`DRAIN_TIMEOUT`) and the state is Sta6. A failed write is handled as in the DUL:
    the socket queues Evt17 (connection closed), and a response wait ends without one.
    """
    dul = assoc.dul
    sock = dul.socket
    lock = getattr(sock, "_pacs_send_lock", None)
    if sock is None or lock is None or assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return False
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while not dul.to_provider_queue.empty():
        if time.monotonic() > deadline:
            log.debug("DUL still busy after %.0f ms: message queued instead", DRAIN_TIMEOUT * 1000)
            return False
        time.sleep(0.00005)
    raw_send = sock._pacs_raw_send  # type: ignore[attr-defined]
    with lock:
        if dul.state_machine.current_state != "Sta6":
            return False
        chunk: list[bytes] = []
        size = 0
        for pdu in pdata_pdus(context_id, command, data, assoc.dimse.maximum_pdu_size):
            chunk.append(pdu)
            size += len(pdu)
            if size >= WRITE_CHUNK:
                raw_send(b"".join(chunk))
                chunk, size = [], 0
                if sock.socket is None:  # closed: Evt17 is queued
                    return True
        if chunk:
            raw_send(b"".join(chunk))
    return True


# -- per association -------------------------------------------------------------------------


def attach(assoc: Association) -> None:
    """Install :func:`send_c_store`, :func:`_send_msg` and the socket lock on ``assoc`` (idempotent).

    Call it before the association sends anything of the retrieve: the lock must be in
    place before the first PDU that :func:`_write` could otherwise cross.
    """
    if not isinstance(assoc.__dict__.get("send_c_store"), partial):
        assoc.send_c_store = partial(send_c_store, assoc)  # type: ignore[method-assign]
    dimse = assoc.dimse
    if not isinstance(dimse.__dict__.get("send_msg"), partial):
        dimse.send_msg = partial(_send_msg, dimse)  # type: ignore[method-assign]
    sock = assoc.dul.socket
    if sock is not None and getattr(sock, "_pacs_send_lock", None) is None:
        lock = threading.Lock()
        raw_send = sock.send

        def locked_send(bytestream: bytes) -> None:
            with lock:
                raw_send(bytestream)

        sock._pacs_send_lock = lock  # type: ignore[attr-defined]
        sock._pacs_raw_send = raw_send  # type: ignore[attr-defined]
        sock.send = locked_send  # type: ignore[method-assign]


def _send_msg(dimse: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``, with plain Pending C-MOVE / C-GET responses written here."""
    if (type(primitive) in (C_MOVE, C_GET)
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status == PENDING
            and primitive.Identifier is None
            and primitive.ErrorComment is None and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID):
        counts = (primitive.NumberOfRemainingSuboperations, primitive.NumberOfCompletedSuboperations,
                  primitive.NumberOfFailedSuboperations, primitive.NumberOfWarningSuboperations)
        if all(isinstance(n, int) for n in counts):
            command = pending_response_command(
                0x8021 if type(primitive) is C_MOVE else 0x8010, str(primitive.AffectedSOPClassUID),
                primitive.MessageIDBeingRespondedTo, *counts)
            if _write(dimse.assoc, context_id, command):
                return
    type(dimse).send_msg(dimse, primitive, context_id)


def _parked(assoc: Association) -> bool:
    # pynetdicom's own check is ``_is_paused`` alone, which stays True for a moment after
    # the reactor was let go (between ``_reactor_checkpoint.wait()`` returning and
    # ``_is_paused = False``). A send in that window races the reactor for the response:
    # the reactor takes it, logs "Received unexpected C-STORE service message", and the
    # sender waits out the DIMSE timeout, then fails every remaining sub-operation. The
    # reactor is truly parked only once it waits on the (cleared) checkpoint.
    checkpoint = assoc._reactor_checkpoint
    waiters = getattr(getattr(checkpoint, "_cond", None), "_waiters", None)
    return bool(assoc._is_paused and (waiters is None or len(waiters) > 0))


def _let_go(assoc: Association) -> None:
    """Let a parked reactor run again, so that pynetdicom handles an abort or a closed connection."""
    if threading.current_thread() is not assoc:
        assoc._reactor_checkpoint.set()


def park_reactor(assoc: Association) -> None:
    """Hold ``assoc``'s reactor thread so that it leaves the DIMSE responses to us.

    pynetdicom pauses a requestor's reactor around each ``send_*`` call and lets it run in
    between; we keep it parked while sub-operations go out (pynetdicom's ``release()``
    finds it parked, releases, and lets it go). In a C-GET the calling thread is the
    reactor itself, which pynetdicom already marked as paused.
    """
    if threading.current_thread() is assoc:
        return
    checkpoint = assoc._reactor_checkpoint
    if checkpoint.is_set():
        checkpoint.clear()
    deadline = time.monotonic() + PARK_TIMEOUT
    while not _parked(assoc):
        if not assoc.is_alive():
            return  # a reactor that has ended takes nothing
        if time.monotonic() > deadline:
            log.warning("association reactor did not pause within %.1f s", PARK_TIMEOUT)
            return
        time.sleep(0.0001)


def send_c_store(
    assoc: Association,
    dataset: Dataset,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """``Association.send_c_store`` for :class:`EncodedInstance`; anything else goes to pynetdicom's.

    Same contract as pynetdicom's: the status dataset of the C-STORE-RSP (PS3.7 9.3.1.2),
    an empty dataset when no response came (the association is then aborted), and
    ``RuntimeError`` / ``ValueError`` when it cannot be sent at all (pynetdicom counts a
    failed sub-operation).
    """
    if not isinstance(dataset, EncodedInstance):
        # pynetdicom's own (conversions): it finds the reactor parked, so the race of its
        # pause check cannot bite either; it lets the reactor go afterwards.
        if assoc.is_established:
            park_reactor(assoc)
        return Association.send_c_store(assoc, dataset, msg_id, priority, originator_aet, originator_id)
    if (not assoc.is_established or not assoc.dul.is_alive()
            or assoc.dul.state_machine.current_state != "Sta6"):
        # Aborted or closed while its reactor was parked: let pynetdicom notice, and fail
        # this and every later sub-operation at once, as its own send_c_store does.
        _let_go(assoc)
        raise RuntimeError("The association with a peer SCP must be established before "
                           "sending a C-STORE request")
    sop_class, sop_instance = str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)
    syntax = dataset.encoded_transfer_syntax
    # Exactly the stored syntax (pynetdicom would also take another uncompressed one).
    context = assoc._get_valid_context(sop_class, syntax, "scu", allow_conversion=False)
    if str(context.transfer_syntax[0]) != syntax:
        raise ValueError(f"no presentation context for {sop_class} in {syntax}")
    context_id = int(context.context_id)  # type: ignore[arg-type]
    park_reactor(assoc)
    command = store_request_command(sop_class, sop_instance, msg_id, priority,
                                    originator_aet, originator_id)
    data = dataset.encoded
    if len(data) % 2:
        # A deflated stream (PS3.5 A.5) of odd length, stored as received: pad it with one
        # NUL as pydicom and pynetdicom do when they deflate (DCMTK refuses odd fragments).
        data = memoryview(bytes(data) + b"\0")
    if not _write(assoc, context_id, command, data):
        req = C_STORE()
        req.MessageID = msg_id
        req.Priority = priority
        req.MoveOriginatorApplicationEntityTitle = originator_aet
        req.MoveOriginatorMessageID = originator_id
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.DataSet = io.BytesIO(data)
        type(assoc.dimse).send_msg(assoc.dimse, req, context_id)
    _cx_id, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._handle_no_response()
        _let_go(assoc)
        return Dataset()
    return assoc._check_received_status(rsp)
