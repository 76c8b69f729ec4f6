"""C-FIND SCP for the Patient Root and Study Root Query/Retrieve models (PS3.4 C.4.1).

A thin edge: decode the identifier, hand it to :mod:`pacs.store.query`, answer one pending
response per matching entity at the queried level, then let pynetdicom send the final
success. Domain errors become failure statuses here, once.

:func:`answer` defines each answer as a pydicom ``Dataset``; on the wire the same bytes are
written straight from the index row by :mod:`pacs.scp.fastfind`, which falls back to
:func:`answer` for anything it does not cover.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pynetdicom import _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pacs.config import Settings
from pacs.errors import InvalidQuery, StorageUnavailable
from pacs.scp import fastfind
from pacs.store.index import Index
from pacs.store.query import FindQuery, FindStream, Model

log = logging.getLogger(__name__)

# pynetdicom logs every C-FIND identifier at INFO: it holds patient names, which we never log.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# Pending answers are encoded from their index rows and sent one PDU each (pacs.scp.fastfind).
fastfind.install()

PENDING = 0xFF00
CANCEL = 0xFE00
# PS3.4 C.4.1.1.4, Table C.4-1 (failure statuses of C-FIND):
#   0xA900 "Identifier does not match SOP Class": the identifier does not fit the
#          information model of the SOP Class - no/unknown QueryRetrieveLevel, a level the
#          model lacks (PATIENT in Study Root), a missing unique key of a higher level in a
#          hierarchical query (C.4.1.3.1).
#   0xC000-0xCFFF "Unable to process": the identifier fits the model but a value cannot be
#          used (a malformed date range, a UID with a wildcard). 0xC000 is the generic one.
#   0xA700 "Out of resources": the index cannot be reached right now.
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700

MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): Model.PATIENT_ROOT,
    str(StudyRootQueryRetrieveInformationModelFind): Model.STUDY_ROOT,
}

_CHARSET = 0x00080005
_LEVEL = 0x00080052


def find_contexts() -> list[str]:
    """Abstract syntaxes the C-FIND SCP supports (add with the usual transfer syntaxes)."""
    return [str(PatientRootQueryRetrieveInformationModelFind),
            str(StudyRootQueryRetrieveInformationModelFind)]


def _failure(code: int, comment: str, tag: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    # Error Comment (0000,0902) is LO: at most 64 characters, ASCII here (no charset in a command).
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    if tag is not None:
        ds.OffendingElement = [tag]
    return ds


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def identifier_keys(identifier: Dataset) -> dict[str, str]:
    """Top-level keys of a C-FIND identifier as decoded text (by its SpecificCharacterSet)."""
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.tag in (_CHARSET, _LEVEL) or not elem.keyword or elem.VR == "SQ":
            continue
        keys[elem.keyword] = _text(elem.value).strip()
    return keys


def answer(identifier: Dataset, row: dict[str, Any], level: str, settings: Settings) -> Dataset:
    """One pending identifier: every requested key, filled when known, empty otherwise."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # values are UTF-8 (PS3.5 6.1.2.3)
    for elem in identifier:
        tag = elem.tag
        if tag == _CHARSET or tag.element == 0 or tag.group in (0x0000, 0x0002):
            continue
        if tag == _LEVEL:
            ds.QueryRetrieveLevel = level
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = elem.VR or "UN"
        if vr == "SQ":
            ds.add_new(tag, "SQ", [])
            continue
        keyword = elem.keyword
        if keyword in row:
            value = row[keyword]
        elif keyword == "RetrieveAETitle":
            value = settings.ae_title  # C.4.1.1.3.2: where to C-MOVE / C-GET it from
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        else:
            value = None
        ds.add_new(tag, vr, _encode(value, vr))
    for keyword, value in row.items():  # the level's unique key, even if not asked for
        if keyword not in ds:
            setattr(ds, keyword, _encode(value, dictionary_VR(keyword)))
    if "QueryRetrieveLevel" not in ds:
        ds.QueryRetrieveLevel = level
    return ds


def _encode(value: Any, vr: str) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return value or None
    if vr in ("US", "UL", "SS", "SL"):
        return int(value)
    return str(value)


def handle_find(
    event: evt.Event, index: Index, settings: Settings,
) -> Iterator[tuple[int | Dataset, Dataset | fastfind.EncodedIdentifier | None]]:
    """EVT_C_FIND: yield ``(0xFF00, identifier)`` per match; failures as status datasets."""
    assoc = event.assoc
    peer = f"{str(assoc.requestor.ae_title).strip()}@{assoc.requestor.address}"
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    if model is None:  # only reachable if a context was added without a model here
        yield _failure(IDENTIFIER_MISMATCH, "unsupported query model"), None
        return
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        keys = identifier_keys(identifier)
    except Exception as exc:  # noqa: BLE001 - an identifier pydicom cannot decode
        log.warning("C-FIND from %s: cannot decode the identifier: %s", peer, exc)
        yield _failure(UNABLE_TO_PROCESS, f"cannot decode identifier: {exc}"), None
        return
    limit = settings.find_limit or None
    try:
        query = FindQuery.parse(level, model, keys)
        rows = FindStream(index.engine, query, limit=limit)
    except InvalidQuery as exc:
        code = IDENTIFIER_MISMATCH if exc.structural else UNABLE_TO_PROCESS
        tag = _tag_of(exc.keyword)
        log.warning("C-FIND from %s refused (0x%04X): %s", peer, code, exc)
        yield _failure(code, str(exc), tag), None
        return
    # Rows are answered as the index produces them (FindStream): the SCU reads the first
    # answers while the database is still computing the rest. One plan per request, made
    # from the first row, encodes each answer straight from its row; the writer sends them
    # a few per write (fastfind.AnswerWriter). An answer the plan or the writer cannot take
    # is yielded to pynetdicom (pydicom-encoded, fragmented if need be) after what was
    # written, and the rest follow it that way, so the order never changes.
    plan: fastfind.IdentifierPlan | None = None
    writer = fastfind.AnswerWriter.for_event(event)
    try:
        for row in rows:
            # C-CANCEL (PS3.7 9.3.2.3): stop between answers and end with Cancel.
            if event.is_cancelled:
                if writer is not None:
                    writer.flush()
                log.info("C-FIND from %s cancelled after %d answer(s)", peer, rows.count - 1)
                yield CANCEL, None
                return
            if rows.count == 1:
                plan = fastfind.IdentifierPlan.build(identifier, row, level, settings.ae_title)
            if writer is not None:
                if writer.closed:  # the peer is gone: pynetdicom sends nothing more either
                    log.info("C-FIND from %s: association ended after %d answer(s)", peer, writer.sent)
                    return
                data = plan.encode_or_none(row, writer.explicit) if plan is not None else None
                if data is not None and writer.add(data):
                    continue
                writer.flush()
                writer = None
            if plan is None:
                yield PENDING, answer(identifier, row, level, settings)
            else:
                yield PENDING, plan.answer(row, partial(answer, identifier, row, level, settings))
    except StorageUnavailable as exc:
        # Before any answer, or part-way (PS3.4 C.4.1.1.4: a failure may follow pendings).
        if writer is not None:
            writer.flush()
        log.error("C-FIND from %s: %s", peer, exc)
        yield _failure(OUT_OF_RESOURCES, "index unavailable, retry later"), None
        return
    if writer is not None:
        writer.flush()  # before pynetdicom's final response
    log.info("C-FIND %s %s from %s: %d match(es)%s", model.value, level, peer, rows.count,
             " (truncated)" if rows.more else "")
    if rows.more:
        # The first find_limit matches were answered; the final status stays Success.
        # PS3.4's "response limit reached" warning (0xB001) would be the natural final
        # status, but pynetdicom 3.0.4 treats a warning from a C-FIND handler as non-final
        # and sends a second final response (0x0000) after it, which an SCU reads as a
        # protocol error. So the truncation is logged here, and a client can narrow its query.
        log.warning("C-FIND from %s: more than %d matches, answered the first %d (find_limit)",
                    peer, limit, limit)


def _tag_of(keyword: str) -> int | None:
    if not keyword:
        return None
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)
