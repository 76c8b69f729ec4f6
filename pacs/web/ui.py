"""The reading room: worklist and viewer pages, and the JSON the viewer needs.

Pages (server-rendered shells; the ES modules under ``viewer/`` do the rest)::

    /worklist                         study list with search, paging, sorting, polling
    /viewer/{study}                   the viewer for one study
    /static/viewer/...                ES modules and CSS (no patient data: public, like /static/)

JSON (every URL needs a signed-in user, see :mod:`pacs.web.auth`)::

    /api/worklist?name=&patient_id=&accession=&from=&to=&modality=&sort=&dir=&page=&page_size=
    /api/studies/{study}                                    header + series + ordered instances
    /api/studies/{study}/series/{series}/instances/{sop}/meta      overlay values, windows, spacing
    /api/studies/{study}/series/{series}/instances/{sop}/tags      the header as a tag list
    /api/studies/{study}/series/{series}/instances/{sop}/frames/{n}/roi?shape=&x0=&y0=&x1=&y1=

Opening a study (the viewer page, or ``/api/studies/{study}``) writes an ``open-study`` audit
event: who, which study (UID), when, from where. Patient names never go to the log.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from flask import (
    Blueprint, abort, g, jsonify, render_template, request,
    send_from_directory,
)
from numpy.typing import NDArray
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from pacs import __version__
from pacs.errors import InvalidInstance, InvalidQuery, NotFound
from pacs.part5 import PIXEL_TAGS
from pacs.render import BadRenderRequest, ColorFrame, Frame, GrayFrame, finite_number
from pacs.store.index import InstanceRecord
from pacs.store.worklist import StudyDetail, WorklistQuery, latest_study, search, study_detail
from pacs.web.services import frames as _source
from pacs.web.services import index as _index
from pacs.web.services import users as _users

#: The browser side: ES modules, CSS and the page templates (no build step).
VIEWER_DIR = Path(__file__).resolve().parents[2] / "viewer"

bp = Blueprint(
    "ui", __name__, template_folder=str(VIEWER_DIR / "templates"),
    static_folder=str(VIEWER_DIR), static_url_path="/static/viewer",
)

#: Binary VRs whose values the tag browser shows only when short (PS3.5 6.2).
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
MAX_BINARY = 64
MAX_TEXT = 1024
MAX_ITEMS = 50
MAX_DEPTH = 4
#: Parsed headers (no pixel data) kept in the frame cache for the tag browser and overlays.


# -- names ------------------------------------------------------------------------------


def display_name(pn: str, *, upper: bool = True) -> str:
    """A DICOM PN as Vietnamese users read it: family name first, components joined by spaces.

    ``Nguyễn^Văn An`` -> ``NGUYỄN VĂN AN``. PS3.5 6.2.1: components are family^given^middle^
    prefix^suffix, and ``=`` separates the alphabetic, ideographic and phonetic groups; the
    first non-empty group is shown. A Vietnamese name reads family, middle, given
    (``Trần^Bình^Thị`` -> ``TRẦN THỊ BÌNH``); most systems here put middle and given
    together in the given component (``Trần^Thị Bình``), which reads the same.
    """
    group = next((grp for grp in pn.split("=") if grp.replace("^", "").strip()), "")
    parts = group.split("^")
    family, given, middle, prefix, suffix = (parts + [""] * 5)[:5]
    words = [prefix, family, middle, given, suffix]
    text = " ".join(" ".join(w.split()) for w in words if w.strip())
    return text.upper() if upper else text


# -- pages ------------------------------------------------------------------------------


def _page_lang() -> str:
    """The page language: the one the user picked (cookie), else the browser's."""
    chosen = request.cookies.get("pacs_lang", "")
    if chosen in ("vi", "en"):
        return chosen
    return request.accept_languages.best_match(["vi", "en"]) or "en"


@bp.get("/favicon.ico")
def favicon() -> Any:
    return send_from_directory(VIEWER_DIR, "favicon.svg", mimetype="image/svg+xml", max_age=86400)


@bp.get("/worklist")
def worklist_page() -> Any:
    return render_template("worklist.html", lang=_page_lang(), user=g.user, version=__version__)


@bp.get("/viewer/<study>")
def viewer_page(study: str) -> Any:
    """The viewer, with the study's header and series in the page; audited as a study open."""
    detail = study_detail(_index().engine, study)
    if detail is None:
        abort(404, description="no such study")
    _audit_open(study)
    return render_template("viewer.html", lang=_page_lang(), user=g.user, study=study,
                           study_json=_study_json(detail), version=__version__)


# -- worklist and study ---------------------------------------------------------------


@bp.get("/api/worklist")
def api_worklist() -> Any:
    """One page of the study list (see :class:`pacs.store.worklist.WorklistQuery`)."""
    query = WorklistQuery.parse(request.args)
    engine = _index().engine
    found = search(engine, query)
    rows = []
    for r in found.rows:
        rows.append({
            "study_uid": r["study_instance_uid"], "study_date": r["study_date"],
            "study_time": r["study_time"], "accession": r["accession_number"],
            "description": r["study_description"],
            "referring_physician": display_name(r["referring_physician_name"], upper=False),
            "patient_id": r["patient_id"], "patient_name": r["patient_name"],
            "patient_name_display": display_name(r["patient_name"]),
            "birth_date": r["birth_date"], "sex": r["sex"], "modalities": r["modalities"],
            "series": r["series_count"], "images": r["image_count"], "received": r["created_at"],
        })
    return jsonify(total=found.total, page=query.page, page_size=query.page_size,
                   sort=query.sort, dir="desc" if query.descending else "asc",
                   latest=latest_study(engine), rows=rows)


def _audit_open(study: str) -> None:
    """PS: who opened which study, when, from where (UIDs only, never names)."""
    user = g.user
    _users().audit("open-study", username=user.username if user else "", study=study,
                   address=request.remote_addr or "", user_agent=request.user_agent.string)


def _study_json(detail: StudyDetail) -> dict[str, Any]:
    h = detail.header
    return dict(
        study_uid=h["study_instance_uid"], study_date=h["study_date"], study_time=h["study_time"],
        accession=h["accession_number"], description=h["study_description"],
        referring_physician=display_name(h["referring_physician_name"], upper=False),
        study_id=h["study_id"], patient_id=h["patient_id"], patient_name=h["patient_name"],
        patient_name_display=display_name(h["patient_name"]), birth_date=h["birth_date"],
        sex=h["sex"], modalities=h["modalities"],
        series=[{
            "series_uid": s.series_instance_uid, "modality": s.modality,
            "number": s.series_number, "description": s.series_description,
            "body_part": s.body_part_examined, "count": len(s.instances),
            "images": sum(1 for i in s.instances if i.rows),
            "instances": [{"sop_uid": i.sop_instance_uid, "number": i.instance_number,
                           "frames": i.frames, "rows": i.rows, "columns": i.columns,
                           "sop_class_uid": i.sop_class_uid} for i in s.instances],
        } for s in detail.series],
    )


@bp.get("/api/studies/<study>")
def api_study(study: str) -> Any:
    """The study header and its series in reading order; an ``open-study`` audit event."""
    detail = study_detail(_index().engine, study)
    if detail is None:
        raise NotFound("no such study")
    _audit_open(study)
    return jsonify(_study_json(detail))


# -- one instance -----------------------------------------------------------------------


def _header(rec: InstanceRecord) -> Dataset:
    """The instance's header without pixel data: its first bytes only, parsed once per blob."""
    return _source().header(rec)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _number(ds: Dataset, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@bp.get("/api/studies/<study>/series/<series>/instances/<sop>/meta")
def api_meta(study: str, series: str, sop: str) -> Any:
    """What the overlays and tools need for one instance: numbers, location, windows, spacing.

    ``window`` is what a render without ``window=`` shows for frame 1 (the file's first
    window, else the frame's min/max), so a W/L drag starts from the image on screen.
    """
    src = _source()
    rec = src.record(study, series, sop)
    ds = _header(rec)
    out: dict[str, Any] = {
        "sop_uid": sop, "instance_number": _text(ds, "InstanceNumber"),
        "series_number": _text(ds, "SeriesNumber"),
        "series_description": _text(ds, "SeriesDescription"),
        "slice_location": _number(ds, "SliceLocation"),
        "slice_thickness": _number(ds, "SliceThickness"),
        "image_position": _text(ds, "ImagePositionPatient"),
        "institution": _text(ds, "InstitutionName"), "modality": _text(ds, "Modality"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "frames": rec.number_of_frames, "rows": None, "columns": None,
        "windows": [], "window": None, "spacing": None, "color": False, "renderable": False,
    }
    try:
        inst = src.instance(rec)
        frame = src.frame(rec, 1)
    except (InvalidInstance, BadRenderRequest):
        return jsonify(out)  # a structured report, a waveform ...: overlays only
    spacing = inst.spacing()
    window = frame.default_window
    if window is None and isinstance(frame, GrayFrame):
        window = frame.minmax_window()  # a VOI LUT image: drag from its full range
    out.update(
        renderable=True, rows=inst.rows, columns=inst.columns, frames=inst.number_of_frames,
        color=isinstance(frame, ColorFrame),
        windows=[{"center": w.center, "width": w.width, "function": w.function}
                 for w in inst.windows()],
        window=None if window is None else
        {"center": window.center, "width": window.width, "function": window.function},
        spacing=None if spacing is None else
        {"row": spacing[0], "column": spacing[1], "source": spacing[2]},
    )
    return jsonify(out)


def _element(elem: DataElement, depth: int) -> dict[str, Any]:
    """One element for the tag browser; binaries, long texts and deep sequences elided."""
    out: dict[str, Any] = {
        "tag": f"({elem.tag.group:04X},{elem.tag.element:04X})", "keyword": elem.keyword,
        "name": elem.name, "vr": elem.VR,
    }
    try:
        return _value(elem, depth, out)
    except Exception:  # noqa: BLE001 - a malformed value must not hide the rest of the header
        out["value"], out["elided"] = "(unreadable value)", True
        return out


def _value(elem: DataElement, depth: int, out: dict[str, Any]) -> dict[str, Any]:
    value = elem.value
    if elem.VR == "SQ":
        items = list(value or [])
        out["value"] = f"{len(items)} item(s)"
        if depth < MAX_DEPTH:
            out["items"] = [[_element(e, depth + 1) for e in item] for item in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS or depth >= MAX_DEPTH:
            out["elided"] = True
        return out
    if elem.tag in PIXEL_TAGS:
        out["value"], out["elided"] = "(pixel data)", True
        return out
    if isinstance(value, (bytes, bytearray)) or elem.VR in BINARY_VRS:
        raw = bytes(value or b"") if isinstance(value, (bytes, bytearray)) else b""
        if len(raw) > MAX_BINARY or not isinstance(value, (bytes, bytearray)):
            out["value"], out["elided"] = f"({len(raw)} bytes)", True
        else:
            out["value"] = raw.hex(" ")
        return out
    if value is None:
        text = ""
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, PersonName):
        text = str(value)
    else:
        text = str(value)
    if len(text) > MAX_TEXT:
        text, out["elided"] = text[:MAX_TEXT] + "…", True
    out["value"] = text
    return out


@bp.get("/api/studies/<study>/series/<series>/instances/<sop>/tags")
def api_tags(study: str, series: str, sop: str) -> Any:
    """The instance's header (file meta group first) as ``[{tag, keyword, name, vr, value}]``."""
    rec = _source().record(study, series, sop)
    ds = _header(rec)
    elements = [_element(e, 0) for e in getattr(ds, "file_meta", Dataset())]
    elements += [_element(e, 0) for e in ds]
    return jsonify(sop_uid=sop, elements=elements)


# -- region of interest -----------------------------------------------------------------


def _float_arg(name: str) -> float:
    return finite_number(request.args.get(name, ""), name)


def modality_values(frame: Frame, r0: int, r1: int, c0: int, c1: int) -> tuple[NDArray[np.float64], str]:
    """Modality values (e.g. HU) of rows r0:r1, columns c0:c1, and their unit kind.

    Grey frames: their stored values through the Modality LUT (:meth:`GrayFrame.modality_values`);
    colour frames give their luminance (ITU-R BT.601 weights).
    """
    if isinstance(frame, GrayFrame):
        return frame.modality_values(slice(r0, r1), slice(c0, c1)), "modality"
    if isinstance(frame, ColorFrame):
        rgb = frame._rgb[r0:r1, c0:c1].astype(np.float64)
        return rgb @ np.array([0.299, 0.587, 0.114]), "luminance"
    raise BadRenderRequest("this frame has no pixel values")  # pragma: no cover


def roi_stats(frame: Frame, shape: str, x0: float, y0: float, x1: float, y1: float,
              spacing: tuple[float, float, str] | None) -> dict[str, Any]:
    """Mean, standard deviation, min, max and area of the pixels whose centres lie inside.

    Coordinates are in image pixels (column x, row y; the pixel (0, 0) covers [0, 1) x
    [0, 1)). The area is the drawn shape's, in mm² when the image is calibrated.
    """
    if shape not in ("rect", "ellipse"):
        raise BadRenderRequest("shape must be rect or ellipse")
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    c0, c1 = max(0, math.ceil(left - 0.5)), min(frame.columns, math.floor(right - 0.5) + 1)
    r0, r1 = max(0, math.ceil(top - 0.5)), min(frame.rows, math.floor(bottom - 0.5) + 1)
    width, height = right - left, bottom - top
    if c1 <= c0 or r1 <= r0:
        raise BadRenderRequest("the region holds no pixel of the image")
    values, kind = modality_values(frame, r0, r1, c0, c1)
    if shape == "ellipse":
        cy, cx = (top + bottom) / 2, (left + right) / 2
        ry, rx = max(height / 2, 1e-9), max(width / 2, 1e-9)
        yy = (np.arange(r0, r1) + 0.5 - cy) / ry
        xx = (np.arange(c0, c1) + 0.5 - cx) / rx
        inside = (yy[:, None] ** 2 + xx[None, :] ** 2) <= 1.0
        values = values[inside]
        area_px = math.pi * (width / 2) * (height / 2)
    else:
        values = values.ravel()
        area_px = width * height
    if values.size == 0:
        raise BadRenderRequest("the region holds no pixel centre")
    out: dict[str, Any] = {
        "shape": shape, "pixels": int(values.size), "kind": kind,
        "mean": float(values.mean()), "sd": float(values.std()),
        "min": float(values.min()), "max": float(values.max()),
        "area_px": area_px, "area_mm2": None, "spacing_source": None,
    }
    if spacing is not None:
        out["area_mm2"] = area_px * spacing[0] * spacing[1]
        out["spacing_source"] = spacing[2]
    return out


@bp.get("/api/studies/<study>/series/<series>/instances/<sop>/frames/<int:n>/roi")
def api_roi(study: str, series: str, sop: str, n: int) -> Any:
    """Statistics of a rectangle or ellipse ROI on frame ``n`` (see :func:`roi_stats`)."""
    src = _source()
    rec = src.record(study, series, sop)
    if not 1 <= n <= max(1, rec.number_of_frames):
        raise BadRenderRequest(f"frame {n} is out of range: the instance has {rec.number_of_frames}")
    spacing = src.instance(rec).spacing()  # first: the frame is then cut from this read
    frame = src.frame(rec, n)
    stats = roi_stats(frame, request.args.get("shape", "rect"), _float_arg("x0"), _float_arg("y0"),
                      _float_arg("x1"), _float_arg("y1"), spacing)
    return jsonify(frame=n, **stats)


@bp.errorhandler(InvalidQuery)
def invalid_query(exc: InvalidQuery) -> Any:
    return jsonify(error=str(exc), keyword=exc.keyword), 400
