"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS under ``/dicomweb`` and WADO-URI at ``/wado``.

Thin views: parameter checking and matching are :mod:`pacs.qido` (the C-FIND engine),
negotiation and the STOW response are :mod:`pacs.wado`, DICOM JSON is :mod:`pacs.dicomjson`,
multipart framing is :mod:`pacs.multipart`, pixel conversion :mod:`pacs.pixeldata`, the
metadata cache :mod:`pacs.store.metadata`, and every store goes through
:meth:`pacs.ingest.IngestService.store`, the archive's one write path.

The rendered and thumbnail resources are in :mod:`pacs.web.rendered`. URLs in answers
(RetrieveURL, BulkDataURI) start with the ``public_url`` setting, or are absolute paths
(``/dicomweb/…``) when it is not set; never with the request's Host header, which a reverse
proxy may have rewritten.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, BinaryIO

from flask import Blueprint, Flask, Response, abort, request
from pydicom import dcmread
from pydicom.encaps import get_frame
from pydicom.uid import UID
from sqlalchemy import func, select

from pacs.dicom import InstanceKeys
from pacs.dicomjson import MEDIA_TYPE as DICOM_JSON
from pacs.errors import DuplicateConflict, InvalidInstance, NotFound, StorageUnavailable
from pacs.ingest import IngestService, Origin, Outcome
from pacs.multipart import MultipartError, Part, encode, new_boundary, parse_media_type, scan
from pacs.pixeldata import NATIVE_TARGETS, ConversionError, FrameMap, frame_bytes, native_frame, to_native
from pacs.qido import Search, parse, result_json
from pacs.render import MAX_VIEWPORT, Viewport, Window
from pacs.render import encode as encode_image
from pacs.store.blobs import CHUNK, BlobStore
from pacs.store.index import InstanceRecord
from pacs.store.metadata import Cached, Document, Entry, MetadataCache, absolute
from pacs.store.models import Instance, Series, Study
from pacs.store.query import UNIQUE_KEY, Level, run_find
from pacs.wado import (
    CANNOT_UNDERSTAND, DICOM, DUPLICATE_SOP_INSTANCE, ELEMENTS_DISCARDED, OCTET, OUT_OF_RESOURCES,
    STUDY_MISMATCH, FrameChoice, StowOutcome, accepts_json, choose_bulk, choose_frames,
    choose_instance, frame_media_types, offers, stow_response,
)
from pacs.web.auth import require
from pacs.web.services import blobs as _blobs
from pacs.web.services import frames as _frames
from pacs.web.services import index as _index
from pacs.web.services import services as _pacs
from pacs.web.services import settings as _settings

log = logging.getLogger(__name__)

bp = Blueprint("dicomweb", __name__)

ROOT = "/dicomweb"
#: In-memory part of a spooled STOW-RS request; larger bodies go to a temporary file.
SPOOL_IN_MEMORY = 8 * 1024 * 1024


# -- services ---------------------------------------------------------------------------


def _cache() -> MetadataCache:
    return _pacs()["metadata"]  # type: ignore[no-any-return]


_ingest_lock = threading.Lock()
_TABLES = {Level.STUDY: Study.__table__, Level.SERIES: Series.__table__, Level.IMAGE: Instance.__table__}


def _ingest() -> IngestService:
    """The process' ingest service (created at the first STOW-RS request)."""
    pacs = _pacs()
    with _ingest_lock:
        if "ingest" not in pacs:
            s = _settings()
            pacs["ingest"] = IngestService(
                _blobs(), _index(), duplicate_policy=s.duplicate_policy,
                max_instance_size=s.max_instance_mb * 1024 * 1024)
    return pacs["ingest"]  # type: ignore[no-any-return]


def install(app: Flask) -> None:
    """Register the DICOMweb routes (call from ``create_app``)."""
    pacs = app.extensions["pacs"]
    pacs.setdefault("metadata", MetadataCache(pacs["index"]))
    app.register_blueprint(bp)


# -- URLs -------------------------------------------------------------------------------


def _base() -> str:
    return _settings().public_url.rstrip("/")


def study_url(study: str) -> str:
    return f"{_base()}{ROOT}/studies/{study}"


def instance_url(rec: InstanceRecord) -> str:
    return (f"{_base()}{ROOT}/studies/{rec.study_instance_uid}/series/{rec.series_instance_uid}"
            f"/instances/{rec.sop_instance_uid}")


def _accept() -> str | None:
    # PS3.18 8.3.3.1: an ``accept`` query parameter overrides the Accept header.
    return request.args.get("accept") or request.headers.get("Accept")


def _offers(default_type: str) -> list[Any]:
    try:
        return offers(_accept(), default_type)
    except MultipartError as exc:
        abort(400, description=f"Accept: {exc}")


def _check_uid(*uids: str) -> None:
    for uid in uids:
        if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
            abort(400, description=f"{uid[:70]!r} is not a UID (PS3.5 9.1)")


# -- QIDO-RS (PS3.18 10.6) --------------------------------------------------------------


def _search(level: Level, **path: str) -> Response:
    _check_uid(*path.values())
    try:
        if not accepts_json(_accept()):
            abort(406, description=f"search results are available as {DICOM_JSON}")
    except MultipartError as exc:
        abort(400, description=f"Accept: {exc}")
    settings = _settings()
    params = {k: request.args.getlist(k) for k in request.args}
    search = parse(params, level, path=path, max_limit=settings.find_limit)
    engine = _index().engine
    result = run_find(engine, search.query, limit=search.limit, offset=search.offset)
    base = _base()
    rows = [result_json(row, level, base) for row in result.rows]
    if level is Level.IMAGE and (search.extra_fields or search.include_all) and rows:
        _merge_cached(rows, result.rows, search)
    warnings = list(search.warnings)
    if result.more:
        # PS3.18 8.3.4.4 / 6.7.1.2: there are more results than this page holds.
        warnings.append("There are additional results that can be requested")
    resp = Response(json.dumps(rows, ensure_ascii=False, separators=(",", ":")), mimetype=DICOM_JSON)
    # CP-2473 (PS3.18 8.3.4.4.1): no match is "200 OK" with an empty array, not "204".
    total = _count(search) if (result.more or search.offset) else len(result.rows)
    if total >= 0:
        resp.headers["X-Total-Count"] = str(total)
    for text in warnings:
        resp.headers.add("Warning", f'299 mini-PACS: "{text}"')
    return resp


def _count(search: Search) -> int:
    """How many entities match in total (for paging): the query reduced to the level's key."""
    query = replace(search.query, returned=(UNIQUE_KEY[search.query.level],))
    engine = _index().engine
    if all(v == "" or set(v) == {"*"} for v in query.keys.values()):
        # Nothing to match (a worklist's first page): count the level's table, not the joins.
        counted = select(func.count()).select_from(_TABLES[query.level])
    else:
        inner = query.statement(engine.dialect.name).order_by(None).subquery()
        counted = select(func.count()).select_from(inner)
    try:
        with engine.connect() as conn:
            return int(conn.execute(counted).scalar_one())
    except Exception as exc:  # noqa: BLE001 - the count is a courtesy; the page is the answer
        log.warning("QIDO count failed: %s", exc)
        return -1


def _merge_cached(out: list[dict[str, Any]], rows: list[dict[str, Any]], search: Search) -> None:
    """Add includefield attributes the index does not hold from the metadata cache (instances only).

    One cache query per series of the page, not per instance: an instance search in a
    300-slice series with ``includefield=all`` is one query instead of 300. A series with a
    single instance on the page is asked for that instance alone.
    """
    cache = _cache()
    groups: dict[tuple[str, str], list[int]] = {}
    for n, row in enumerate(rows):
        groups.setdefault((row["StudyInstanceUID"], row["SeriesInstanceUID"]), []).append(n)
    for (study, series), members in groups.items():
        only = rows[members[0]]["SOPInstanceUID"] if len(members) == 1 else None
        listed = {item.record.sop_instance_uid: item for item in cache.listing(study, series, only)}
        for n in members:
            item = listed.get(rows[n]["SOPInstanceUID"])
            if item is not None:
                _merge_one(out[n], item, search, cache)


def _merge_one(obj: dict[str, Any], item: Cached, search: Search, cache: MetadataCache) -> None:
    (rec, entry), = cache.entries([item], _blobs())
    if entry is None:
        return
    cached = json.loads(absolute(entry.json_bytes(), instance_url(rec)))
    wanted = cached.keys() if search.include_all else search.extra_fields
    for tag in wanted:
        if tag in cached and tag not in obj:
            obj[tag] = cached[tag]
    obj_sorted = dict(sorted(obj.items()))
    obj.clear()
    obj.update(obj_sorted)


@bp.get(f"{ROOT}/studies")
def search_studies() -> Any:
    return _search(Level.STUDY)


@bp.get(f"{ROOT}/series")
def search_all_series() -> Any:
    return _search(Level.SERIES)


@bp.get(f"{ROOT}/studies/<study>/series")
def search_series(study: str) -> Any:
    return _search(Level.SERIES, StudyInstanceUID=study)


@bp.get(f"{ROOT}/instances")
def search_all_instances() -> Any:
    return _search(Level.IMAGE)


@bp.get(f"{ROOT}/studies/<study>/instances")
def search_study_instances(study: str) -> Any:
    return _search(Level.IMAGE, StudyInstanceUID=study)


@bp.get(f"{ROOT}/studies/<study>/series/<series>/instances")
def search_instances(study: str, series: str) -> Any:
    return _search(Level.IMAGE, StudyInstanceUID=study, SeriesInstanceUID=series)


# -- WADO-RS instances (PS3.18 10.4) -----------------------------------------------------


def _records(study: str, series: str | None = None, sop: str | None = None) -> list[InstanceRecord]:
    _check_uid(study, *(u for u in (series, sop) if u is not None))
    if sop is not None and series is not None:
        # One instance: its (briefly cached) row, checked against study and series; not the
        # whole series' rows filtered here (a viewer fetching 300 instances read 300 x 300).
        return [_frames().record(study, series, sop)]
    records = _index().instances_of(study, series)
    if sop is not None:
        records = [r for r in records if r.sop_instance_uid == sop]
    if not records:
        raise NotFound("no such " + ("instance" if sop else "series" if series else "study"))
    return records


def _blob_chunks(blobs: BlobStore, key: str) -> Iterator[bytes]:
    with blobs.open(key) as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _retrieve(records: list[InstanceRecord], *, single_ok: bool) -> Response:
    options = _offers(DICOM)
    choices = []
    for rec in records:
        choice = choose_instance(options, rec.transfer_syntax_uid, single_ok=single_ok)
        if choice is None:
            abort(406, description=(
                f"instance {rec.sop_instance_uid} is stored in {rec.transfer_syntax_uid}; it can be "
                "retrieved as multipart/related; type=\"application/dicom\" with transfer-syntax=* "
                "(as stored), 1.2.840.10008.1.2.1 or 1.2.840.10008.1.2 (decompressed)"))
        choices.append(choice)
    blobs = _blobs()
    if not choices[0].multipart:  # one instance, single part (application/dicom)
        rec, target = records[0], choices[0].target
        body = _blobs().get(rec.blob_key) if target is None else _convert(rec, target)
        ts = target or rec.transfer_syntax_uid
        return Response(body, mimetype=DICOM, headers={"Content-Type": f"{DICOM}; transfer-syntax={ts}"})

    def parts() -> Iterator[Part]:
        for rec, choice in zip(records, choices):
            if choice.target is None:
                yield Part(f"{DICOM}; transfer-syntax={rec.transfer_syntax_uid}",
                           _blob_chunks(blobs, rec.blob_key))
            else:
                # One instance in memory at a time; a failure now can only cut the stream short.
                yield Part(f"{DICOM}; transfer-syntax={choice.target}",
                           to_native(blobs.get(rec.blob_key), choice.target))

    return _multipart(parts(), DICOM)


def _convert(rec: InstanceRecord, target: str) -> bytes:
    try:
        return to_native(_blobs().get(rec.blob_key), target)
    except ConversionError as exc:
        abort(406, description=f"instance {rec.sop_instance_uid}: {exc}")


def _multipart(parts: Iterable[Part], part_type: str) -> Response:
    boundary = new_boundary()
    mimetype = f'multipart/related; type="{part_type}"; boundary={boundary}'

    def body() -> Iterator[bytes]:
        try:
            yield from encode(parts, boundary)
        except Exception:
            # The status line is gone already: cut the body short (the client sees no closing
            # delimiter) rather than pretend it is complete.
            log.exception("WADO-RS stream aborted")
            raise

    return Response(body(), headers={"Content-Type": mimetype})


@bp.get(f"{ROOT}/studies/<study>")
def retrieve_study(study: str) -> Any:
    return _retrieve(_records(study), single_ok=False)


@bp.get(f"{ROOT}/studies/<study>/series/<series>")
def retrieve_series(study: str, series: str) -> Any:
    return _retrieve(_records(study, series), single_ok=False)


@bp.get(f"{ROOT}/studies/<study>/series/<series>/instances/<sop>")
def retrieve_instance(study: str, series: str, sop: str) -> Any:
    return _retrieve(_records(study, series, sop), single_ok=True)


# -- WADO-RS metadata (PS3.18 10.4.1.1.2) -------------------------------------------------


def _entries(study: str, series: str | None = None, sop: str | None = None) -> list[tuple[InstanceRecord, Entry | None]]:
    _check_uid(study, *(u for u in (series, sop) if u is not None))
    items: list[Cached] = _cache().listing(study, series, sop)
    if not items:
        raise NotFound("no such " + ("instance" if sop else "series" if series else "study"))
    return _cache().entries(items, _blobs())


def _minimal_json(doc: Document) -> bytes:
    """What is known from the index when an instance's blob cannot be read."""
    obj = {"00080018": {"vr": "UI", "Value": [doc.sop_instance_uid]},
           "0020000D": {"vr": "UI", "Value": [doc.study_instance_uid]},
           "0020000E": {"vr": "UI", "Value": [doc.series_instance_uid]}}
    return json.dumps(obj, separators=(",", ":")).encode()


def check_json_accept() -> None:
    """406 unless the client takes DICOM JSON (PS3.18 8.7.3), 400 for a malformed Accept."""
    try:
        if not accepts_json(_accept()):
            abort(406, description=f"metadata is available as {DICOM_JSON}")
    except MultipartError as exc:
        abort(400, description=f"Accept: {exc}")


def metadata_pieces(docs: Iterable[Document], base: str) -> list[bytes]:
    """Each instance's cached DICOM JSON, its BulkDataURIs made absolute under ``base``."""
    cache, blobs = _cache(), _blobs()
    pieces = []
    for doc in docs:
        text = cache.json_of(doc, blobs)
        url = (f"{base}{ROOT}/studies/{doc.study_instance_uid}/series/{doc.series_instance_uid}"
               f"/instances/{doc.sop_instance_uid}")
        pieces.append(absolute(text, url) if text is not None else _minimal_json(doc))
    return pieces


def _metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    check_json_accept()
    _check_uid(study, *(u for u in (series, sop) if u is not None))
    docs = _cache().documents(study, series, sop)
    if not docs:
        raise NotFound("no such " + ("instance" if sop else "series" if series else "study"))
    return Response(b"[" + b",".join(metadata_pieces(docs, _base())) + b"]", mimetype=DICOM_JSON)


@bp.get(f"{ROOT}/studies/<study>/metadata")
def study_metadata(study: str) -> Any:
    return _metadata(study)


@bp.get(f"{ROOT}/studies/<study>/series/<series>/metadata")
def series_metadata(study: str, series: str) -> Any:
    return _metadata(study, series)


@bp.get(f"{ROOT}/studies/<study>/series/<series>/instances/<sop>/metadata")
def instance_metadata(study: str, series: str, sop: str) -> Any:
    return _metadata(study, series, sop)


# -- WADO-RS frames and bulk data (PS3.18 10.4.1.1.4, 10.4.1.1.5) --------------------------


def _frame_numbers(text: str, count: int) -> list[int]:
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            abort(400, description=f"frame numbers are 1-based integers separated by commas, not {text!r}")
        numbers.append(int(piece))
    beyond = [n for n in numbers if n > count]
    if beyond:
        abort(404, description=f"no frame {beyond[0]}: the instance has {count} frame(s)")
    return numbers


def _pixel_entry(study: str, series: str, sop: str) -> tuple[InstanceRecord, Entry | None]:
    (rec, entry), = _entries(study, series, sop)
    if not rec.rows or not rec.number_of_frames:
        abort(404, description="this instance has no pixel data")
    return rec, entry


def _frame_reader(rec: InstanceRecord, fmap: FrameMap | None, choice: FrameChoice) -> Any:
    """``number -> bytes`` for the chosen representation (byte ranges when the map allows)."""
    blobs = _blobs()
    whole: list[bytes] = []

    def raw() -> bytes:
        if not whole:
            whole.append(blobs.get(rec.blob_key))
        return whole[0]

    def read(number: int) -> bytes:
        if choice.decode:
            return native_frame(raw(), number)
        if fmap is not None:
            return frame_bytes(lambda off, n: blobs.get_range(rec.blob_key, off, n), fmap, number)
        # No byte ranges (deflated, odd fragments): from the whole object.
        ds = dcmread(io.BytesIO(raw()))
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return get_frame(ds.PixelData, number - 1, number_of_frames=rec.number_of_frames)
        return native_frame(raw(), number)

    return read


def _send_frames(rec: InstanceRecord, entry: Entry | None, numbers: list[int]) -> Response:
    fmap = entry.frames if entry is not None else None
    native = fmap.native if fmap is not None else not UID(rec.transfer_syntax_uid).is_compressed
    choice = choose_frames(_offers(OCTET), rec.transfer_syntax_uid, native, single_ok=len(numbers) == 1)
    if choice is None:
        abort(406, description="frames of this instance are available as "
              + frame_media_types(rec.transfer_syntax_uid, native))
    read = _frame_reader(rec, fmap, choice)
    try:
        first = read(numbers[0])  # a conversion problem is a 406 before anything is sent
    except ConversionError as exc:
        abort(406, description=str(exc))
    if not choice.multipart:
        return Response(first, headers={"Content-Type": choice.content_type})

    def parts() -> Iterator[Part]:
        yield Part(choice.content_type, first)
        for n in numbers[1:]:
            yield Part(choice.content_type, read(n))

    resp = _multipart(parts(), choice.media_type)
    resp.headers["Content-Type"] += f"; transfer-syntax={choice.transfer_syntax}"
    return resp


@bp.get(f"{ROOT}/studies/<study>/series/<series>/instances/<sop>/frames/<frames>")
def retrieve_frames(study: str, series: str, sop: str, frames: str) -> Any:
    rec, entry = _pixel_entry(study, series, sop)
    return _send_frames(rec, entry, _frame_numbers(frames, rec.number_of_frames))


@bp.get(f"{ROOT}/studies/<study>/series/<series>/instances/<sop>/bulkdata/<path:tags>")
def retrieve_bulkdata(study: str, series: str, sop: str, tags: str) -> Any:
    """A BulkDataURI of our metadata: ``7FE00010`` (pixel data, as frames) or a tag path."""
    steps = tags.strip("/").split("/")
    if steps[0].upper() in ("7FE00010", "7FE00008", "7FE00009") and len(steps) == 1:
        rec, entry = _pixel_entry(study, series, sop)
        return _send_frames(rec, entry, list(range(1, rec.number_of_frames + 1)))
    multipart = choose_bulk(_offers(OCTET), single_ok=True)
    if multipart is None:
        abort(406, description=f"bulk data is available as {OCTET}")
    rec = _records(study, series, sop)[0]
    ds = dcmread(io.BytesIO(_blobs().get(rec.blob_key)), stop_before_pixels=True)
    value = _navigate(ds, steps)
    if not multipart:
        return Response(value, headers={"Content-Type": OCTET})
    return _multipart([Part(OCTET, value)], OCTET)


def _navigate(ds: Any, steps: list[str]) -> bytes:
    """The value at ``TAG[/ITEM/TAG]…`` (items 1-based), as bytes; 404 if there is none."""
    if len(steps) % 2 != 1:
        abort(404, description="a bulk data path is TAG or SEQUENCE/ITEM/TAG")
    node = ds
    for i in range(0, len(steps), 2):
        try:
            tag = int(steps[i], 16)
        except ValueError:
            abort(404, description=f"{steps[i]!r} is not a tag")
        if tag not in node:
            abort(404, description=f"no element {steps[i]}")
        elem = node[tag]
        if i + 1 == len(steps):
            value = elem.value
            if not isinstance(value, (bytes, bytearray)):
                abort(404, description=f"element {steps[i]} is not bulk data")
            return bytes(value)
        if elem.VR != "SQ" or not steps[i + 1].isdigit():
            abort(404, description=f"element {steps[i]} is not a sequence")
        index = int(steps[i + 1])
        if not 1 <= index <= len(elem.value):
            abort(404, description=f"sequence {steps[i]} has no item {index}")
        node = elem.value[index - 1]
    raise AssertionError("unreachable")  # pragma: no cover


# -- STOW-RS (PS3.18 10.5) ---------------------------------------------------------------


def _spool(limit: int) -> tuple[BinaryIO, int]:
    """The request body in a temporary file (at most ``limit`` bytes, 0 = no limit), and its size."""
    length = request.content_length
    if limit and length is not None and length > limit:
        abort(413, description=f"the request body is larger than {limit} bytes (stow_max_mb)")
    fh = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    stream = request.stream
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if limit and size > limit:
            fh.close()
            abort(413, description=f"the request body is larger than {limit} bytes (stow_max_mb)")
        fh.write(chunk)
    fh.seek(0)
    return fh, size  # type: ignore[return-value]


def _uids_of(raw: bytes) -> tuple[str, str]:
    """Best-effort SOP Class / Instance UIDs of a part that could not be stored."""
    try:
        ds = dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - unreadable: the failure item has empty UIDs
        return "", ""


@bp.post(f"{ROOT}/studies")
@bp.post(f"{ROOT}/studies/<study>")
@require("upload")  # referrers read only; checked before the body is read
def store_instances(study: str | None = None) -> Any:
    if study is not None:
        _check_uid(study)
    try:
        ctype = parse_media_type(request.headers.get("Content-Type", ""))
    except MultipartError:
        ctype = None
    if ctype is None or ctype.type != "multipart/related":
        abort(415, description='STOW-RS takes multipart/related; type="application/dicom" (PS3.18 10.5.1)')
    part_type = ctype.params.get("type", DICOM).lower()
    if part_type != DICOM:
        abort(415, description=f"parts of type {part_type} are not supported; send {DICOM} instances")
    boundary = ctype.params.get("boundary", "")
    if not boundary:
        abort(400, description="the Content-Type has no boundary parameter")
    try:
        if not accepts_json(_accept()):
            abort(406, description=f"the STOW-RS response is available as {DICOM_JSON}")
    except MultipartError as exc:
        abort(400, description=f"Accept: {exc}")
    settings = _settings()
    max_instance = settings.max_instance_mb * 1024 * 1024
    fh, size = _spool(settings.stow_max_mb * 1024 * 1024)
    try:
        try:
            spans = scan(fh, boundary, size)
        except MultipartError as exc:
            abort(400, description=f"malformed multipart body: {exc}")
        if not spans:
            abort(400, description="the request holds no instance")
        for i, span in enumerate(spans, start=1):
            if max_instance and span.length > max_instance:
                abort(413, description=f"part {i} is {span.length} bytes, more than max_instance_mb "
                      f"({settings.max_instance_mb} MiB); nothing was stored")
        outcomes = [_store_part(fh, span, study) for span in spans]
    finally:
        fh.close()
    status, body = stow_response(outcomes, study_url(study) if study else _single_study(outcomes))
    stored = sum(o.failure is None for o in outcomes)
    log.info("STOW-RS from %s: %d of %d instance(s) stored (HTTP %d)", request.remote_addr,
             stored, len(outcomes), status)
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=DICOM_JSON)


def _single_study(outcomes: list[StowOutcome]) -> str:
    """The study RetrieveURL when every stored instance belongs to one study (else none)."""
    urls = {o.retrieve_url.split("/series/")[0] for o in outcomes if o.retrieve_url}
    return urls.pop() if len(urls) == 1 else ""


def _store_part(fh: BinaryIO, span: Any, study: str | None) -> StowOutcome:
    fh.seek(span.offset)
    raw = fh.read(span.length)
    part_type = span.content_type.split(";")[0].strip().lower()
    if part_type and part_type != DICOM:
        return StowOutcome(*_uids_of(raw), failure=CANNOT_UNDERSTAND)
    try:
        if study is not None:
            keys = InstanceKeys.from_part10(raw)
            if keys.study_instance_uid != study:
                # PS3.18 10.5.1: every instance must belong to the study of the URL.
                return StowOutcome(keys.sop_class_uid, keys.sop_instance_uid, failure=STUDY_MISMATCH)
        result = _ingest().store(raw, Origin("stow", address=request.remote_addr or ""))
    except InvalidInstance as exc:
        log.warning("STOW-RS part refused (cannot understand): %s", exc)
        return StowOutcome(*_uids_of(raw), failure=CANNOT_UNDERSTAND)
    except DuplicateConflict:
        return StowOutcome(*_uids_of(raw), failure=DUPLICATE_SOP_INSTANCE)
    except StorageUnavailable as exc:
        log.error("STOW-RS part not stored: %s", exc)
        return StowOutcome(*_uids_of(raw), failure=OUT_OF_RESOURCES)
    keys = result.keys
    url = (f"{_base()}{ROOT}/studies/{keys.study_instance_uid}/series/{keys.series_instance_uid}"
           f"/instances/{keys.sop_instance_uid}")
    warning = ELEMENTS_DISCARDED if result.outcome is Outcome.KEPT_FIRST else None
    return StowOutcome(keys.sop_class_uid, keys.sop_instance_uid, warning=warning, retrieve_url=url)


# -- WADO-URI (PS3.18 9) ------------------------------------------------------------------

#: What WADO-URI can answer with (PS3.18 9.2.2.x contentType); images first.
URI_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


def _uri_int(name: str, low: int, high: int) -> int | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    if not text.strip().isdigit() or not low <= int(text) <= high:
        abort(400, description=f"{name} must be an integer {low}..{high}, not {text!r}")
    return int(text)


def _uri_float(name: str) -> float | None:
    text = request.args.get(name)
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        abort(400, description=f"{name} must be a number, not {text!r}")


@bp.get("/wado")
def wado_uri() -> Any:
    """``?requestType=WADO&studyUID=&seriesUID=&objectUID=&contentType=…`` (PS3.18 9.2)."""
    args = request.args
    if args.get("requestType") != "WADO":
        abort(400, description="requestType must be WADO")
    uids = [args.get(k, "") for k in ("studyUID", "seriesUID", "objectUID")]
    if not all(uids):
        abort(400, description="studyUID, seriesUID and objectUID are required")
    _check_uid(*uids)
    if args.get("anonymize", "").lower() == "yes":
        abort(400, description="anonymize=yes is not supported")
    if args.get("region"):
        abort(400, description="region is not supported")
    rec = _frames().record(*uids)
    wanted = [t.split(";")[0].strip().lower() for t in args.get("contentType", "").split(",") if t.strip()]
    if not wanted:
        # PS3.18 9.2.2.2: image/jpeg by default for images, application/dicom otherwise.
        wanted = ["image/jpeg" if rec.rows else DICOM]
    for kind in wanted:
        if kind == DICOM:
            return _uri_dicom(rec)
        if rec.rows and kind in URI_IMAGE_TYPES:
            return _uri_image(rec, kind)
        if rec.rows and kind in ("*/*", "image/*"):
            return _uri_image(rec, "image/jpeg")
        if not rec.rows and kind in ("*/*", "application/*"):
            return _uri_dicom(rec)
    abort(406, description=f"available as {DICOM}" + (f", {', '.join(URI_IMAGE_TYPES)}" if rec.rows else ""))


def _uri_dicom(rec: InstanceRecord) -> Response:
    target = request.args.get("transferSyntax", "").strip()
    if not target or target == rec.transfer_syntax_uid:
        return Response(_blob_chunks(_blobs(), rec.blob_key), mimetype=DICOM)
    if target not in NATIVE_TARGETS:
        abort(406, description=f"stored as {rec.transfer_syntax_uid}; available as stored or as "
              "1.2.840.10008.1.2.1 / 1.2.840.10008.1.2")
    return Response(_convert(rec, target), mimetype=DICOM)


def _uri_image(rec: InstanceRecord, kind: str) -> Response:
    frame = _uri_int("frameNumber", 1, max(1, rec.number_of_frames)) or 1
    center, width = _uri_float("windowCenter"), _uri_float("windowWidth")
    if (center is None) != (width is None):
        abort(400, description="windowCenter and windowWidth go together")
    window = Window(center, width) if center is not None and width is not None else None
    rows, columns = _uri_int("rows", 1, MAX_VIEWPORT), _uri_int("columns", 1, MAX_VIEWPORT)
    viewport = Viewport(columns or MAX_VIEWPORT, rows or MAX_VIEWPORT) if rows or columns else None
    quality = _uri_int("imageQuality", 1, 100)
    image = _frames().frame(rec, frame).render(window, viewport)
    return Response(encode_image(image, kind, quality), mimetype=kind)

