"""WADO-RS content negotiation and the STOW-RS response data set (pure: no Flask, no I/O).

Negotiation (PS3.18 8.7.3, 8.7.4): the Accept header lists acceptable representations in
order of preference; for each stored instance (or frame) we take the first one we can
produce, either as stored or, when the client names an uncompressed transfer syntax,
decompressed. Nothing acceptable is a 406 raised by the caller before any byte is sent.

Defaults of this archive (documented in the README):

- instances: ``transfer-syntax`` absent or ``*`` = as stored, byte for byte (no transcoding
  unless asked; PS3.18 8.7.3.5.2 lets the origin server pick when ``*`` is given);
- frames: ``type`` absent or ``*/*`` = as stored, in the frame's own media type
  (``image/jp2``, ``image/jls``, … or ``application/octet-stream`` for native pixels);
  ``application/octet-stream`` without a transfer syntax = uncompressed little endian
  (decoded when stored compressed); ``application/octet-stream; transfer-syntax=*`` = the
  stored bytes, whatever they are (what OHIF asks for).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pacs.multipart import MediaType, parse_accept
from pacs.pixeldata import (
    EXPLICIT_LE, FRAME_MEDIA_TYPES, MEDIA_TYPE_ALIASES, NATIVE_TARGETS, can_decode, media_type_of,
)

DICOM = "application/dicom"
OCTET = "application/octet-stream"
_ANY = ("*/*", "*")


@dataclass(frozen=True)
class Offer:
    """One representation the client accepts."""

    multipart: bool
    media_type: str
    #: None = not given; "*" = any; else a transfer syntax UID.
    transfer_syntax: str | None = None


def offers(accept: str | None, default_type: str) -> list[Offer]:
    """The client's acceptable representations, best first (``MultipartError`` if malformed).

    ``multipart/related`` without ``type`` means ``default_type`` (PS3.18 8.7.3.5.1);
    ``*/*`` alone means multipart of ``default_type``.
    """
    out: list[Offer] = []
    for r in parse_accept(accept):
        ts = r.params.get("transfer-syntax")
        if r.type == "multipart/related":
            inner = r.params.get("type", default_type).strip().lower() or default_type
            out.append(Offer(True, MEDIA_TYPE_ALIASES.get(inner, inner), ts))
        elif r.type in _ANY or r.type == "multipart/*":
            out.append(Offer(True, "*/*", ts))
        else:
            out.append(Offer(False, MEDIA_TYPE_ALIASES.get(r.type, r.type), ts))
    return out


def _covers(media_type: str, wanted: str) -> bool:
    return MediaType(media_type).matches(wanted)


@dataclass(frozen=True)
class InstanceChoice:
    """How to send one instance: multipart or not, and the target syntax (None = as stored)."""

    multipart: bool
    target: str | None


def choose_instance(options: Sequence[Offer], stored: str, *, single_ok: bool) -> InstanceChoice | None:
    """The first acceptable representation of an instance stored in ``stored``; None if none."""
    for o in options:
        if not _covers(o.media_type, DICOM) or (not o.multipart and not single_ok):
            continue
        ts = o.transfer_syntax
        if ts in (None, "*") or ts == stored:
            return InstanceChoice(o.multipart, None)
        if ts in NATIVE_TARGETS and can_decode(stored):
            return InstanceChoice(o.multipart, ts)
    return None


@dataclass(frozen=True)
class FrameChoice:
    """How to send frames: multipart or not, part media type, its syntax, and whether to decode."""

    multipart: bool
    media_type: str
    transfer_syntax: str
    decode: bool

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def choose_frames(options: Sequence[Offer], stored: str, native: bool, *, single_ok: bool) -> FrameChoice | None:
    """The first acceptable representation of frames stored in ``stored`` (PS3.18 8.7.3.5.2)."""
    stored_media = OCTET if native else media_type_of(stored)
    for o in options:
        if not o.multipart and not single_ok:
            continue
        ts, mt = o.transfer_syntax, o.media_type
        if mt == OCTET:
            if ts == "*" or (ts == stored and not native):
                return FrameChoice(o.multipart, OCTET, stored if not native else EXPLICIT_LE, False)
            if ts in (None, EXPLICIT_LE):
                if native:
                    return FrameChoice(o.multipart, OCTET, EXPLICIT_LE, False)
                if can_decode(stored):
                    return FrameChoice(o.multipart, OCTET, EXPLICIT_LE, True)
            continue
        if _covers(mt, stored_media) and ts in (None, "*", stored if not native else EXPLICIT_LE):
            return FrameChoice(o.multipart, stored_media, stored if not native else EXPLICIT_LE, False)
        if mt in _ANY and ts == EXPLICIT_LE and can_decode(stored):
            return FrameChoice(o.multipart, OCTET, EXPLICIT_LE, not native)
    return None


def frame_media_types(stored: str, native: bool) -> str:
    """What a frame can be had as, for a 406 message."""
    kinds = [f"{OCTET} (uncompressed)"]
    if not native:
        kinds.insert(0, f"{FRAME_MEDIA_TYPES.get(stored, OCTET)} (as stored, transfer syntax {stored})")
    return ", ".join(kinds)


def choose_bulk(options: Sequence[Offer], *, single_ok: bool) -> bool | None:
    """True (multipart) / False (single part) for bulk data as ``application/octet-stream``; None if refused."""
    for o in options:
        if (o.multipart or single_ok) and _covers(o.media_type, OCTET):
            return o.multipart
    return None


def accepts_json(accept: str | None) -> bool:
    """True if the client takes ``application/dicom+json`` (or plain JSON) (PS3.18 8.7.5)."""
    return any(r.matches("application/dicom+json") or r.matches("application/json")
               for r in parse_accept(accept) if r.type != "multipart/related")


# -- STOW-RS ----------------------------------------------------------------------------

#: FailureReason (0008,1197) values (PS3.18 Table 10.5.3-3; PS3.4 Annex B statuses).
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
STUDY_MISMATCH = 0xA900  # the instance's Study Instance UID is not the one of the URL
#: WarningReason (0008,1196): the sent copy was discarded, the first one kept (policy keep-first).
ELEMENTS_DISCARDED = 0xB006


@dataclass(frozen=True)
class StowOutcome:
    """What happened to one part of a STOW-RS request."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    warning: int | None = None
    retrieve_url: str = ""


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(outcomes: Sequence[StowOutcome], study_url: str) -> tuple[int, dict[str, Any]]:
    """HTTP status and response data set of a STOW-RS request (PS3.18 10.5.3, Table 10.5.3-1).

    200: every instance stored without warning; 202: some failed, or warnings;
    409: none stored.
    """
    referenced, failed = [], []
    for o in outcomes:
        item: dict[str, Any] = {"00081150": _ui(o.sop_class_uid), "00081155": _ui(o.sop_instance_uid)}
        if o.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [o.failure]}
            failed.append(dict(sorted(item.items())))
            continue
        if o.retrieve_url:
            item["00081190"] = {"vr": "UR", "Value": [o.retrieve_url]}
        if o.warning is not None:
            item["00081196"] = {"vr": "US", "Value": [o.warning]}
        referenced.append(dict(sorted(item.items())))
    body: dict[str, Any] = {}
    if study_url:
        body["00081190"] = {"vr": "UR", "Value": [study_url]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if not referenced:
        return 409, body
    if failed or any(o.warning is not None for o in outcomes):
        return 202, body
    return 200, body
