"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): send stored instances back out.

The instances are named by the unique keys of the identifier (PatientID, Study /
Series / SOP Instance UID, each possibly a list, PS3.4 C.2.2.2.2), found with one SQL
query on the index, read from the blob store (a few ahead, :class:`~pacs.scp.sender.Prefetcher`)
and sent as stored: a peer that accepts the stored transfer syntax receives the data set
bytes of the blob as they are, without a parse or a re-encode (:mod:`pacs.scp.sender`).
A peer that does not gets it decompressed to Explicit VR Little Endian instead of a
failure (issue 3).

pynetdicom drives the sub-operations: the handlers are generators that yield the
destination (C-MOVE only), the number of sub-operations, then one ``(0xFF00, dataset)``
per instance; pynetdicom sends each with C-STORE, answers Pending with the counts and
ends with Success, Warning 0xB000 (with the Failed SOP Instance UID List) or
0xA702 when every sub-operation failed.

Statuses we choose (PS3.4 C.4.2.1.5 / C.4.3.1.4, PS3.7 C):

- 0xA801 Move destination unknown: the destination AE title is not in the registry,
  the destination cannot be reached, or the calling AE is registered with
  ``may_retrieve`` off. (pynetdicom checks the destination before the handler can give
  any other status; answering 0x0124 would first open an association to the
  destination on behalf of a caller we refuse.)
- 0x0124 Refused: not authorized: a C-GET from a calling AE with ``may_retrieve`` off.
- 0xA900 Identifier does not match SOP class: bad or unsupported level, or the unique
  key of the level is missing or empty (it would retrieve everything).
- 0xA701 Out of resources, unable to calculate number of matches: the index is down.
- A missing or unreadable blob, an instance the peer accepts in no form, or a failed
  conversion fails that one sub-operation (counted), never the whole request.
- C-CANCEL: 0xFE00 with the remaining count, checked before every sub-operation.

For C-MOVE with a bad identifier or the index down, pynetdicom needs a destination
before any status, so we associate with the (registered) destination proposing only
Verification, then answer the failure status and release.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from pacs.config import Settings
from pacs.errors import PacsError
from pacs.pixeldata import to_native_little_endian
from pacs.store.aes import AERegistry
from pacs.store.blobs import BlobStore
from pacs.store.index import Index
from pacs.store.models import Instance, Patient, Series, Study
from pacs.scp.sender import EncodedInstance, NotPart10, Prefetcher, attach, split_part10

log = logging.getLogger(__name__)

# Statuses (PS3.4 C.4.2.1.5, C.4.3.1.4; PS3.7 C.5).
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES_MATCHES = 0xA701
IDENTIFIER_DOES_NOT_MATCH = 0xA900

MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
GET_MODELS = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)
PATIENT_ROOT = {str(PatientRootQueryRetrieveInformationModelMove), str(PatientRootQueryRetrieveInformationModelGet)}

#: Identifiers travel in an uncompressed syntax (PS3.7 9.1.3: they are not pixel data).
IDENTIFIER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
]
#: What a decompressed instance is sent in; pynetdicom converts between these two itself.
NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Polling pause of a C-MOVE sub-association's DUL thread (pynetdicom's default is 1 ms).
SUB_ASSOCIATION_LOOP_DELAY = 0.0001
#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255.
MAX_CONTEXTS = 128

#: The unique key of each level, top down (PS3.4 C.6.1.1, C.6.2.1).
LEVEL_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
COLUMNS = {
    "PatientID": Patient.patient_id,
    "StudyInstanceUID": Study.study_instance_uid,
    "SeriesInstanceUID": Series.series_instance_uid,
    "SOPInstanceUID": Instance.sop_instance_uid,
}


def retrieve_contexts() -> list[str]:
    """The C-MOVE and C-GET abstract syntaxes we serve (Patient Root and Study Root)."""
    return [str(uid) for uid in (*MOVE_MODELS, *GET_MODELS)]


class BadIdentifier(PacsError):
    """The identifier names no retrievable level or lacks its unique key (0xA900)."""


@dataclass(frozen=True)
class Match:
    """One instance to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int = 0


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """A unique key's values: a backslash list (PS3.4 C.2.2.2.2) without empty entries."""
    if keyword not in identifier:
        return []
    value = identifier[keyword].value
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def find_instances(index: Index, identifier: Dataset, model: str) -> list[Match]:
    """The instances a C-MOVE / C-GET identifier names, in study/series/instance order.

    Hierarchical retrieve (PS3.4 C.4.2.2.1): the unique key of the level is required, the
    unique keys above it narrow the match when given, keys below the level are ignored.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVEL_KEYS:
        raise BadIdentifier(f"unsupported QueryRetrieveLevel {level!r}")
    if level == "PATIENT" and model not in PATIENT_ROOT:
        raise BadIdentifier("PATIENT level needs the Patient Root model")
    keys = LEVEL_KEYS[level]
    if not _values(identifier, keys[-1]):
        raise BadIdentifier(f"{keys[-1]} is required at the {level} level")
    stmt = (
        select(Instance.sop_instance_uid, Instance.sop_class_uid,
               Instance.transfer_syntax_uid, Instance.blob_key, Instance.size)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )
    for keyword in keys:
        values = _values(identifier, keyword)
        if values:
            column = COLUMNS[keyword]
            stmt = stmt.where(column == values[0] if len(values) == 1 else column.in_(values))
    stmt = stmt.order_by(Study.id, Series.series_number, Series.id,
                         Instance.instance_number, Instance.id)
    with index.session() as s:
        return [Match(*row) for row in s.execute(stmt)]


def storage_contexts(matches: list[Match]) -> list[PresentationContext]:
    """Sub-association proposal: each SOP class in its stored syntaxes and in native little endian.

    One context per (class, stored syntax) so the peer can take the bytes as they are,
    plus one (class, Explicit/Implicit VR Little Endian) fallback for conversion. At most
    128 contexts (PS3.8 9.3.2.2): fallbacks first, then as many exact ones as fit.
    """
    classes = list(dict.fromkeys(m.sop_class_uid for m in matches))
    pairs = list(dict.fromkeys((m.sop_class_uid, m.transfer_syntax_uid) for m in matches))
    contexts = [build_context(c, list(NATIVE_LE)) for c in classes[:MAX_CONTEXTS]]
    room = MAX_CONTEXTS - len(contexts)
    exact = [build_context(c, ts) for c, ts in pairs if ts]
    return exact[:room] + contexts


def _accepted(assoc: Any) -> set[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs we may send C-STORE on in ``assoc``."""
    if assoc is None:
        return set()
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in assoc.accepted_contexts
        if cx.as_scu
    }


def _failed(uid: str) -> Dataset:
    """A stand-in that pynetdicom's send_c_store rejects: one failed sub-operation, UID listed.

    (It lacks SOP Class UID, so the C-STORE is not attempted; pynetdicom counts a failure
    and adds the UID to the Failed SOP Instance UID List, PS3.4 C.4.2.1.4.2.)
    """
    ds = Dataset()
    ds.SOPInstanceUID = uid
    return ds


class Sender:
    """Shapes each stored instance for what the peer accepted."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def blobs_of(self, matches: list[Match]) -> Prefetcher:
        """The blobs of ``matches`` in order, read ahead (a ``PacsError`` for an unreadable one)."""
        return Prefetcher(self.blobs, [(m.blob_key, m.size or 0) for m in matches])

    def dataset(self, match: Match, raw: bytes | PacsError, accepted: set[tuple[str, str]],
                peer: str) -> Dataset:
        """The dataset to yield for one sub-operation (a failing stand-in when it cannot be sent).

        In the stored transfer syntax when the peer accepted it: an
        :class:`~pacs.scp.sender.EncodedInstance`, the data set bytes as stored. Otherwise
        decoded, for pynetdicom (or :func:`to_native_little_endian`) to convert.
        """
        uid, sop_class = match.sop_instance_uid, match.sop_class_uid
        if isinstance(raw, PacsError):
            log.error("retrieve to %s: instance %s: blob %s unreadable: %s",
                      peer, uid, match.blob_key, raw)
            return _failed(uid)
        try:
            offset, syntax, _meta = split_part10(raw)
        except NotPart10:
            pass  # let pydicom try (and report) below
        else:
            if (sop_class, syntax) in accepted:
                return EncodedInstance(sop_class, uid, syntax, memoryview(raw)[offset:])
        try:
            ds = pydicom.dcmread(io.BytesIO(raw))
            stored = UID(ds.file_meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - a damaged blob fails only its sub-operation
            log.error("retrieve to %s: instance %s: blob %s does not parse: %s",
                      peer, uid, match.blob_key, exc)
            return _failed(uid)
        if (sop_class, str(stored)) in accepted:
            return ds  # as stored: pydicom writes a dataset it has not decoded back byte for byte
        native = [ts for ts in NATIVE_LE if (sop_class, str(ts)) in accepted]
        if not native:
            log.warning("retrieve to %s: instance %s: SOP class %s not accepted in any usable syntax",
                        peer, uid, sop_class)
            return _failed(uid)
        if not stored.is_compressed and stored.is_little_endian:
            return ds  # pynetdicom converts explicit/implicit/deflated little endian itself
        try:
            to_native_little_endian(ds)
        except Exception as exc:  # noqa: BLE001 - missing codec, corrupt stream
            log.error("retrieve to %s: instance %s: cannot convert from %s: %s",
                      peer, uid, stored.name, exc)
            return _failed(uid)
        log.info("retrieve to %s: instance %s converted from %s to %s",
                 peer, uid, stored.name, ExplicitVRLittleEndian.name)
        return ds


def _no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN of a C-MOVE sub-association: TCP_NODELAY and fast polling.

    Without TCP_NODELAY every C-STORE request waits for the peer's delayed ACK (~40 ms)
    before its last small PDU leaves: about 13 instances/s instead of hundreds.
    """
    # Once connected, the DUL waits for events (pacs.scp.reactor) and the data goes out
    # from our thread (pacs.scp.sender); poll faster for whatever pynetdicom still polls.
    event.assoc.dul._run_loop_delay = SUB_ASSOCIATION_LOOP_DELAY
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY not set: %s", exc)


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def _lookup(index: Index, event: evt.Event) -> tuple[list[Match] | None, Dataset | None]:
    """The matches, or a failure status dataset (bad identifier, index down)."""
    try:
        identifier = event.identifier
        return find_instances(index, identifier, str(event.request.AffectedSOPClassUID)), None
    except BadIdentifier as exc:
        log.warning("retrieve from %s refused: %s", _calling_ae(event), exc)
        return None, _status(IDENTIFIER_DOES_NOT_MATCH, str(exc))
    except OperationalError as exc:
        log.error("retrieve from %s: index unavailable: %s", _calling_ae(event), exc.orig)
        return None, _status(OUT_OF_RESOURCES_MATCHES, "index unavailable")
    except PacsError as exc:
        log.error("retrieve from %s: %s", _calling_ae(event), exc)
        return None, _status(OUT_OF_RESOURCES_MATCHES, str(exc))
    except Exception as exc:  # noqa: BLE001 - an undecodable identifier
        log.warning("retrieve from %s: cannot read the identifier: %s", _calling_ae(event), exc)
        return None, _status(IDENTIFIER_DOES_NOT_MATCH, f"cannot read the identifier: {exc}")


def _sub_operations(
    event: evt.Event, matches: list[Match], sender: Sender, assoc_of: Any, peer: str
) -> Iterator[tuple[int, Dataset | None]]:
    """``(Pending, dataset)`` per match; Cancel as soon as the requestor asks (PS3.4 C.4.2.3.1)."""
    accepted: set[tuple[str, str]] | None = None
    attach(event.assoc)  # Pending responses written directly (pacs.scp.sender)
    blobs = sender.blobs_of(matches)
    try:
        for i, (match, raw) in enumerate(zip(matches, blobs)):
            if event.is_cancelled:
                log.info("retrieve to %s cancelled after %d of %d", peer, i, len(matches))
                yield CANCEL, None
                return
            if accepted is None:
                assoc = assoc_of()
                accepted = _accepted(assoc)
                if assoc is not None:
                    attach(assoc)  # a send_c_store that sends EncodedInstance as is
            yield PENDING, sender.dataset(match, raw, accepted, peer)
    finally:
        blobs.close()


def handle_move(event: evt.Event, index: Index, blobs: BlobStore, registry: AERegistry) -> Iterator[Any]:
    """EVT_C_MOVE (PS3.4 C.4.2): destination, number of sub-operations, then the datasets."""
    caller = _calling_ae(event)
    destination = str(event.move_destination or "").strip()
    try:
        peer = registry.by_ae_title(destination)
        allowed = registry.may_retrieve(caller)
    except PacsError as exc:
        # The database is down: a peer from the settings still gets a proper status (0xA701).
        log.error("C-MOVE from %s: registry unavailable: %s", caller, exc)
        peer, allowed = registry.configured(destination), True
    if peer is None or not allowed:
        why = "is not a known destination" if peer is None else f"refused: {caller} may not retrieve"
        log.warning("C-MOVE from %s to %s: %s (0xA801)", caller, destination, why)
        yield None, None  # pynetdicom answers 0xA801 Move destination unknown
        return

    matches, failure = _lookup(index, event)
    if failure is not None or matches is None:
        # A status needs a destination first (see the module docstring): Verification only.
        yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield failure, None
        return

    captured: list[Any] = []
    handlers = [
        (evt.EVT_CONN_OPEN, _no_delay),
        (evt.EVT_ESTABLISHED, lambda e: captured.append(e.assoc)),
    ]
    log.info("C-MOVE from %s to %s (%s:%d): %d instance(s)",
             caller, peer.ae_title, peer.host, peer.port, len(matches))
    yield peer.host, peer.port, {"contexts": storage_contexts(matches) or [build_context(Verification)],
                                 "evt_handlers": handlers}
    yield len(matches)
    # pynetdicom opens the sub-association between our yields; EVT_ESTABLISHED hands it to us
    # so each instance can be shaped for the contexts the destination accepted.
    yield from _sub_operations(event, matches, Sender(blobs),
                               lambda: captured[0] if captured else None, peer.ae_title)


def handle_get(event: evt.Event, index: Index, blobs: BlobStore, registry: AERegistry) -> Iterator[Any]:
    """EVT_C_GET (PS3.4 C.4.3): number of sub-operations, then the datasets on this association."""
    caller = _calling_ae(event)
    try:
        allowed = registry.may_retrieve(caller)
    except PacsError as exc:
        log.error("C-GET from %s: registry unavailable: %s", caller, exc)
        allowed = True
    if not allowed:
        log.warning("C-GET from %s refused: may not retrieve (0x0124)", caller)
        yield 1
        yield _status(NOT_AUTHORIZED, f"{caller} may not retrieve"), None
        return
    matches, failure = _lookup(index, event)
    if failure is not None or matches is None:
        yield 1
        yield failure, None
        return
    log.info("C-GET from %s: %d instance(s)", caller, len(matches))
    yield len(matches)
    yield from _sub_operations(event, matches, Sender(blobs), lambda: event.assoc, caller)


def bind_retrieve_handlers(index: Index, blobs: BlobStore, settings: Settings) -> list[Any]:
    """(event, handler, args) for EVT_C_MOVE and EVT_C_GET."""
    registry = AERegistry(index, settings.remote_aes)
    return [
        (evt.EVT_C_MOVE, handle_move, [index, blobs, registry]),
        (evt.EVT_C_GET, handle_get, [index, blobs, registry]),
    ]
