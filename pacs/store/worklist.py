"""The reading room's study list and study detail, built as ``select()`` on the index models.

A worklist search is not a C-FIND: people type part of a name the way they say it
(``nguyen van``, ``Nguyễn Văn``, ``an``), so a name matches when every word typed is
the start of a word of the folded name (:func:`pacs.dicom.fold_text`: accents, case and
PN separators dropped, Đ -> D). Patient ID and accession number match as a prefix; the
date range is on StudyDate (``YYYYMMDD`` text, which compares correctly as text); the
modality is any series of the study. Counts of series and images are correlated
subqueries on the foreign-key indexes, so their cost grows with the page, not the archive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, bindparam, exists, func, literal, select
from sqlalchemy.exc import OperationalError

from pacs.dicom import fold_text
from pacs.errors import InvalidQuery, StorageUnavailable
from pacs.store.models import Instance, Patient, Series, Study

P = Patient.__table__
ST = Study.__table__
SE = Series.__table__
IN = Instance.__table__

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50

_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}")


#: Sortable columns: name -> expressions (the study id is always the last tie-breaker).
SORTS: dict[str, tuple[Any, ...]] = {
    "name": (P.c.patient_name_folded,),
    "patient_id": (P.c.patient_id,),
    "date": (ST.c.study_date, ST.c.study_time),
    "accession": (ST.c.accession_number,),
    "description": (ST.c.study_description,),
    "received": (ST.c.created_at,),
}
#: Sorts on computed counts are built per statement (they are subqueries).
COUNT_SORTS = ("series", "images")


def _date(text: str, what: str) -> str:
    """``YYYYMMDD`` from ``YYYYMMDD`` or ``YYYY-MM-DD`` (what an ``<input type=date>`` sends)."""
    m = _DATE.fullmatch(text.strip())
    if not m:
        raise InvalidQuery(f"{what}: {text!r} is not a date (YYYYMMDD or YYYY-MM-DD)", what)
    try:
        date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise InvalidQuery(f"{what}: {text!r} is not a date", what) from None
    return m[1] + m[2] + m[3]


def _int(text: str | None, what: str, default: int, low: int, high: int) -> int:
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidQuery(f"{what} must be an integer, not {text!r}", what) from None
    if not low <= value <= high:
        raise InvalidQuery(f"{what} must be between {low} and {high}", what)
    return value


@dataclass(frozen=True)
class WorklistQuery:
    """A checked study-list search (every field optional)."""

    #: Folded words of the patient name, each matched as a word prefix.
    name_words: tuple[str, ...] = ()
    patient_id: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""
    modalities: tuple[str, ...] = ()
    sort: str = "date"
    descending: bool = True
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> WorklistQuery:
        """From URL parameters (``name patient_id accession from to modality sort dir page
        page_size``); ``InvalidQuery`` names a malformed one."""
        name = fold_text(args.get("name", "").replace("*", " ").replace("?", " "))
        date_from = _date(args["from"], "from") if args.get("from", "").strip() else ""
        date_to = _date(args["to"], "to") if args.get("to", "").strip() else ""
        if date_from and date_to and date_from > date_to:
            raise InvalidQuery("the date range ends before it starts", "to")
        modalities = tuple(m for m in re.split(r"[,\\\s]+", args.get("modality", "").upper()) if m)
        for m in modalities:
            if not _MODALITY.fullmatch(m):
                raise InvalidQuery(f"modality: {m!r} is not a modality code", "modality")
        sort = args.get("sort", "").strip() or "date"
        if sort not in SORTS and sort not in COUNT_SORTS:
            raise InvalidQuery(f"cannot sort by {sort!r}; use one of "
                               f"{', '.join([*SORTS, *COUNT_SORTS])}", "sort")
        direction = args.get("dir", "").strip().lower() or ("desc" if sort in ("date", "received")
                                                            else "asc")
        if direction not in ("asc", "desc"):
            raise InvalidQuery("dir must be asc or desc", "dir")
        return cls(
            name_words=tuple(name.split()),
            patient_id=args.get("patient_id", "").strip(),
            accession=args.get("accession", "").strip(),
            date_from=date_from, date_to=date_to, modalities=modalities, sort=sort,
            descending=direction == "desc",
            page=_int(args.get("page"), "page", 1, 1, 1_000_000),
            page_size=_int(args.get("page_size"), "page_size", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE clauses (on the study joined to its patient)."""
        conds: list[ColumnElement[bool]] = []
        # " " + folded name: every word typed must start a word of the name.
        spaced = literal(" ") + P.c.patient_name_folded
        for word in self.name_words:
            conds.append(spaced.contains(" " + word, autoescape=True))
        if self.patient_id:
            conds.append(P.c.patient_id.startswith(self.patient_id, autoescape=True))
        if self.accession:
            conds.append(ST.c.accession_number.startswith(self.accession, autoescape=True))
        if self.date_from:
            conds.append(ST.c.study_date >= self.date_from)
        if self.date_to:
            conds.append(ST.c.study_date <= self.date_to)
        if self.date_from or self.date_to:
            conds.append(ST.c.study_date != "")  # an unknown date is in no range
        if self.modalities:
            se = SE.alias("w_mod")
            mod = se.c.modality == self.modalities[0] if len(self.modalities) == 1 else \
                se.c.modality.in_(self.modalities)
            conds.append(exists().where(se.c.study_pk == ST.c.id, mod))
        return conds

    def statement(self) -> Select[Any]:
        """One page of studies with their patient, counts and modalities."""
        # The study's counters kept at ingest (models.Study), not counts of rows.
        series_count = ST.c.num_series.label("series_count")
        image_count = ST.c.num_instances.label("image_count")
        stmt = (
            select(
                ST.c.study_instance_uid, ST.c.study_date, ST.c.study_time,
                ST.c.accession_number, ST.c.study_description, ST.c.referring_physician_name,
                ST.c.created_at, P.c.patient_id, P.c.patient_name, P.c.birth_date, P.c.sex,
                series_count, image_count, ST.c.modalities.label("modalities"),
            )
            .select_from(ST.join(P, ST.c.patient_pk == P.c.id))
            .where(*self.conditions())
        )
        keys: tuple[Any, ...]
        if self.sort == "series":
            keys = (series_count,)
        elif self.sort == "images":
            keys = (image_count,)
        else:
            keys = SORTS[self.sort]
        order = [k.desc() if self.descending else k.asc() for k in (*keys, ST.c.id)]
        return (stmt.order_by(*order).limit(self.page_size)
                .offset((self.page - 1) * self.page_size))

    def count_statement(self) -> Select[Any]:
        """The number of matching studies (for paging)."""
        return (select(func.count()).select_from(ST.join(P, ST.c.patient_pk == P.c.id))
                .where(*self.conditions()))


@dataclass(frozen=True)
class WorklistPage:
    """One page of matches and the total number of matches."""

    total: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def search(engine: Engine, query: WorklistQuery) -> WorklistPage:
    """Run ``query``: the total and the requested page as plain dicts."""
    try:
        with engine.connect() as conn:
            total = int(conn.execute(query.count_statement()).scalar_one())
            result = conn.execute(query.statement())
            rows = [dict(r._mapping) for r in result]
    except OperationalError as exc:
        raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
    for row in rows:
        row["modalities"] = sorted({m for m in (row["modalities"] or "").split(",") if m})
        row["created_at"] = _iso(row["created_at"])
    return WorklistPage(total, rows)


# -- one study ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceSummary:
    sop_instance_uid: str
    instance_number: int | None
    frames: int
    rows: int | None
    columns: int | None
    sop_class_uid: str


@dataclass(frozen=True)
class SeriesSummary:
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    instances: list[InstanceSummary] = field(default_factory=list)


@dataclass(frozen=True)
class StudyDetail:
    """A study's header (patient and study attributes) and its series in reading order."""

    header: dict[str, Any]
    series: list[SeriesSummary]


def study_detail(engine: Engine, study_uid: str) -> StudyDetail | None:
    """The study and its series/instances ordered by series number, instance number."""
    head = (
        select(ST.c.id, ST.c.study_instance_uid, ST.c.study_date, ST.c.study_time,
               ST.c.accession_number, ST.c.study_description, ST.c.referring_physician_name,
               ST.c.study_id, P.c.patient_id, P.c.patient_name, P.c.birth_date, P.c.sex)
        .select_from(ST.join(P, ST.c.patient_pk == P.c.id))
        .where(ST.c.study_instance_uid == study_uid)
    )
    body = (
        select(SE.c.id, SE.c.series_instance_uid, SE.c.modality, SE.c.series_number,
               SE.c.series_description, SE.c.body_part_examined, IN.c.sop_instance_uid,
               IN.c.instance_number, IN.c.number_of_frames, IN.c.rows, IN.c.columns,
               IN.c.sop_class_uid)
        .select_from(SE.join(IN, IN.c.series_pk == SE.c.id))
        .where(SE.c.study_pk == bindparam("study_pk"))
        # PS3.3 C.7.3.1 / C.7.6.1: series then instance number; unnumbered ones last, by arrival.
        .order_by(SE.c.series_number.is_(None), SE.c.series_number, SE.c.id,
                  IN.c.instance_number.is_(None), IN.c.instance_number, IN.c.id)
    )
    try:
        with engine.connect() as conn:
            row = conn.execute(head).first()
            if row is None:
                return None
            lines = conn.execute(body, {"study_pk": row.id}).all()
    except OperationalError as exc:
        raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
    header = dict(row._mapping)
    header.pop("id")
    series: dict[int, SeriesSummary] = {}
    for ln in lines:
        s = series.get(ln.id)
        if s is None:
            s = series[ln.id] = SeriesSummary(ln.series_instance_uid, ln.modality, ln.series_number,
                                              ln.series_description, ln.body_part_examined)
        s.instances.append(InstanceSummary(ln.sop_instance_uid, ln.instance_number,
                                           ln.number_of_frames, ln.rows, ln.columns,
                                           ln.sop_class_uid))
    header["modalities"] = sorted({s.modality for s in series.values() if s.modality})
    return StudyDetail(header, list(series.values()))


def latest_study(engine: Engine) -> str:
    """When the newest study arrived (ISO 8601; '' for an empty archive): a cheap change marker."""
    try:
        with engine.connect() as conn:
            return _iso(conn.execute(select(func.max(ST.c.created_at))).scalar_one())
    except OperationalError as exc:
        raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
