"""Rendered and thumbnail resources (PS3.18 8.3.5 / 9.5.3) and pixel values for the viewer's tools.

URLs follow DICOMweb so the viewer and external clients share them::

    /dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered
    /dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{n}/rendered
    /dicomweb/studies/{study}[/series/{series}[/instances/{sop}[/frames/{n}]]]/thumbnail
    /api/studies/{study}/series/{series}/instances/{sop}/frames/{n}/pixel?x=&y=
    /api/studies/{study}/series/{series}/instances/{sop}/info

Query parameters (PS3.18 8.3.5.1): ``window=center,width[,function]``, ``viewport=vw,vh``,
``quality=1..100``, ``accept=`` (overrides the Accept header). The views are thin: the
pixel work is :mod:`pacs.render`, the caching :mod:`pacs.frames`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from pacs.errors import NotFound
from pacs.render import BadRenderRequest, Viewport, Window
from pacs.store.index import InstanceRecord
from pacs.web.services import frames as source

bp = Blueprint("rendered", __name__)

#: What we can produce, in order of preference when the client accepts anything.
#: PS3.18 8.7.4: image/jpeg is the default media type of rendered single-frame images.
MEDIA_TYPES = ["image/jpeg", "image/png", "image/webp"]
THUMBNAIL_SIZE = 128

#: Instances never change in place (a replaced instance gets a new blob and so a new ETag),
#: so a browser may keep a render for good. ``private``: it is patient data, never for shared caches.
CACHE_CONTROL = "private, max-age=31536000, immutable"


#: Accept values already negotiated (a viewer sends the same one or two all the time).
_NEGOTIATED: dict[str, str | None] = {}


def media_type() -> str:
    """Negotiate the output type: ``accept=`` query parameter first, then the Accept header."""
    text = request.args.get("accept")
    if text is None:
        text = request.headers.get("Accept")
        if not text:
            return MEDIA_TYPES[0]
    try:
        best = _NEGOTIATED[text]
    except KeyError:
        best = parse_accept_header(text, MIMEAccept).best_match(MEDIA_TYPES)
        if len(_NEGOTIATED) > 256:
            _NEGOTIATED.clear()
        _NEGOTIATED[text] = best
    if best is None:
        abort(406, description=f"rendered images are available as {', '.join(MEDIA_TYPES)}")
    return best


def _int_arg(name: str, low: int, high: int) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadRenderRequest(f"{name} must be an integer, not {text!r}") from None
    if not low <= value <= high:
        raise BadRenderRequest(f"{name} must be between {low} and {high}")
    return value


def _frame_number(frames: str, rec: InstanceRecord) -> int:
    """One frame number from the ``{frames}`` path segment (PS3.18 8.3.5.1.1: 1-based)."""
    if "," in frames:
        raise BadRenderRequest("request one frame per rendered image (got a frame list)")
    try:
        n = int(frames)
    except ValueError:
        raise BadRenderRequest(f"frame number must be an integer, not {frames!r}") from None
    if not 1 <= n <= max(1, rec.number_of_frames):
        raise BadRenderRequest(f"frame {n} is out of range: the instance has {rec.number_of_frames}")
    return n


def _respond(rec: InstanceRecord, frame: int, *, thumb: bool) -> Any:
    """Render frame ``frame`` of ``rec`` as negotiated, with ETag / 304 handling."""
    kind = media_type()
    window_text = request.args.get("window") if not thumb else None
    viewport_text = request.args.get("viewport") if not thumb else None
    window = Window.parse(window_text) if window_text else None
    viewport = Viewport.parse(viewport_text) if viewport_text else None
    quality = _int_arg("quality", 1, 100)
    # The ETag names the stored bytes (SHA-256) and every parameter that changes the output.
    spec = f"{rec.sha256}|{frame}|{thumb}|{window}|{viewport}|{quality}|{kind}"
    etag = hashlib.sha256(spec.encode()).hexdigest()[:32]
    if request.if_none_match.contains(etag):
        resp = Response(status=304)
    elif thumb:
        resp = Response(source().thumbnail(rec, frame, THUMBNAIL_SIZE, kind, quality), mimetype=kind)
    else:
        resp = Response(source().encoded(rec, frame, window, viewport, kind, quality), mimetype=kind)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = CACHE_CONTROL
    resp.headers["Vary"] = "Accept"
    return resp


def _representative(study: str, series: str | None) -> InstanceRecord:
    """The instance shown for a study or series: the middle image of the (first) series."""
    images = [r for r in source().index.instances_of(study, series) if r.rows]
    if not images:
        raise NotFound("no images in this study or series")
    first_series = images[0].series_instance_uid
    images = [r for r in images if r.series_instance_uid == first_series]
    return images[len(images) // 2]


@bp.get("/dicomweb/studies/<study>/series/<series>/instances/<sop>/rendered")
def instance_rendered(study: str, series: str, sop: str) -> Any:
    # A multi-frame instance renders its first frame: one image per request keeps every
    # client (img tags included) working; frames are reachable one by one below.
    return _respond(source().record(study, series, sop), 1, thumb=False)


@bp.get("/dicomweb/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered")
def frame_rendered(study: str, series: str, sop: str, frames: str) -> Any:
    rec = source().record(study, series, sop)
    return _respond(rec, _frame_number(frames, rec), thumb=False)


@bp.get("/dicomweb/studies/<study>/series/<series>/instances/<sop>/thumbnail")
def instance_thumbnail(study: str, series: str, sop: str) -> Any:
    return _respond(source().record(study, series, sop), 1, thumb=True)


@bp.get("/dicomweb/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/thumbnail")
def frame_thumbnail(study: str, series: str, sop: str, frames: str) -> Any:
    rec = source().record(study, series, sop)
    return _respond(rec, _frame_number(frames, rec), thumb=True)


@bp.get("/dicomweb/studies/<study>/series/<series>/thumbnail")
def series_thumbnail(study: str, series: str) -> Any:
    return _respond(_representative(study, series), 1, thumb=True)


@bp.get("/dicomweb/studies/<study>/thumbnail")
def study_thumbnail(study: str) -> Any:
    return _respond(_representative(study, None), 1, thumb=True)


@bp.get("/api/studies/<study>/series/<series>/instances/<sop>/info")
def instance_info(study: str, series: str, sop: str) -> Any:
    """What the viewer's tools need before the first click: frames, windows, calibration."""
    rec = source().record(study, series, sop)
    inst = source().instance(rec)
    spacing = inst.spacing()
    return jsonify(
        frames=inst.number_of_frames, rows=inst.rows, columns=inst.columns,
        windows=[{"center": w.center, "width": w.width, "function": w.function}
                 for w in inst.windows()],
        spacing=None if spacing is None else
        {"row": spacing[0], "column": spacing[1], "source": spacing[2]},
    )


@bp.get("/api/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/pixel")
def pixel_value(study: str, series: str, sop: str, frames: str) -> Any:
    """The modality value (e.g. HU, after the Modality LUT) at column ``x``, row ``y``."""
    rec = source().record(study, series, sop)
    n = _frame_number(frames, rec)
    x = _int_arg("x", 0, 1 << 16)
    y = _int_arg("y", 0, 1 << 16)
    if x is None or y is None:
        raise BadRenderRequest("x and y (pixel column and row) are required")
    inst = source().instance(rec)
    value = source().frame(rec, n).modality_value(x, y)
    spacing = inst.spacing()
    return jsonify(
        x=x, y=y, frame=n,
        value=list(value) if isinstance(value, tuple) else value,
        spacing=None if spacing is None else
        {"row": spacing[0], "column": spacing[1], "source": spacing[2]},
    )
