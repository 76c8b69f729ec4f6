"""The instance metadata cache: DICOM JSON without bulk data, and frame byte ranges, per instance.

Built at ingest (:meth:`pacs.ingest.IngestService.store` calls :func:`build_entry` while the
blob is being written, and :meth:`MetadataCache.put` after the index row is committed), so
WADO-RS metadata of a 300-slice series is one SELECT, not 300 blob reads (PS3.18 10.4.1.1.2).

It is derived data, never the source of truth, which is why it can live in its own
transaction after the instance row: a row is valid only while its ``blob_key`` equals the
instance's (a replaced instance is a miss, never stale JSON), and a missing row (an instance
stored before this cache existed, or a cache write that failed) is rebuilt from the blob on
first use by :meth:`MetadataCache.entries`.

BulkDataURIs are stored relative to the instance URL (``bulkdata/7FE00010``) because the
public base URL is a setting that may change; :func:`absolute` completes them when served.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from sqlalchemy import LargeBinary, Text, bindparam, literal, null, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from pacs.dicomjson import dataset_json, sorted_object, tag_hex
from pacs.errors import InvalidInstance, StorageUnavailable
from pacs.pixeldata import DEFLATED, PIXEL_TAGS, FrameMap, locate_frames
from pacs.store.blobs import BlobStore
from pacs.store.index import Index, InstanceRecord
from pacs.store.models import Instance, InstanceMetadata, Series, Study

log = logging.getLogger(__name__)

#: The JSON key whose values :func:`absolute` completes (a JSON string value cannot contain
#: this text unescaped, so it only ever matches a real key).
_BULK_KEY = b'"BulkDataURI":"'
_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD"}


class Entry:
    """One cached instance: compressed DICOM JSON (relative BulkDataURIs) and its frame map.

    The frame map is kept as JSON text and parsed on first use: a metadata answer for a
    300-slice series needs none of the 300 maps.
    """

    __slots__ = ("dicom_json", "_frames", "_frames_text")

    def __init__(self, dicom_json: bytes, frames: FrameMap | None = None, frames_text: str | None = None) -> None:
        self.dicom_json = dicom_json
        self._frames = frames
        self._frames_text = frames_text

    @property
    def frames(self) -> FrameMap | None:
        if self._frames is None and self._frames_text:
            self._frames = FrameMap.from_json(json.loads(self._frames_text))
        return self._frames

    def json_bytes(self) -> bytes:
        return zlib.decompress(self.dicom_json)

    def frames_text(self) -> str | None:
        if self._frames_text is None and self._frames is not None:
            self._frames_text = json.dumps(self._frames.to_json(), separators=(",", ":"))
        return self._frames_text


def build_entry(raw: bytes) -> Entry:
    """Parse a Part 10 instance once: its DICOM JSON (no file meta, no bulk values) and frames.

    Elements after the pixel data (trailing padding, digital signatures) are not included.
    Raises ``InvalidInstance`` when pydicom cannot read the header.
    """
    fp = io.BytesIO(raw)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        pixel_tag: int | None = None
        pixel_vr = "OB"
        frames: FrameMap | None = None
        if ts == DEFLATED:
            # The stop position is in the inflated stream pydicom made: read it all instead.
            full = dcmread(io.BytesIO(raw))
            for tag in sorted(PIXEL_TAGS):
                if tag in full:
                    pixel_tag, pixel_vr = tag, _PIXEL_VR.get(tag, full[tag].VR)
                    del full[tag]
            ds = full
        else:
            pos = fp.tell()
            if pos + 8 <= len(raw):
                little = ts != "1.2.840.10008.1.2.2"
                group, element = (int.from_bytes(raw[pos:pos + 2], "little" if little else "big"),
                                  int.from_bytes(raw[pos + 2:pos + 4], "little" if little else "big"))
                tag = (group << 16) | element
                if tag in PIXEL_TAGS:
                    pixel_tag = tag
                    if ts != "1.2.840.10008.1.2" and raw[pos + 4:pos + 6].isalpha():
                        pixel_vr = raw[pos + 4:pos + 6].decode("ascii")
                    else:
                        pixel_vr = _PIXEL_VR.get(tag, "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB")
                    frames = locate_frames(raw, pos, ds, ts)
        obj = dataset_json(ds, bulk_uri=lambda path: "bulkdata/" + path, skip_groups=(0x0002,))
    except InvalidInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise InvalidInstance(f"cannot read the header for metadata: {exc}") from exc
    if pixel_tag is not None:
        key = tag_hex(pixel_tag)
        obj[key] = {"vr": pixel_vr, "BulkDataURI": "bulkdata/" + key}
    # PS3.18 10.6.1 Table 10.6.1-5: the transfer syntaxes the instance can be retrieved in as stored.
    obj["00083002"] = {"vr": "UI", "Value": [ts]}
    text = json.dumps(sorted_object(obj), ensure_ascii=False, separators=(",", ":"))
    return Entry(zlib.compress(text.encode("utf-8"), 6), frames)


def absolute(json_bytes: bytes, instance_url: str) -> bytes:
    """Complete the relative BulkDataURIs of a cached object with ``instance_url`` + ``/``."""
    prefix = json.dumps(instance_url.rstrip("/") + "/", ensure_ascii=False)[1:-1].encode("utf-8")
    return json_bytes.replace(_BULK_KEY, _BULK_KEY + prefix)


@dataclass(frozen=True)
class Document:
    """An instance's UIDs and its cached compressed DICOM JSON (None on a miss)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    dicom_json: bytes | None


@dataclass(frozen=True)
class Cached:
    """An instance of a listing and its cache entry (None on a miss)."""

    record: InstanceRecord
    entry: Entry | None


class MetadataCache:
    """Reads and writes :class:`~pacs.store.models.InstanceMetadata` rows through the index engine."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._documents = self._build_documents()

    def put(self, sop_instance_uid: str, blob_key: str, entry: Entry, *, replace: bool = True) -> bool:
        """Attach ``entry`` to the instance if it still points at ``blob_key``; True if written.

        One statement: ``INSERT … SELECT`` from the instance row with that blob key, so an
        entry is never attached to other bytes (a concurrent overwrite makes it a no-op).
        """
        engine = self.index.engine
        insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        inst, meta = Instance.__table__, InstanceMetadata.__table__
        source = select(inst.c.id, inst.c.blob_key, _literal_bytes(entry.dicom_json),
                        _literal_text(entry.frames_text())).where(
            inst.c.sop_instance_uid == sop_instance_uid, inst.c.blob_key == blob_key)
        stmt = insert(meta).from_select(["instance_pk", "blob_key", "dicom_json", "frames"], source)
        if replace:
            stmt = stmt.on_conflict_do_update(
                index_elements=["instance_pk"],
                set_={"blob_key": stmt.excluded.blob_key, "dicom_json": stmt.excluded.dicom_json,
                      "frames": stmt.excluded.frames})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["instance_pk"])
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    return bool(conn.execute(stmt).rowcount)
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def listing(self, study: str, series: str | None = None, sop: str | None = None) -> list[Cached]:
        """A study's (series', instance's) instances in reading order, each with its entry or None."""
        inst, meta = Instance.__table__, InstanceMetadata.__table__
        se, st = Series.__table__, Study.__table__
        q = (
            select(inst.c.sop_instance_uid, se.c.series_instance_uid, st.c.study_instance_uid,
                   inst.c.sop_class_uid, inst.c.transfer_syntax_uid, inst.c.blob_key, inst.c.size,
                   inst.c.sha256, inst.c.received_at, inst.c.rows, inst.c.number_of_frames,
                   meta.c.blob_key, meta.c.dicom_json, meta.c.frames)
            .select_from(inst.join(se, inst.c.series_pk == se.c.id).join(st, se.c.study_pk == st.c.id)
                         .outerjoin(meta, meta.c.instance_pk == inst.c.id))
            .where(st.c.study_instance_uid == study)
            .order_by(se.c.series_number, se.c.id, inst.c.instance_number, inst.c.id)
        )
        if series is not None:
            q = q.where(se.c.series_instance_uid == series)
        if sop is not None:
            q = q.where(inst.c.sop_instance_uid == sop)
        try:
            with self.index.engine.connect() as conn:
                rows = conn.execute(q).all()
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
        out = []
        for row in rows:
            record = InstanceRecord(*row[:11])
            entry = None
            if row[11] is not None and row[11] == record.blob_key:
                entry = Entry(bytes(row[12]), frames_text=row[13])
            out.append(Cached(record, entry))
        return out

    def documents(self, study: str, series: str | None = None, sop: str | None = None) -> list[Document]:
        """The cached JSON of a study's (series', instance's) instances in reading order.

        The metadata path: only the columns it needs, one statement built once per shape
        (WADO-RS series metadata of a 300-slice CT is this one query).
        """
        stmt = self._documents[(series is not None, sop is not None)]
        params = {"study": study, "series": series, "sop": sop}
        try:
            with self.index.engine.connect() as conn:
                rows = conn.execute(stmt, params).all()
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
        return [Document(r[0], r[1], r[2], r[3] if r[3] is not None and r[4] == r[5] else None)
                for r in rows]

    def _build_documents(self) -> dict[tuple[bool, bool], Any]:
        inst, meta = Instance.__table__, InstanceMetadata.__table__
        se, st = Series.__table__, Study.__table__
        base = (
            select(inst.c.sop_instance_uid, se.c.series_instance_uid, st.c.study_instance_uid,
                   meta.c.dicom_json, meta.c.blob_key, inst.c.blob_key)
            .select_from(inst.join(se, inst.c.series_pk == se.c.id).join(st, se.c.study_pk == st.c.id)
                         .outerjoin(meta, meta.c.instance_pk == inst.c.id))
            .where(st.c.study_instance_uid == bindparam("study"))
            .order_by(se.c.series_number, se.c.id, inst.c.instance_number, inst.c.id)
        )
        out = {}
        for by_series in (False, True):
            for by_sop in (False, True):
                q = base
                if by_series:
                    q = q.where(se.c.series_instance_uid == bindparam("series"))
                if by_sop:
                    q = q.where(inst.c.sop_instance_uid == bindparam("sop"))
                out[(by_series, by_sop)] = q
        return out

    def entries(self, items: Iterable[Cached], blobs: BlobStore) -> list[tuple[InstanceRecord, Entry | None]]:
        """Fill the misses of ``items`` from their blobs (and store them); unreadable ones stay None."""
        out: list[tuple[InstanceRecord, Entry | None]] = []
        for item in items:
            entry = item.entry
            if entry is None:
                entry = self.rebuild(item.record, blobs)
            out.append((item.record, entry))
        return out

    def json_of(self, doc: Document, blobs: BlobStore) -> bytes | None:
        """The DICOM JSON of a document, rebuilt from its blob on a miss; None if unreadable."""
        if doc.dicom_json is not None:
            return zlib.decompress(doc.dicom_json)
        record = self.index.get_instance(doc.sop_instance_uid)
        entry = self.rebuild(record, blobs) if record is not None else None
        return entry.json_bytes() if entry is not None else None

    def rebuild(self, record: InstanceRecord, blobs: BlobStore) -> Entry | None:
        """Build the entry of one instance from its blob and cache it; None if the blob is unusable."""
        try:
            entry = build_entry(blobs.get(record.blob_key))
        except (InvalidInstance, StorageUnavailable) as exc:
            log.warning("metadata of instance %s unavailable: %s", record.sop_instance_uid, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. BlobNotFound: the listing goes on without it
            log.warning("metadata of instance %s unavailable: %s: %s", record.sop_instance_uid,
                        type(exc).__name__, exc)
            return None
        try:
            self.put(record.sop_instance_uid, record.blob_key, entry)
        except StorageUnavailable as exc:
            log.warning("could not cache metadata of instance %s: %s", record.sop_instance_uid, exc)
        return entry


def _literal_bytes(value: bytes) -> Any:
    return literal(value, LargeBinary)


def _literal_text(value: str | None) -> Any:
    return null() if value is None else literal(value, Text)
