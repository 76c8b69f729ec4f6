"""Shared study links (``/s/<token>``): opening a study without an account, and managing links.

The link's own URLs::

    GET  /s/{token}                  the viewer for the link's study (or its PIN form)
    POST /s/{token}/pin              form field ``pin`` (+ CSRF): proves the PIN for this browser
    GET  /s/{token}/download         the study (or series subset) as a ZIP with a DICOMDIR
    GET  /s/{token}/notes            consultation notes left through this link
    POST /s/{token}/notes            JSON ``{author, text}``: a new note

and, mirrored under the prefix, the viewer's URLs: ``/s/{token}/api/…`` and
``/s/{token}/dicomweb/…`` run the normal views of :mod:`pacs.web.ui`, :mod:`pacs.web.rendered`
and :mod:`pacs.web.dicomweb` (see :data:`MIRRORED`) after :class:`LinkPaths` has taken the
prefix off. Before any of them runs, :func:`guard` (called by the sign-in guard in
:mod:`pacs.web.auth` in place of a user) resolves the link (unknown: 404, expired or revoked:
410, the same page whatever the study), checks the PIN proof, and checks the scope: the
study in the path must be the link's, the series one the link reaches, and the instance one
the *index* places in that series. Anything else under a link is 404.

De-identified links (PS3.15 Annex E Basic Profile, :mod:`pacs.deid`) show only pseudonymous
UIDs, derived from the link's secret salt; incoming UIDs are mapped back through a
per-link table (:class:`_Scopes`). Every JSON answer, tag list, DICOM file and ZIP through
such a link is made from the de-identified header; rendered pixels are left as they are.

Signed-in users (role with the ``share`` capability) manage links::

    POST /api/studies/{study}/shares     JSON {days, pin, deidentify, download, notes, series, label}
    GET  /api/studies/{study}/shares     the study's links
    POST /api/shares/{id}/revoke
    GET  /api/studies/{study}/notes      every note left on the study's links
    GET  /admin/shares                   all active links (admin), with revoke buttons

Page opens, downloads, DICOMweb retrieves, notes and wrong PINs through a link are audit
events (``share-*``, user ``share:<id>``): time, link, address and user agent; never the
token, never patient names.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import segno
from flask import (
    Blueprint, Flask, Response, abort, current_app, g, jsonify, redirect, render_template, request,
    session,
)
from pydicom import dcmread
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from pacs import __version__
from pacs.deid import Deidentifier
from pacs.dicomjson import MEDIA_TYPE as DICOM_JSON
from pacs.errors import NotFound
from pacs.frames import HEADER_BYTES_ESTIMATE
from pacs.export import study_zip
from pacs.multipart import Part
from pacs.services import open_shares
from pacs.store.index import Index, InstanceRecord
from pacs.store.models import Patient, Study
from pacs.store.shares import Note, PinRequired, Share, ShareError, ShareGone
from pacs.store.worklist import study_detail
from pacs.wado import DICOM, choose_instance
from pacs.web import dicomweb, rendered, ui
from pacs.web.auth import UNSAFE, _csrf_ok, require
from pacs.web.services import frames as _frames
from pacs.web.services import index as _index
from pacs.web.services import services as _pacs
from pacs.web.services import settings as _settings
from pacs.web.services import shares as _shares
from pacs.web.services import users as _users

bp = Blueprint("share", __name__, template_folder=str(ui.VIEWER_DIR / "templates"))

#: WSGI environ keys set by :class:`LinkPaths` (the sign-in guard looks for TOKEN_KEY).
TOKEN_KEY = "pacs.share.token"
PREFIX_KEY = "pacs.share.prefix"
#: First path segments that are the viewer's URLs mirrored under ``/s/<token>``.
MIRROR_ROOTS = ("api", "dicomweb")
#: The normal views a link may reach (GET only), by endpoint; everything else is 404.
MIRRORED = frozenset({
    "ui.api_study", "ui.api_meta", "ui.api_tags", "ui.api_roi",
    "rendered.pixel_value", "rendered.instance_info", "rendered.instance_rendered",
    "rendered.frame_rendered", "rendered.instance_thumbnail", "rendered.frame_thumbnail",
    "rendered.series_thumbnail", "rendered.study_thumbnail",
    "dicomweb.study_metadata", "dicomweb.series_metadata", "dicomweb.instance_metadata",
    "dicomweb.retrieve_study", "dicomweb.retrieve_series", "dicomweb.retrieve_instance",
    "dicomweb.retrieve_frames", "dicomweb.retrieve_bulkdata",
})
#: The link's own views (the PIN form and the page check the PIN themselves).
OWN = frozenset({"share.link_page", "share.link_pin", "share.link_download", "share.link_notes",
                 "share.link_add_note"})
#: Pixel data bulk data paths (PS3.18 10.4.1.1.5): the only bulk data a de-identified link serves.
PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")
#: Links whose PIN this browser has proven, kept in the signed session cookie.
PIN_SESSION_KEY = "share_pins"
MAX_PROVEN = 20
MAX_NOTES_PER_LINK = 200
MAX_LABEL = 128
#: Seconds before a link's UID table may be rebuilt on a miss (a series may arrive late).
SCOPE_REFRESH = 5.0
#: Seconds a link's table is used at all: a late series then shows up in the viewer and ZIP too.
SCOPE_MAX_AGE = 60.0
SCOPE_CACHE_SIZE = 64
#: Sent with every answer through a link: the token is in the URL, so no Referer may carry it
#: to another site, and search engines must not index it.
LINK_HEADERS = {"Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex, nofollow"}

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "gone_title": "Link no longer available",
        "gone": "This shared link has expired or has been revoked. Ask the person who sent it for a new one.",
        "missing_title": "Link not found",
        "missing": "This link does not exist. Check that it was copied completely.",
        "pin_title": "PIN required", "pin_label": "PIN", "pin_submit": "Open",
        "pin_help": "The person who shared this study gave you a PIN with the link.",
        "pin_wrong": "Wrong PIN.", "pin_locked": "Too many wrong PINs. Try again in 15 minutes.",
        "shares": "Share links", "admin": "Admin", "audit": "Audit log", "users": "Users",
        "worklist": "Worklist", "study": "Study", "patient": "Patient", "label": "Label",
        "creator": "Created by", "created": "Created", "expires": "Expires (UTC)",
        "views": "Views", "last": "Last access (UTC)", "options": "Options", "revoke": "Revoke",
        "none": "No active links.", "deid": "de-identified", "download": "download",
        "notes": "notes", "pin": "PIN", "subset": "series",
    },
    "vi": {
        "gone_title": "Liên kết không còn hiệu lực",
        "gone": "Liên kết chia sẻ này đã hết hạn hoặc đã bị thu hồi. Vui lòng xin người gửi một liên kết mới.",
        "missing_title": "Không tìm thấy liên kết",
        "missing": "Liên kết này không tồn tại. Vui lòng kiểm tra đã sao chép đầy đủ chưa.",
        "pin_title": "Cần mã PIN", "pin_label": "Mã PIN", "pin_submit": "Mở",
        "pin_help": "Người chia sẻ ca chụp này đã gửi kèm mã PIN cùng liên kết.",
        "pin_wrong": "Sai mã PIN.", "pin_locked": "Nhập sai quá nhiều lần. Vui lòng thử lại sau 15 phút.",
        "shares": "Liên kết chia sẻ", "admin": "Quản trị", "audit": "Nhật ký truy cập",
        "users": "Người dùng", "worklist": "Danh sách ca chụp", "study": "Ca chụp",
        "patient": "Bệnh nhân", "label": "Nhãn", "creator": "Người tạo", "created": "Tạo lúc",
        "expires": "Hết hạn (UTC)", "views": "Lượt xem", "last": "Truy cập gần nhất (UTC)",
        "options": "Tùy chọn", "revoke": "Thu hồi", "none": "Không có liên kết nào đang hoạt động.",
        "deid": "ẩn danh", "download": "tải về", "notes": "ghi chú", "pin": "PIN", "subset": "loạt ảnh",
    },
}


# -- services -----------------------------------------------------------------------------


def _share() -> Share:
    return g.share  # type: ignore[no-any-return]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lang() -> str:
    return ui._page_lang()


def link_path(token: str) -> str:
    return f"/s/{token}"


def link_url(token: str) -> str:
    """The link as shown to its creator: absolute when ``public_url`` is set, else a path."""
    base = _settings().public_url.rstrip("/")
    return base + link_path(token)


def qr_svg(url: str) -> str:
    """The URL as an inline SVG QR code (dark on white, so phones read it on a dark page too)."""
    return str(segno.make(url, error="m").svg_inline(scale=4, border=2, dark="#000", light="#fff",
                                                     svgclass="share-qr"))


def _audit(action: str, share: Share, detail: str = "") -> None:
    """A link access in the audit log: the link (not the token), address, user agent, study UID."""
    _users().audit(action, username=f"share:{share.id}", study=share.study_instance_uid,
                   address=request.remote_addr or "", user_agent=request.user_agent.string,
                   detail=detail)


# -- the prefix ---------------------------------------------------------------------------


class LinkPaths:
    """WSGI middleware: marks ``/s/<token>…`` requests and takes the prefix off mirrored URLs.

    ``/s/<token>/api/…`` and ``/s/<token>/dicomweb/…`` are routed as ``/api/…`` and
    ``/dicomweb/…`` (the same views as for a signed-in user); the link's own URLs
    (``/s/<token>``, ``…/pin``, ``…/download``, ``…/notes``) keep their path. Nothing is
    decided here: :func:`guard` checks the link, its PIN and its scope before any view runs.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path: str = environ.get("PATH_INFO", "")
        if path.startswith("/s/"):
            token, _, rest = path[3:].partition("/")
            environ[TOKEN_KEY] = token
            if rest.split("/", 1)[0] in MIRROR_ROOTS:
                environ[PREFIX_KEY] = link_path(token)
                environ["PATH_INFO"] = "/" + rest
        return self.app(environ, start_response)


# -- scope: which UIDs a link reaches -------------------------------------------------------


@dataclass
class _Scope:
    """What one link reaches, from the index; pseudonym tables for de-identified links."""

    built: float
    series: frozenset[str]
    records: list[InstanceRecord]
    to_original: dict[str, str] = field(default_factory=dict)
    to_pseudonym: dict[str, str] = field(default_factory=dict)


class _Scopes:
    """Per-process, bounded cache of :class:`_Scope` by link id (rebuilt on a miss, rate-limited).

    Only a cache: the index stays the truth, so every node answers every link the same.
    """

    def __init__(self, size: int = SCOPE_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[int, _Scope] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, share: Share, index: Index, *, refresh: bool = False) -> _Scope:
        with self._lock:
            scope = self._items.get(share.id)
            if scope is not None:
                self._items.move_to_end(share.id)
        age = time.monotonic() - scope.built if scope is not None else 0.0
        if scope is not None and age < SCOPE_MAX_AGE and not (refresh and age > SCOPE_REFRESH):
            return scope
        scope = self._build(share, index)
        with self._lock:
            self._items[share.id] = scope
            self._items.move_to_end(share.id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return scope

    def drop(self, share_id: int) -> None:
        with self._lock:
            self._items.pop(share_id, None)

    @staticmethod
    def _build(share: Share, index: Index) -> _Scope:
        study = share.study_instance_uid
        records = [r for r in index.instances_of(study) if share.allows(study, r.series_instance_uid)]
        scope = _Scope(time.monotonic(), frozenset(r.series_instance_uid for r in records), records)
        if share.deidentify:
            deid = Deidentifier(share.uid_salt)
            originals = [study, *scope.series, *(r.sop_instance_uid for r in records)]
            for uid in originals:
                pseudo = deid.uid(uid)
                scope.to_original[pseudo] = uid
                scope.to_pseudonym[uid] = pseudo
        return scope


def _scopes() -> _Scopes:
    return _pacs()["share_scopes"]  # type: ignore[no-any-return]


def _scope(share: Share) -> _Scope:
    return _scopes().get(share, _index())


def _pseudonym(share: Share, uid: str) -> str:
    """The UID as this link shows it (itself unless the link is de-identified)."""
    if not share.deidentify:
        return uid
    scope = _scope(share)
    return scope.to_pseudonym.get(uid) or Deidentifier(share.uid_salt).uid(uid)


def _original(share: Share, uid: str) -> str | None:
    """The real UID behind one the link's viewer sent (None if the link knows no such UID)."""
    if not share.deidentify:
        return uid
    found = _scope(share).to_original.get(uid)
    if found is None:
        found = _scopes().get(share, _index(), refresh=True).to_original.get(uid)
    return found


def _series_allowed(share: Share, series: str) -> bool:
    """True if the index places ``series`` in the link's study, within its subset."""
    if series in _scope(share).series:
        return True
    return series in _scopes().get(share, _index(), refresh=True).series


def _records(share: Share, series: str | None = None, sop: str | None = None) -> list[InstanceRecord]:
    """The link's instances (of one series, or one instance), in reading order; NotFound if none."""
    records = _scope(share).records
    if series is not None:
        records = [r for r in records if r.series_instance_uid == series]
    if sop is not None:
        records = [r for r in records if r.sop_instance_uid == sop]
    if not records and (series is not None or sop is not None):
        records = [r for r in _scopes().get(share, _index(), refresh=True).records
                   if (series is None or r.series_instance_uid == series)
                   and (sop is None or r.sop_instance_uid == sop)]
    if not records:
        raise NotFound("no such " + ("instance" if sop else "series" if series else "study"))
    return records


# -- the guard ------------------------------------------------------------------------------


def _wants_json() -> bool:
    return PREFIX_KEY in request.environ or request.endpoint in ("share.link_notes", "share.link_add_note")


def _gone_page(status: int) -> Any:
    """404 or 410: one page each, the same whatever the link's study (it tells nothing of it)."""
    lang = _lang()
    t = TEXT[lang]
    if _wants_json():
        message = t["missing"] if status == 404 else t["gone"]
        return jsonify(error=TEXT["en"]["missing" if status == 404 else "gone"], message=message), status
    title, text = (t["missing_title"], t["missing"]) if status == 404 else (t["gone_title"], t["gone"])
    body = render_template("share_gone.html", lang=lang, title=title, text=text, status=status)
    return body, status, {"Cache-Control": "no-store"}


def _not_found() -> Any:
    return jsonify(error="not found"), 404


def _pin_proven(share: Share) -> bool:
    return not share.has_pin or share.id in session.get(PIN_SESSION_KEY, [])


def guard() -> Any:
    """Before every ``/s/<token>…`` request (from the sign-in guard): link, PIN, allow-list, scope."""
    token = request.environ.get(TOKEN_KEY, "")
    try:
        share = _shares().resolve(token)
    except NotFound:
        return _gone_page(404)
    except ShareGone:
        return _gone_page(410)
    g.share, g.user = share, None
    g.share_base = link_path(token)
    endpoint = request.endpoint
    mirrored = PREFIX_KEY in request.environ
    if (endpoint not in MIRRORED if mirrored else endpoint not in OWN):
        return _not_found()
    if mirrored and request.method not in ("GET", "HEAD"):
        return _not_found()
    if request.method in UNSAFE and not _csrf_ok():
        abort(403, description="missing or wrong CSRF token")
    if endpoint not in ("share.link_page", "share.link_pin") and not _pin_proven(share):
        # The viewer's script goes back to the link (its PIN form) on a 401.
        if mirrored or _wants_json():
            return jsonify(error="this link needs its PIN: open the link again"), 401
        return redirect(g.share_base)
    if mirrored:
        return _in_scope(share, endpoint or "")
    return None


def _in_scope(share: Share, endpoint: str) -> Any:
    """Map pseudonyms back, refuse anything outside the link, then run (or replace) the view."""
    args = request.view_args if request.view_args is not None else {}
    for key in ("study", "series", "sop"):
        if key in args:
            original = _original(share, str(args[key]))
            if original is None:
                return _not_found()
            args[key] = original
    study, series, sop = args.get("study"), args.get("series"), args.get("sop")
    if study != share.study_instance_uid:
        return _not_found()
    if series is not None and not _series_allowed(share, series):
        return _not_found()
    if sop is not None:
        # The index, not the path, says where the instance is (NotFound unless in that series).
        _frames().record(study, series, sop)
    if endpoint == "dicomweb.retrieve_bulkdata" and share.deidentify:
        if str(args.get("tags", "")).strip("/").upper() not in PIXEL_TAGS:
            return _not_found()  # other bulk data is header content: not through this link
    override = OVERRIDES.get(endpoint)
    if override is None or (endpoint in DEID_ONLY and not share.deidentify):
        return None
    return override(share, **args)


# -- what a link shows ----------------------------------------------------------------------


def _deid_header(share: Share, rec: InstanceRecord) -> Dataset:
    """The instance's header (no pixel data), de-identified for this link; cached like ui's."""
    src = _frames()
    key = ("share-deid", share.id, rec.blob_key)
    ds = src.cache.get(key)
    if ds is None:
        ds = Deidentifier(share.uid_salt).dataset(copy.deepcopy(ui._header(rec)))
        src.cache.put(key, ds, HEADER_BYTES_ESTIMATE)
    return ds  # type: ignore[no-any-return]


def _text(ds: Dataset, keyword: str) -> str:
    return ui._text(ds, keyword)


#: String fields of the viewer's JSON and the header keyword each is read from on a
#: de-identified link (None: not header text, kept). Fields not listed are read by their
#: CamelCase name when that is a DICOM keyword, else blanked: a field added to the JSON
#: later says nothing rather than leak.
STUDY_TEXT: dict[str, str | None] = {
    "study_uid": None, "study_date": "StudyDate", "study_time": "StudyTime",
    "accession": "AccessionNumber", "description": "StudyDescription", "study_id": "StudyID",
    "referring_physician": "ReferringPhysicianName", "patient_id": "PatientID",
    "patient_name": "PatientName", "patient_name_display": "PatientName",
    "birth_date": "PatientBirthDate", "sex": "PatientSex",
}
SERIES_TEXT: dict[str, str | None] = {
    "series_uid": None, "modality": "Modality", "description": "SeriesDescription",
    "body_part": "BodyPartExamined",
}
INSTANCE_TEXT: dict[str, str | None] = {"sop_uid": None, "sop_class_uid": None}
META_TEXT: dict[str, str | None] = {
    "sop_uid": None, "instance_number": "InstanceNumber", "series_number": "SeriesNumber",
    "series_description": "SeriesDescription", "image_position": "ImagePositionPatient",
    "institution": "InstitutionName", "modality": "Modality",
    "photometric": "PhotometricInterpretation",
}


def _scrub(data: dict[str, Any], header: Dataset, keywords: dict[str, str | None]) -> None:
    """Replace the header text in ``data`` by the de-identified ``header``'s (see STUDY_TEXT)."""
    for key, value in list(data.items()):
        if not isinstance(value, str):
            continue
        keyword = keywords[key] if key in keywords else "".join(w.capitalize() for w in key.split("_"))
        if keyword is not None:
            data[key] = _text(header, keyword) if keyword in keyword_dict else ""


def study_json(share: Share) -> dict[str, Any]:
    """The viewer's study JSON for a link: its series only; de-identified when the link is."""
    detail = study_detail(_index().engine, share.study_instance_uid)
    if detail is None:
        raise NotFound("no such study")
    data = ui._study_json(detail)
    data["series"] = [s for s in data["series"] if share.allows(share.study_instance_uid, s["series_uid"])]
    data["modalities"] = sorted({s["modality"] for s in data["series"] if s["modality"]})
    if not share.deidentify:
        return data
    records = _scope(share).records
    h = _deid_header(share, records[0]) if records else Dataset()
    _scrub(data, h, STUDY_TEXT)
    data.update(
        study_uid=_pseudonym(share, share.study_instance_uid), deidentified=True,
        referring_physician=ui.display_name(data["referring_physician"], upper=False),
        patient_name_display=ui.display_name(data["patient_name"]),
    )
    first_of: dict[str, InstanceRecord] = {}
    for r in records:
        first_of.setdefault(r.series_instance_uid, r)
    for s in data["series"]:
        rec = first_of.get(s["series_uid"])
        _scrub(s, _deid_header(share, rec) if rec is not None else Dataset(), SERIES_TEXT)
        s["series_uid"] = _pseudonym(share, s["series_uid"])
        for i in s["instances"]:
            _scrub(i, Dataset(), INSTANCE_TEXT)
            i["sop_uid"] = _pseudonym(share, i["sop_uid"])
    return data


def _share_json(share: Share) -> dict[str, Any]:
    """What the link's page script needs about the link itself (no token, no patient data)."""
    return {"label": share.label, "expires": _iso(share.expires_at), "deidentified": share.deidentify,
            "download": share.allow_download, "notes": share.allow_notes,
            "study_uid": _pseudonym(share, share.study_instance_uid)}


def _api_study(share: Share, study: str) -> Any:
    return jsonify(study_json(share))


def _api_meta(share: Share, study: str, series: str, sop: str) -> Any:
    view: Callable[..., Any] = current_app.view_functions["ui.api_meta"]
    resp = current_app.make_response(view(study=study, series=series, sop=sop))
    data: dict[str, Any] = resp.get_json()
    _scrub(data, _deid_header(share, _frames().record(study, series, sop)), META_TEXT)
    data["sop_uid"] = _pseudonym(share, sop)
    return jsonify(data)


def _api_tags(share: Share, study: str, series: str, sop: str) -> Any:
    h = _deid_header(share, _frames().record(study, series, sop))
    elements = [ui._element(e, 0) for e in getattr(h, "file_meta", None) or Dataset()]
    elements += [ui._element(e, 0) for e in h]
    return jsonify(sop_uid=_pseudonym(share, sop), elements=elements)


def _study_thumbnail(share: Share, study: str) -> Any:
    images = [r for r in _scope(share).records if r.rows]
    if not images:
        raise NotFound("no images in this study")
    first = [r for r in images if r.series_instance_uid == images[0].series_instance_uid]
    return rendered._respond(first[len(first) // 2], 1, thumb=True)


def _dicomweb_url(share: Share, rec: InstanceRecord) -> str:
    return (f"{_settings().public_url.rstrip('/')}{g.share_base}/dicomweb/studies/"
            f"{_pseudonym(share, rec.study_instance_uid)}/series/{_pseudonym(share, rec.series_instance_uid)}"
            f"/instances/{_pseudonym(share, rec.sop_instance_uid)}")


def _metadata(share: Share, study: str, series: str | None = None, sop: str | None = None) -> Any:
    """WADO-RS metadata (PS3.18 10.4.1.1.2) of the link's instances; URLs under the link."""
    dicomweb.check_json_accept()
    records = _records(share, series, sop)
    _audit("share-metadata", share)
    pieces: list[bytes] = []
    if not share.deidentify:
        wanted = {r.sop_instance_uid for r in records}
        docs = [d for d in dicomweb._cache().documents(study, series, sop) if d.sop_instance_uid in wanted]
        pieces = dicomweb.metadata_pieces(docs, _settings().public_url.rstrip("/") + g.share_base)
    else:
        for rec in records:
            # Everything inline (no BulkDataURI): the header is small without its pixels, and
            # its binary values are the de-identified ones.
            obj = _deid_header(share, rec).to_json_dict(bulk_data_threshold=1 << 30)
            if rec.rows:
                vr = "OW" if rec.transfer_syntax_uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1") else "OB"
                obj["7FE00010"] = {"vr": vr, "BulkDataURI": _dicomweb_url(share, rec) + "/bulkdata/7FE00010"}
            pieces.append(json.dumps(dict(sorted(obj.items())), ensure_ascii=False,
                                     separators=(",", ":")).encode())
    return Response(b"[" + b",".join(pieces) + b"]", mimetype=DICOM_JSON)


def _deid_bytes(share: Share, raw: bytes) -> bytes:
    ds = Deidentifier(share.uid_salt).dataset(dcmread(io.BytesIO(raw)))
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _retrieve(share: Share, study: str, series: str | None = None, sop: str | None = None) -> Any:
    """WADO-RS instances (PS3.18 10.4.1.1.1) of the link; de-identified files when it is."""
    records = _records(share, series, sop)
    single_ok = sop is not None
    _audit("share-retrieve", share, f"{len(records)} instance(s)")
    if not share.deidentify:
        return dicomweb._retrieve(records, single_ok=single_ok)
    options = dicomweb._offers(DICOM)
    choices = []
    for rec in records:
        choice = choose_instance(options, rec.transfer_syntax_uid, single_ok=single_ok)
        if choice is None:
            abort(406, description="instances are available as multipart/related; "
                  'type="application/dicom" (as stored, or 1.2.840.10008.1.2.1)')
        choices.append(choice)
    blobs = dicomweb._blobs()

    def one(rec: InstanceRecord, target: str | None) -> bytes:
        raw = blobs.get(rec.blob_key) if target is None else dicomweb._convert(rec, target)
        return _deid_bytes(share, raw)

    if not choices[0].multipart:
        target = choices[0].target
        ts = target or records[0].transfer_syntax_uid
        return Response(one(records[0], target), headers={"Content-Type": f"{DICOM}; transfer-syntax={ts}"})

    def parts() -> Iterator[Part]:
        for rec, choice in zip(records, choices):
            yield Part(f"{DICOM}; transfer-syntax={choice.target or rec.transfer_syntax_uid}",
                       one(rec, choice.target))

    return dicomweb._multipart(parts(), DICOM)


#: Views replaced under a link (the others run as they are once the scope is checked).
OVERRIDES: dict[str, Callable[..., Any]] = {
    "ui.api_study": _api_study,
    "ui.api_meta": _api_meta,
    "ui.api_tags": _api_tags,
    "rendered.study_thumbnail": _study_thumbnail,
    "dicomweb.study_metadata": _metadata,
    "dicomweb.series_metadata": _metadata,
    "dicomweb.instance_metadata": _metadata,
    "dicomweb.retrieve_study": _retrieve,
    "dicomweb.retrieve_series": _retrieve,
    "dicomweb.retrieve_instance": _retrieve,
}
#: ... of which these only for de-identified links.
DEID_ONLY = frozenset({"ui.api_meta", "ui.api_tags"})


# -- the link's own pages -------------------------------------------------------------------


def _pin_page(token: str, error: str, status: int) -> Any:
    lang = _lang()
    body = render_template("share_pin.html", lang=lang, t=TEXT[lang], action=f"{link_path(token)}/pin",
                           error=error)
    return body, status, {"Cache-Control": "no-store"}


@bp.get("/s/<token>")
def link_page(token: str) -> Any:
    """The viewer, scoped to the link's study (or the PIN form first)."""
    share = _share()
    if not _pin_proven(share):
        return _pin_page(token, "", 200)
    try:
        data = study_json(share)
    except NotFound:
        return _gone_page(404)  # the study was deleted: the same page as an unknown link
    _shares().record_access(share)
    _audit("share-open", share)
    body = render_template(
        "viewer.html", lang=_lang(), user=None, study=data["study_uid"], study_json=data,
        version=__version__, base=link_path(token), share=_share_json(share))
    return body, 200, {"Cache-Control": "no-store"}


@bp.post("/s/<token>/pin")
def link_pin(token: str) -> Any:
    share = _share()
    if share.has_pin:
        t = TEXT[_lang()]
        try:
            _shares().check_pin(share, request.form.get("pin", "")[:32])
        except PinRequired as exc:
            _audit("share-pin-failed", share, "locked" if exc.locked else "wrong PIN")
            return _pin_page(token, t["pin_locked"] if exc.locked else t["pin_wrong"],
                             429 if exc.locked else 403)
        proven = [i for i in session.get(PIN_SESSION_KEY, []) if i != share.id]
        session[PIN_SESSION_KEY] = [*proven[-(MAX_PROVEN - 1):], share.id]
    return redirect(link_path(token))


@bp.get("/s/<token>/download")
def link_download(token: str) -> Any:
    """The link's instances as a ZIP with a DICOMDIR, streamed; de-identified when the link is."""
    share = _share()
    if not share.allow_download:
        abort(403, description="this link does not allow downloading")
    records = _records(share)
    blobs = dicomweb._blobs()
    transform = Deidentifier(share.uid_salt).dataset if share.deidentify else None

    def instances() -> Iterator[bytes]:
        for rec in records:
            yield blobs.get(rec.blob_key)

    _shares().record_access(share)
    _audit("share-download", share, f"{len(records)} instance(s)")
    # The file name says nothing about the patient (PS3.15 E.1: no identity outside the files).
    name = f"study-{share.id}{'-anon' if share.deidentify else ''}.zip"
    return Response(study_zip(instances(), transform=transform), mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-store"})


def _note_json(note: Note) -> dict[str, Any]:
    return {"author": note.author, "text": note.text, "created": _iso(note.at)}


@bp.get("/s/<token>/notes")
def link_notes(token: str) -> Any:
    share = _share()
    if not share.allow_notes:
        abort(403, description="this link does not take notes")
    return jsonify(notes=[_note_json(n) for _, n in _shares().notes(share_id=share.id)])


@bp.post("/s/<token>/notes")
def link_add_note(token: str) -> Any:
    share = _share()
    if not share.allow_notes:
        abort(403, description="this link does not take notes")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("author", ""), str) \
            or not isinstance(body.get("text", ""), str):
        raise ShareError("send JSON {\"author\": name, \"text\": opinion}")
    if len(body.get("author", "")) > MAX_LABEL:
        raise ShareError(f"a name is at most {MAX_LABEL} characters")
    if _shares().note_count(share.id) >= MAX_NOTES_PER_LINK:
        abort(429, description="this link has taken as many notes as it can")
    note = _shares().add_note(share, body.get("author", ""), body.get("text", ""))
    _audit("share-note", share)
    return jsonify(note=_note_json(note)), 201


# -- managing links (signed in) -------------------------------------------------------------


def _study_exists(study: str) -> bool:
    with _index().session() as s:
        return s.execute(select(Study.id).where(Study.study_instance_uid == study)).first() is not None


def _link_json(share: Share, now: datetime) -> dict[str, Any]:
    return {
        "id": share.id, "label": share.label, "creator": share.created_by,
        "created": _iso(share.created_at), "expires": _iso(share.expires_at),
        "state": share.state(now), "views": share.views, "last_access": _iso(share.last_access_at),
        "deidentify": share.deidentify, "download": share.allow_download, "notes": share.allow_notes,
        "series": list(share.series_uids), "pin": share.has_pin,
    }


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ShareError(f"{name} must be true or false")
    return value


@bp.post("/api/studies/<study>/shares")
@require("share")
def create_share(study: str) -> Any:
    """A new link for ``study``; the token is in this answer only (the index keeps its hash)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ShareError("send a JSON object")
    days = body.get("days")
    if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))):
        raise ShareError("days must be a number")
    pin = body.get("pin") or ""
    label = body.get("label") or ""
    series = body.get("series") or []
    if not isinstance(pin, str) or not isinstance(label, str):
        raise ShareError("pin and label are text")
    if not isinstance(series, list) or not all(isinstance(u, str) and u for u in series):
        raise ShareError("series is a list of Series Instance UIDs")
    if len(label) > MAX_LABEL:
        raise ShareError(f"a label is at most {MAX_LABEL} characters")
    user = g.user
    token, share = _shares().create(
        study, created_by=user.username, days=float(days) if days is not None else None, pin=pin,
        deidentify=_flag(body, "deidentify", False), allow_download=_flag(body, "download", False),
        allow_notes=_flag(body, "notes", True), series_uids=list(dict.fromkeys(series)), label=label)
    _users().audit("share-create", username=user.username, study=study,
                   address=request.remote_addr or "", user_agent=request.user_agent.string,
                   detail=f"share {share.id}" + "".join(f" {k}" for k, on in (
                       ("deidentified", share.deidentify), ("download", share.allow_download),
                       ("pin", share.has_pin), ("subset", bool(share.series_uids))) if on))
    url = link_url(token)
    # The QR code needs an absolute URL: without public_url, the address this request came to.
    qr_url = url if url.startswith("http") else request.host_url.rstrip("/") + url
    return jsonify(id=share.id, url=url, token=token, expires=_iso(share.expires_at),
                   qr_svg=qr_svg(qr_url)), 201


@bp.get("/api/studies/<study>/shares")
def list_shares(study: str) -> Any:
    if not _study_exists(study):
        raise NotFound("no such study")
    shares = _shares()
    now = shares.clock()
    return jsonify(shares=[_link_json(s, now) for s in shares.for_study(study)])


def _revoke(share_id: int) -> Share:
    share = _shares().get(share_id)
    if share is None:
        raise NotFound("no such link")
    _shares().revoke(share_id)
    _scopes().drop(share_id)
    _users().audit("share-revoke", username=g.user.username, study=share.study_instance_uid,
                   address=request.remote_addr or "", user_agent=request.user_agent.string,
                   detail=f"share {share_id}")
    return share


@bp.post("/api/shares/<int:share_id>/revoke")
@require("share")
def revoke_share(share_id: int) -> Any:
    _revoke(share_id)
    return jsonify(id=share_id, state="revoked")


@bp.get("/api/studies/<study>/notes")
def study_notes(study: str) -> Any:
    """Every consultation note left through the study's links, oldest first."""
    if not _study_exists(study):
        raise NotFound("no such study")
    shares = _shares()
    labels = {s.id: s.label for s in shares.for_study(study)}
    return jsonify(notes=[{"share_id": sid, "label": labels.get(sid, ""), **_note_json(n)}
                          for sid, n in shares.notes(study_uid=study)])


@bp.get("/admin/shares")
@require("admin")
def admin_shares() -> Any:
    """All active links, with their study (date, description, patient: this page is admin-only)."""
    shares = _shares().active()
    uids = {s.study_instance_uid for s in shares}
    studies: dict[str, dict[str, str]] = {}
    if uids:
        q = (select(Study.study_instance_uid, Study.study_date, Study.study_description,
                    Patient.patient_name, Patient.patient_id)
             .join(Patient, Study.patient_pk == Patient.id).where(Study.study_instance_uid.in_(uids)))
        with _index().session() as s:
            for uid, date, desc, name, pid in s.execute(q):
                studies[uid] = {"date": date, "description": desc, "patient": ui.display_name(name),
                                "patient_id": pid}
    lang = _lang()
    rows = [{"share": s, "study": studies.get(s.study_instance_uid, {}), "created": _iso(s.created_at),
             "expires": _iso(s.expires_at), "last": _iso(s.last_access_at)} for s in shares]
    return render_template("admin_shares.html", lang=lang, t=TEXT[lang], rows=rows, user=g.user,
                           version=__version__)


@bp.post("/admin/shares/<int:share_id>/revoke")
@require("admin")
def admin_revoke(share_id: int) -> Any:
    _revoke(share_id)
    return redirect("/admin/shares")


# -- installing -----------------------------------------------------------------------------


def install(app: Flask) -> None:
    """Register the link views, the prefix middleware and the guard hook (call from create_app)."""
    pacs = app.extensions["pacs"]
    pacs.setdefault("shares", open_shares(pacs["settings"], pacs["index"]))
    pacs["share_scopes"] = _Scopes()
    pacs["share_guard"] = guard
    app.register_blueprint(bp)
    app.wsgi_app = LinkPaths(app.wsgi_app)  # type: ignore[method-assign]

    @app.after_request
    def link_headers(resp: Response) -> Response:
        if TOKEN_KEY in request.environ:
            for name, value in LINK_HEADERS.items():
                resp.headers.setdefault(name, value)
        return resp
