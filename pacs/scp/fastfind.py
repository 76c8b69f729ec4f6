"""Fast C-FIND answers: encode each identifier straight from its index row, send it in one PDU.

Why (README "Benchmarks", issue 3): a pending C-FIND answer used to cost about 1.5 ms, almost
all of it per-answer Python in pydicom and pynetdicom - building a ``Dataset``, encoding it
element by element (``pydicom.filewriter``), building and encoding a DIMSE command set
``Dataset`` twice (``primitive_to_message`` / ``_set_command_group_length``) and sending the
command and the identifier as two P-DATA-TF PDUs. The SQL was a few percent of it.

Three narrow pieces, each documented where it is:

- :class:`IdentifierPlan` / :class:`EncodedIdentifier`: a per-request plan (which elements, in
  tag order, which come from the row) that turns one row into identifier bytes in Implicit or
  Explicit VR Little Endian (PS3.5 7.1.2, 7.1.3) with ``ISO_IR 192`` (UTF-8) values and the
  even-length padding of PS3.5 6.2 / 7.1. The handler yields ``(0xFF00, EncodedIdentifier)``
  as before; pynetdicom's ``encode()`` is redirected so that it asks the object for its bytes
  in the negotiated transfer syntax (:func:`_encode_identifier`). Anything the plan does not
  cover (big endian, an ambiguous VR, a non-ASCII value in a non-text VR, ...) is encoded by
  pydicom from the reference ``Dataset`` that :func:`pacs.scp.find.answer` builds, exactly
  as before, so the bytes on the wire never depend on which path ran.
- :func:`_send_msg`: a C-FIND response becomes one P-DATA-TF PDU holding the command set
  (encoded here: six fixed elements, PS3.7 9.3.2.2, Implicit VR LE, PS3.7 6.3.1) and, for a
  pending answer, the identifier as a second PDV (PS3.8 9.3.5: a P-DATA-TF carries one or
  more PDVs). Every other message, and any answer that would not fit the peer's maximum PDU
  length, goes through pynetdicom's own ``send_msg`` unchanged.
- :func:`_recv_quickack`: ACK at once before each blocking read of a PDU. DCMTK writes a PDU
  header and its PDV in two ``write()`` calls with Nagle on; when the header arrives while our
  socket is in Linux's delayed-ACK mode, the rest of the C-FIND request waits ~40 ms for that
  ACK. (``pacs.scp.reactor`` already sets ``TCP_QUICKACK`` before it waits on an idle socket;
  this covers the reads that follow a header that was already there.)

:func:`install` applies all three once per process (idempotent).
"""

from __future__ import annotations

import logging
import socket
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom import service_class as _service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

__all__ = ["AnswerWriter", "EncodedIdentifier", "IdentifierPlan", "find_response_command", "install",
           "p_data_tf"]

_CHARSET = 0x00080005
_LEVEL = 0x00080052

#: VRs whose values use the Specific Character Set (PS3.5 6.1.2.3); the rest are ASCII here.
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
#: Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
#: String VRs a row value may have; UI is padded with NUL, every other one with a space (PS3.5 6.2).
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST",
                         "TM", "UC", "UI", "UR", "UT"})
_INT_FORMATS = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l"}


class _Decline(Exception):
    """This row (or request) is not for the fast encoder: let pydicom encode it."""


class _Element:
    """One element of the answer: a fixed value, or the value of ``key`` in each row."""

    __slots__ = ("tag", "vr", "key", "fixed", "heads", "pad", "charset", "fmt")

    def __init__(self, tag: int, vr: str, key: str | None = None, fixed: str | None = None) -> None:
        if len(vr) != 2:
            raise _Decline(f"ambiguous VR {vr!r}")  # pydicom resolves these from context
        self.tag, self.vr, self.key, self.fixed = tag, vr, key, fixed
        group, elem = tag >> 16, tag & 0xFFFF
        # Tag (+ VR [+ reserved]) as written before the length, for (implicit, explicit).
        self.heads = (struct.pack("<HH", group, elem),
                      struct.pack("<HH", group, elem) + vr.encode("ascii")
                      + (b"\0\0" if vr in _LONG_VRS else b""))
        self.pad = b"\0" if vr == "UI" else b" "
        self.charset = vr in _CHARSET_VRS
        self.fmt = _INT_FORMATS.get(vr)
        if key is not None and vr not in _STRING_VRS and self.fmt is None:
            raise _Decline(f"row value with VR {vr}")
        if fixed and vr not in _STRING_VRS:
            raise _Decline(f"fixed value with VR {vr}")

    def encode(self, value: Any, explicit: bool) -> bytes:
        """The whole element (tag, [VR,] length, value) for ``value``, as answer() would set it."""
        if value is None or value == "" or value == []:
            data = b""
        elif self.fmt is not None:
            if isinstance(value, (list, tuple)):
                raise _Decline("multi-valued binary number")
            try:
                data = struct.pack(self.fmt, int(value))
            except (struct.error, ValueError, TypeError) as exc:
                raise _Decline(str(exc)) from None
        else:
            text = "\\".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            if self.charset:
                data = text.encode("utf-8")  # ISO_IR 192 (PS3.5 6.1.2.3, Table 6.1-2)
            elif text.isascii():
                data = text.encode("ascii")
            else:  # pydicom writes these with its default (Latin-1) encoding, or fails
                raise _Decline("non-ASCII value in a non-text VR")
            if len(data) & 1:
                data += self.pad  # PS3.5 7.1: every value has an even length
        n = len(data)
        if not explicit:
            return self.heads[0] + struct.pack("<L", n) + data
        if self.vr in _LONG_VRS:
            return self.heads[1] + struct.pack("<L", n) + data
        if n > 0xFFFF:
            raise _Decline("value too long for a 2-byte length")  # pydicom switches to UN
        return self.heads[1] + struct.pack("<H", n) + data


class IdentifierPlan:
    """How one C-FIND request is answered, element by element, for every matching row.

    Built to mirror :func:`pacs.scp.find.answer`: ``SpecificCharacterSet`` = ``ISO_IR 192``;
    every requested key (sequences empty, ``QueryRetrieveLevel`` = the level,
    ``RetrieveAETitle`` = our AE title, ``InstanceAvailability`` = ``ONLINE``, row values
    where the index has them, empty otherwise); every row key that was not requested (the
    level's unique key); all in ascending tag order (PS3.5 7.1).
    """

    def __init__(self, elements: list[_Element]) -> None:
        self.elements = sorted(elements, key=lambda e: e.tag)
        # Runs of fixed elements pre-encoded per (explicit) flag: a row only fills the gaps.
        self._chunks: dict[bool, list[bytes | tuple[str, _Element]]] = {}

    @classmethod
    def build(cls, identifier: Dataset, row_keys: Iterable[str], level: str,
              ae_title: str) -> IdentifierPlan | None:
        """The plan, or None when some element is not for the fast encoder (pydicom it is)."""
        keys = set(row_keys)
        try:
            elements = [_Element(_CHARSET, "CS", fixed="ISO_IR 192")]
            seen: set[int] = {_CHARSET}
            for elem in identifier:
                tag = int(elem.tag)
                if tag == _CHARSET or tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
                    continue
                seen.add(tag)
                if tag == _LEVEL:
                    elements.append(_Element(tag, "CS", fixed=level))
                    continue
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = elem.VR or "UN"
                keyword = elem.keyword
                if vr == "SQ":
                    elements.append(_Element(tag, "SQ"))  # an empty sequence
                elif keyword and keyword in keys:
                    elements.append(_Element(tag, vr, key=keyword))
                elif keyword == "RetrieveAETitle":
                    elements.append(_Element(tag, vr, fixed=ae_title))  # PS3.4 C.4.1.1.3.2
                elif keyword == "InstanceAvailability":
                    elements.append(_Element(tag, vr, fixed="ONLINE"))
                else:
                    elements.append(_Element(tag, vr))  # asked for, unknown here: empty
            for keyword in keys:  # the level's unique key, even if not asked for
                row_tag = tag_for_keyword(keyword)
                if row_tag is None:
                    return None
                if row_tag not in seen:
                    seen.add(row_tag)
                    elements.append(_Element(row_tag, dictionary_VR(row_tag), key=keyword))
            if _LEVEL not in seen:
                elements.append(_Element(_LEVEL, "CS", fixed=level))
        except (_Decline, KeyError):
            return None
        return cls(elements)

    def _layout(self, explicit: bool) -> list[bytes | tuple[str, _Element]]:
        chunks = self._chunks.get(explicit)
        if chunks is None:
            chunks = []
            for e in self.elements:
                if e.key is None:
                    piece = e.encode(e.fixed, explicit)
                    last = chunks[-1] if chunks else None
                    if isinstance(last, bytes):
                        chunks[-1] = last + piece
                    else:
                        chunks.append(piece)
                else:
                    chunks.append((e.key, e))
            self._chunks[explicit] = chunks
        return chunks

    def encode(self, row: Mapping[str, Any], explicit: bool) -> bytes:
        """The identifier for ``row`` in Explicit (True) or Implicit (False) VR Little Endian.

        Raises ``_Decline`` for a row the fast encoder cannot write exactly as pydicom would.
        """
        return b"".join([c if isinstance(c, bytes) else c[1].encode(row[c[0]], explicit)
                         for c in self._layout(explicit)])

    def encode_or_none(self, row: Mapping[str, Any], explicit: bool) -> bytes | None:
        """:meth:`encode`, or None for a row the fast encoder declines."""
        try:
            return self.encode(row, explicit)
        except _Decline:
            return None

    def answer(self, row: Mapping[str, Any], reference: Callable[[], Dataset]) -> EncodedIdentifier:
        """The pending identifier for ``row``; ``reference()`` builds it as a pydicom Dataset."""
        return EncodedIdentifier(self, row, reference)


class EncodedIdentifier:
    """A pending C-FIND identifier that pynetdicom's ``encode()`` turns into bytes through us.

    ``reference`` builds the same identifier as a pydicom ``Dataset``; it is used for what
    the plan does not cover and when something iterates the answer (pynetdicom's optional
    response logging).
    """

    __slots__ = ("_plan", "_row", "_reference")

    def __init__(self, plan: IdentifierPlan, row: Mapping[str, Any],
                 reference: Callable[[], Dataset]) -> None:
        self._plan, self._row, self._reference = plan, row, reference

    def dataset(self) -> Dataset:
        """The same identifier as a pydicom ``Dataset`` (built on demand)."""
        return self._reference()

    def __iter__(self) -> Iterator[DataElement]:
        return iter(self._reference())

    def encode(self, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        """Same contract as ``pynetdicom.dsutils.encode``: the bytes, or None on failure.

        pynetdicom answers None with 0xC312 (unable to process: cannot encode the identifier).
        """
        try:
            if not is_little_endian:
                raise _Decline("big endian")
            data = self._plan.encode(self._row, not is_implicit_vr)
        except _Decline:
            try:
                reference = self._reference()
            except Exception:  # noqa: BLE001 - runs in pynetdicom's loop, not in our handler
                log.exception("C-FIND: cannot build an answer")
                return None
            return _ORIGINAL_ENCODE(reference, is_implicit_vr, is_little_endian, deflated)
        if deflated:  # as pynetdicom.dsutils.encode does it (PS3.5 A.5)
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
            data = compressor.compress(data) + compressor.flush()
            data += b"\x00" if len(data) % 2 else b""
        return data


# -- the DIMSE command set of a pending C-FIND response ----------------------------------------


def find_response_command(sop_class_uid: str, message_id: int, status: int, *,
                          data_set: bool = True) -> bytes:
    """A C-FIND-RSP command set (PS3.7 9.3.2.2, Table 9.3-3) in Implicit VR Little Endian.

    (0000,0000) CommandGroupLength UL, (0000,0002) AffectedSOPClassUID UI, (0000,0100)
    CommandField US 0x8020, (0000,0120) MessageIDBeingRespondedTo US, (0000,0800)
    CommandDataSetType US (0x0001 when an identifier follows, 0x0101 when none does, PS3.7
    E.2) and (0000,0900) Status US: the elements pynetdicom writes for this message.
    """
    uid = sop_class_uid.encode("ascii")
    if len(uid) & 1:
        uid += b"\0"  # UI is padded with NUL (PS3.5 6.2)
    body = (struct.pack("<HHL", 0x0000, 0x0002, len(uid)) + uid
            + struct.pack("<HHLH", 0x0000, 0x0100, 2, 0x8020)
            + struct.pack("<HHLH", 0x0000, 0x0120, 2, message_id)
            + struct.pack("<HHLH", 0x0000, 0x0800, 2, 0x0001 if data_set else 0x0101)
            + struct.pack("<HHLH", 0x0000, 0x0900, 2, status))
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def p_data_tf(context_id: int, command: bytes, data: bytes = b"") -> bytes:
    """One P-DATA-TF PDU (PS3.8 9.3.5) with the last command fragment and the last data fragment.

    Each PDV item: length (4, big endian) = 2 + fragment, presentation context ID, message
    control header (PS3.8 E.2: 0x03 last command fragment, 0x02 last data set fragment).
    """
    items = struct.pack(">LBB", 2 + len(command), context_id, 0x03) + command
    if data:
        items += struct.pack(">LBB", 2 + len(data), context_id, 0x02) + data
    return struct.pack(">BBL", 0x04, 0x00, len(items)) + items


def _dul_idle(assoc: Any) -> bool:
    """Whether this (the association's) thread may write a P-DATA-TF to the socket itself:
    established (Sta6), nothing queued for the DUL thread, nobody listening to sent PDUs.
    Sending a P-DATA-TF in Sta6 is action DT-1, which changes no state (PS3.8 9.2)."""
    dul = assoc.dul
    return bool(dul.socket is not None and dul.state_machine.current_state == "Sta6"
                and dul.to_provider_queue.empty() and not assoc.get_handlers(evt.EVT_PDU_SENT))


class AnswerWriter:
    """Pending C-FIND responses written straight to the peer, a few PDUs per ``send()``.

    Why (README "Benchmarks", issue 3): yielding each answer to pynetdicom costs about 70 µs
    of Python per answer (its loop, a ``C_FIND`` primitive, status checks, our
    :func:`_send_msg`) and one ``send()`` each; on 2 cores that CPU is taken from the SCU
    reading the answers. Here each answer is one P-DATA-TF PDU (:func:`p_data_tf`) with the
    same command set bytes for every pending answer of the request, and the PDUs are
    written in batches: the first answer at once (the SCU starts reading), then every
    :attr:`batch_bytes`. The final response still comes from pynetdicom, after
    :meth:`flush`, so the order on the wire is the order of the rows.

    Only for an association in the plain case :func:`_send_msg` also writes directly in
    (established, nothing queued for the DUL thread, nobody listening to sent PDUs or
    DIMSE messages, little endian and not deflated); :meth:`for_event` returns None
    otherwise and the handler yields its answers as before.
    """

    batch_bytes = 16384

    def __init__(self, event: evt.Event, explicit: bool) -> None:
        assoc = event.assoc
        self._assoc = assoc
        self._socket = assoc.dul.socket
        self._context_id = event.context.context_id
        self.explicit = explicit
        self._command = find_response_command(str(event.request.AffectedSOPClassUID),
                                              int(event.request.MessageID), 0xFF00)
        self._limit = assoc.dimse.maximum_pdu_size
        self._buffer: list[bytes] = []
        self._size = 0
        self.sent = 0
        #: The association ended under us (aborted, connection lost): stop making answers.
        self.closed = False

    @classmethod
    def for_event(cls, event: evt.Event) -> AnswerWriter | None:
        """A writer for this C-FIND request, or None when pynetdicom must send the answers."""
        if not _installed:
            return None
        try:
            assoc, context = event.assoc, event.context
            syntax = context.transfer_syntax[0] if isinstance(context.transfer_syntax, list) \
                else context.transfer_syntax
            if (not assoc.is_established or not syntax.is_little_endian or syntax.is_deflated
                    or assoc.get_handlers(evt.EVT_DIMSE_SENT) or not _dul_idle(assoc)
                    or getattr(assoc.dimse, "_pacs_queued", None) is not None):
                return None
            return cls(event, explicit=not syntax.is_implicit_VR)
        except (AttributeError, IndexError, TypeError, ValueError):
            return None

    def add(self, identifier: bytes) -> bool:
        """Queue one pending answer; False if its PDU would exceed the peer's maximum PDU
        length (PS3.8 D.1): pynetdicom then sends it, fragmented, after :meth:`flush`."""
        if self._limit and 12 + len(self._command) + len(identifier) > self._limit:
            return False
        pdu = p_data_tf(self._context_id, self._command, identifier)
        self._buffer.append(pdu)
        self._size += len(pdu)
        if self.sent == 0 or self._size >= self.batch_bytes:
            self.flush()
        return True

    def flush(self) -> None:
        """Write what is queued. A broken connection is reported by AssociationSocket.send
        to the DUL (Evt17), which ends the association; later writes are dropped."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self.sent += len(self._buffer)
        self._buffer, self._size = [], 0
        if self._assoc.is_established and self._socket.socket is not None:
            self._socket.send(data)
        else:
            self.closed = True


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``, with C-FIND responses sent as one PDU each.

    Only a C-FIND response whose command set is the plain one above (no Error Comment, no
    Offending Element) and that fits the peer's maximum PDU length; everything else, and
    every message while someone listens to EVT_DIMSE_SENT, goes through pynetdicom.

    The PDU is written to the socket from this (the association's) thread when the upper
    layer is idle in Sta6 (association established, nothing queued for the DUL thread):
    sending a P-DATA-TF in Sta6 is action DT-1, which changes no state (PS3.8 9.2), and
    skipping the hand-over to the DUL thread saves two thread switches per answer. Once a
    response of an operation went through the DUL queue (pynetdicom's path, or the DUL was
    busy), the rest of that operation follows it there, so the order never changes.
    """
    if (type(primitive) is not C_FIND
            or primitive.MessageIDBeingRespondedTo is None
            or not primitive.AffectedSOPClassUID
            or primitive.Status is None
            or primitive.ErrorComment is not None or primitive.OffendingElement is not None):
        return _ORIGINAL_SEND_MSG(self, primitive, context_id)
    assoc, dul = self.assoc, self.dul
    message_id = primitive.MessageIDBeingRespondedTo
    pending = primitive.Status in (0xFF00, 0xFF01)
    identifier = primitive.Identifier
    data = identifier.getvalue() if isinstance(identifier, BytesIO) else b""
    command = find_response_command(str(primitive.AffectedSOPClassUID), message_id,
                                    primitive.Status, data_set=bool(data))
    # A PDV item is 4 (length) + 1 (context ID) + 1 (control header) + the fragment
    # (PS3.8 9.3.5.1); the peer's maximum length bounds the PDV items of one PDU (D.1).
    limit = self.maximum_pdu_size
    if (assoc.get_handlers(evt.EVT_DIMSE_SENT)
            or (identifier is not None and not data)  # pynetdicom's own odd case
            or (limit and 6 + len(command) + (6 + len(data) if data else 0) > limit)):
        self._pacs_queued = message_id if pending else None  # type: ignore[attr-defined]
        return _ORIGINAL_SEND_MSG(self, primitive, context_id)
    if getattr(self, "_pacs_queued", None) != message_id and _dul_idle(assoc):
        # On failure AssociationSocket.send queues Evt17 (connection closed), as the DUL does.
        dul.socket.send(p_data_tf(context_id, command, data))
    else:
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        if data:
            pdata.presentation_data_value_list.append((context_id, b"\x02" + data))
        dul.send_pdu(pdata)
        if pending:
            self._pacs_queued = message_id  # type: ignore[attr-defined]
    if not pending:  # the operation is over; the peer waits for this before its next request
        self._pacs_queued = None  # type: ignore[attr-defined]


def _encode_identifier(ds: Any, is_implicit_vr: bool, is_little_endian: bool,
                       deflated: bool = False) -> bytes | None:
    """``pynetdicom.dsutils.encode`` as the service classes see it: ours encode themselves."""
    if isinstance(ds, EncodedIdentifier):
        return ds.encode(is_implicit_vr, is_little_endian, deflated)
    return _ORIGINAL_ENCODE(ds, is_implicit_vr, is_little_endian, deflated)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _recv_quickack(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``, acknowledging what already arrived before it blocks."""
    sock = self.socket
    if _QUICKACK is not None and sock is not None:
        try:
            # Not sticky on Linux: set before every read. Setting it also sends an ACK that is
            # being delayed, which releases a peer's Nagle-held rest of the PDU at once.
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass  # closed under us: recv() reports it as before
    return _ORIGINAL_RECV(self, nr_bytes)


_ORIGINAL_ENCODE = _service_class.encode
_ORIGINAL_SEND_MSG = DIMSEServiceProvider.send_msg
_ORIGINAL_RECV = AssociationSocket.recv
_installed = False


def install() -> None:
    """Patch pynetdicom once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _service_class.encode = _encode_identifier  # type: ignore[assignment]
    DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
    AssociationSocket.recv = _recv_quickack  # type: ignore[method-assign]
    _installed = True
