"""C-FIND (and later QIDO-RS) matching, built as SQL on indexed columns (PS3.4 C.2.2.2).

:meth:`FindQuery.parse` checks an identifier (level, information model, hierarchical
keys, value syntax) and raises :class:`~pacs.errors.InvalidQuery`; :meth:`FindQuery.statement`
builds one ``select()`` that returns one row per entity at the queried level, with the
``NumberOf…Related…`` counts and ModalitiesInStudy as correlated subqueries (each uses the
``*_pk`` foreign-key indexes, so the cost is per returned row, not per stored row).
:func:`run_find` executes it with a limit and an offset; :class:`FindStream` yields its rows
as the database produces them (C-FIND answers them one by one).

Matching rules (PS3.4 C.2.2.2):

- universal: an empty value, or a value of only ``*`` (C.2.2.2.3, C.2.2.2.4);
- single value: equality;
- wildcard: ``*`` and ``?`` (C.2.2.2.4). Case-sensitive as the standard asks, so it maps to
  ``GLOB`` on SQLite (case-sensitive and able to use a plain B-tree index for a prefix;
  SQLite's ``LIKE`` is case-insensitive and cannot) and to ``LIKE … ESCAPE`` on PostgreSQL
  (``%``, ``_`` and the escape character in the value are escaped);
- range for DA / TM (C.2.2.2.5): ``A-B``, ``-B``, ``A-``; values are DICOM strings, which
  compare correctly as text; a partial TM upper bound (``1200``) includes the whole minute;
- list of UIDs, backslash-separated (C.2.2.2.2). Backslash lists of other values are matched
  as "any of" (a common extension, e.g. ``CT\\MR`` for ModalitiesInStudy);
- person names case- and accent-insensitively on the folded columns
  (:func:`pacs.dicom.fold_text`; ``*``/``?`` stay wildcards): ``nguyen van*``, ``NGUYEN*``,
  ``Nguyễn*`` and ``Dang*`` (for Đặng) all match.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import (
    ColumnElement, Engine, Select, and_, exists, func, literal_column, or_, select,
)
from sqlalchemy.exc import OperationalError

from pacs.dicom import fold_text
from pacs.errors import InvalidQuery, StorageUnavailable
from pacs.store.models import Instance, Patient, Series, Study

P = Patient.__table__
ST = Study.__table__
SE = Series.__table__
IN = Instance.__table__


class Level(enum.Enum):
    """Query/Retrieve levels (0008,0052), top to bottom."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class Model(enum.Enum):
    """Query/Retrieve information models (PS3.4 C.6.1, C.6.2)."""

    PATIENT_ROOT = "patient root"
    STUDY_ROOT = "study root"


_TABLE = {Level.PATIENT: P, Level.STUDY: ST, Level.SERIES: SE, Level.IMAGE: IN}

#: Unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Attr:
    """A key the archive can match and/or return."""

    keyword: str
    level: Level
    #: How a value is matched: text, pn, uid, date, time, int, modalities; "" = return only.
    kind: str
    column: Any = None
    #: Folded search column for person names.
    folded: Any = None


def _attrs() -> dict[str, Attr]:
    a = [
        Attr("PatientName", Level.PATIENT, "pn", P.c.patient_name, P.c.patient_name_folded),
        Attr("PatientID", Level.PATIENT, "text", P.c.patient_id),
        Attr("PatientBirthDate", Level.PATIENT, "date", P.c.birth_date),
        Attr("PatientSex", Level.PATIENT, "text", P.c.sex),
        Attr("NumberOfPatientRelatedStudies", Level.PATIENT, ""),
        Attr("NumberOfPatientRelatedSeries", Level.PATIENT, ""),
        Attr("NumberOfPatientRelatedInstances", Level.PATIENT, ""),
        Attr("StudyInstanceUID", Level.STUDY, "uid", ST.c.study_instance_uid),
        Attr("StudyDate", Level.STUDY, "date", ST.c.study_date),
        Attr("StudyTime", Level.STUDY, "time", ST.c.study_time),
        Attr("AccessionNumber", Level.STUDY, "text", ST.c.accession_number),
        Attr("StudyDescription", Level.STUDY, "text", ST.c.study_description),
        Attr("ReferringPhysicianName", Level.STUDY, "pn", ST.c.referring_physician_name,
             ST.c.referring_physician_folded),
        Attr("StudyID", Level.STUDY, "text", ST.c.study_id),
        # The study's and series' counters kept at ingest (models.Study, models.Series); the
        # modalities are comma-joined there (CS values never contain a comma) and split on
        # the way out. ModalitiesInStudy is matched against the series rows themselves.
        Attr("ModalitiesInStudy", Level.STUDY, "modalities", ST.c.modalities),
        Attr("NumberOfStudyRelatedSeries", Level.STUDY, "", ST.c.num_series),
        Attr("NumberOfStudyRelatedInstances", Level.STUDY, "", ST.c.num_instances),
        Attr("SeriesInstanceUID", Level.SERIES, "uid", SE.c.series_instance_uid),
        Attr("Modality", Level.SERIES, "text", SE.c.modality),
        Attr("SeriesNumber", Level.SERIES, "int", SE.c.series_number),
        Attr("SeriesDescription", Level.SERIES, "text", SE.c.series_description),
        Attr("BodyPartExamined", Level.SERIES, "text", SE.c.body_part_examined),
        Attr("NumberOfSeriesRelatedInstances", Level.SERIES, "", SE.c.num_instances),
        Attr("SOPInstanceUID", Level.IMAGE, "uid", IN.c.sop_instance_uid),
        Attr("SOPClassUID", Level.IMAGE, "uid", IN.c.sop_class_uid),
        Attr("InstanceNumber", Level.IMAGE, "int", IN.c.instance_number),
        Attr("Rows", Level.IMAGE, "int", IN.c.rows),
        Attr("Columns", Level.IMAGE, "int", IN.c.columns),
        Attr("NumberOfFrames", Level.IMAGE, "int", IN.c.number_of_frames),
    ]
    return {x.keyword: x for x in a}


ATTRIBUTES: dict[str, Attr] = _attrs()

_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_UID = re.compile(r"[0-9.]{1,64}")
_INT = re.compile(r"[+-]?\d{1,12}")


@dataclass(frozen=True)
class FindQuery:
    """A checked query: level, model, conditions and the keys to return."""

    level: Level
    model: Model
    #: keyword -> value as given (only supported keys at or above the level; '' = return only).
    keys: Mapping[str, str]
    relational: bool = False
    #: Keys at or above the level that will be returned (always includes the level's unique key).
    returned: tuple[str, ...] = field(default=())

    @classmethod
    def parse(
        cls, level: str | Level, model: Model, keys: Mapping[str, str], *, relational: bool = False,
    ) -> FindQuery:
        """Check the identifier; ``InvalidQuery`` names what is wrong.

        Keys this archive does not know, and keys below the queried level, are not matched
        (the caller answers them empty). With ``relational`` off, the unique key of every
        level above the queried one must be a single value (PS3.4 C.4.1.3.1.1).
        """
        lvl = cls._level(level)
        if model is Model.STUDY_ROOT and lvl is Level.PATIENT:
            # PS3.4 C.6.2: the Study Root model has no PATIENT level.
            raise InvalidQuery("level PATIENT is not part of the Study Root model",
                               "QueryRetrieveLevel", structural=True)
        top = Level.STUDY if model is Model.STUDY_ROOT else Level.PATIENT
        if not relational:
            for above in Level:
                if top.value <= above.value < lvl.value:
                    key = UNIQUE_KEY[above]
                    value = str(keys.get(key, "") or "").strip()
                    if not value or "\\" in value or "*" in value or "?" in value:
                        raise InvalidQuery(
                            f"hierarchical {lvl.name} query needs a single {key} (PS3.4 C.4.1.3.1)",
                            key, structural=True,
                        )
        kept: dict[str, str] = {}
        for keyword, raw in keys.items():
            attr = ATTRIBUTES.get(keyword)
            if attr is None or attr.level.value > lvl.value:
                continue
            value = str(raw or "").strip()
            if attr.kind == "" and value:
                raise InvalidQuery(f"{keyword} is a return key only, it cannot be matched", keyword)
            _check_value(attr, value)
            kept[keyword] = value
        returned = tuple(dict.fromkeys([*kept, UNIQUE_KEY[lvl]]))
        return cls(lvl, model, kept, relational, returned)

    @staticmethod
    def _level(level: str | Level) -> Level:
        if isinstance(level, Level):
            return level
        name = str(level or "").strip().upper()
        if name not in Level.__members__:
            raise InvalidQuery(f"unsupported QueryRetrieveLevel {name!r}", "QueryRetrieveLevel",
                               structural=True)
        return Level[name]

    # -- SQL ---------------------------------------------------------------------------

    def statement(self, dialect: str, *, limit: int | None = None, offset: int = 0) -> Select[Any]:
        """One ``select()``: a row per entity at the level, labelled by DICOM keyword."""
        base = _TABLE[self.level]
        columns: list[Any] = [base.c.id.label("_pk")]
        for keyword in self.returned:
            columns.append(_output(ATTRIBUTES[keyword]).label(keyword))
        stmt = select(*columns).select_from(_joined(self.level))
        conditions = [c for k, v in self.keys.items() if (c := _condition(ATTRIBUTES[k], v, dialect)) is not None]
        if conditions:
            stmt = stmt.where(and_(*conditions))
        stmt = stmt.order_by(base.c.id)
        # LIMIT / OFFSET are written into the SQL, not bound: psycopg prepares a statement
        # after five runs and PostgreSQL then may switch it to a generic plan, which guesses
        # a bound LIMIT at 10 % of the rows and walks study by primary key, filtering all of
        # them (18 ms instead of 2 for a one-day StudyDate at 100,000 studies).
        if limit is not None:
            stmt = stmt.limit(literal_column(str(int(limit))))
        if offset:
            stmt = stmt.offset(literal_column(str(int(offset))))
        return stmt


@dataclass(frozen=True)
class FindResult:
    """Matches at the queried level (keyword -> value) and whether more existed past the limit."""

    rows: list[dict[str, Any]]
    more: bool = False


def run_find(engine: Engine, query: FindQuery, *, limit: int | None = None, offset: int = 0) -> FindResult:
    """Run ``query``; with ``limit`` fetch one row more to tell whether there were more."""
    stream = FindStream(engine, query, limit=limit, offset=offset, stream_first=0)
    rows = list(stream)
    return FindResult(rows, stream.more)


class FindStream:
    """The rows of ``query`` as the database produces them, for an answer sent row by row.

    Why (issue 3, README "Benchmarks"): a C-FIND SCU can print its first answers while the
    database computes the rest. SQLite evaluates the correlated counts one row per step, so
    the first of 98 answers leaves after ~0.1 ms instead of after the whole query (~2 ms).
    The first ``stream_first`` rows are fetched one at a time; the rest in one go, after
    which the connection goes back to the pool, so a slow peer never holds a read
    transaction for long. ``more`` tells, once the stream is exhausted, whether rows past
    ``limit`` existed (one row more is fetched for that). Raises
    :class:`~pacs.errors.StorageUnavailable` (from iteration) when the index is unreachable;
    :class:`~pacs.errors.InvalidQuery` comes from :meth:`FindQuery.parse`, before any row.
    """

    def __init__(self, engine: Engine, query: FindQuery, *, limit: int | None = None,
                 offset: int = 0, stream_first: int = 16) -> None:
        self._engine = engine
        self._limit = limit
        self._stream_first = stream_first
        self._stmt = query.statement(engine.dialect.name,
                                     limit=None if limit is None else limit + 1, offset=offset)
        self.more = False
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rest: list[Any] = []
        try:
            with self._engine.connect() as conn:
                if self._engine.dialect.name == "postgresql":
                    # One SELECT needs no transaction: no BEGIN and no ROLLBACK round trips
                    # (0.5-1.5 ms of a 98-answer query here). Not on SQLite, where the pool's
                    # reset would undo the explicit-BEGIN setup of pacs.store.index.
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                result = conn.execute(self._stmt)
                keys = list(result.keys())
                for raw in result:
                    row = self._take(keys, raw)
                    if row is None:
                        return
                    yield row
                    if self.count >= self._stream_first:
                        rest = list(result.all())
                        break
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc
        for raw in rest:
            row = self._take(keys, raw)
            if row is None:
                return
            yield row

    def _take(self, keys: list[str], raw: Any) -> dict[str, Any] | None:
        """One row as keyword -> value, or None (and ``more``) past the limit."""
        if self._limit is not None and self.count >= self._limit:
            self.more = True
            return None
        self.count += 1
        row = dict(zip(keys, raw, strict=True))
        row.pop("_pk", None)
        if "ModalitiesInStudy" in row:
            row["ModalitiesInStudy"] = sorted({m for m in (row["ModalitiesInStudy"] or "").split(",") if m})
        return row


# -- building blocks ---------------------------------------------------------------------


# SQL expressions are immutable: the joins and the computed columns are built once per
# process and reused by every statement (building them per query cost ~2 ms of each C-FIND).
@functools.cache
def _joined(level: Level) -> Any:
    """The level's table joined to its ancestors (inner joins: every row has its parents)."""
    if level is Level.PATIENT:
        return P
    if level is Level.STUDY:
        return ST.join(P, ST.c.patient_pk == P.c.id)
    if level is Level.SERIES:
        return SE.join(ST, SE.c.study_pk == ST.c.id).join(P, ST.c.patient_pk == P.c.id)
    return (IN.join(SE, IN.c.series_pk == SE.c.id).join(ST, SE.c.study_pk == ST.c.id)
            .join(P, ST.c.patient_pk == P.c.id))


def _output(attr: Attr) -> Any:
    """The column, or a correlated subquery for a patient-level count."""
    if attr.column is not None:
        return attr.column
    return _patient_count(attr.keyword)


@functools.cache
def _patient_count(k: str) -> Any:
    """NumberOfPatientRelated{Studies,Series,Instances} (PS3.4 C.6.1.1.2): a correlated
    count or sum over the patient's few study rows and their counters (cached, see
    :func:`_joined`)."""
    st = ST.alias("c_st")
    if k == "NumberOfPatientRelatedStudies":
        value = func.count()
    elif k == "NumberOfPatientRelatedSeries":
        value = func.coalesce(func.sum(st.c.num_series), 0)
    elif k == "NumberOfPatientRelatedInstances":
        value = func.coalesce(func.sum(st.c.num_instances), 0)
    else:  # pragma: no cover - every other attribute has a column
        raise AssertionError(k)
    return select(value).select_from(st).where(st.c.patient_pk == P.c.id).scalar_subquery()


def _is_universal(value: str) -> bool:
    # C.2.2.2.3 (empty) and C.2.2.2.4 (a value of only "*" matches everything).
    return value == "" or set(value) == {"*"}


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _check_value(attr: Attr, value: str) -> None:
    """Refuse values that are not valid for the attribute's VR (before any SQL is built)."""
    if _is_universal(value):
        return
    parts = value.split("\\")
    if attr.kind == "uid":
        for p in parts:
            if not _UID.fullmatch(p.strip()):
                raise InvalidQuery(f"{attr.keyword}: {p!r} is not a UID (wildcards are not allowed)",
                                   attr.keyword)
    elif attr.kind in ("date", "time"):
        for p in parts:
            _range(attr, p)
    elif attr.kind == "int":
        for p in parts:
            if not _INT.fullmatch(p.strip()):
                raise InvalidQuery(f"{attr.keyword}: {p!r} is not an integer", attr.keyword)


def _range(attr: Attr, value: str) -> tuple[str, str]:
    """``(low, high)`` of a DA/TM single value or range; '' for an open end (C.2.2.2.5)."""
    pattern = _DA if attr.kind == "date" else _TM
    value = value.strip()
    if value.count("-") > 1 or value == "-":
        raise InvalidQuery(f"{attr.keyword}: malformed range {value!r}", attr.keyword)
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    for v in (low, high):
        if v and not pattern.fullmatch(v):
            raise InvalidQuery(f"{attr.keyword}: malformed value {value!r}", attr.keyword)
        if v and attr.kind == "date":
            try:
                date(int(v[:4]), int(v[4:6]), int(v[6:8]))
            except ValueError:
                raise InvalidQuery(f"{attr.keyword}: {v!r} is not a date", attr.keyword) from None
    if low and high and low > high:
        raise InvalidQuery(f"{attr.keyword}: range {value!r} ends before it starts", attr.keyword)
    return low, high


def _wildcard(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """Case-sensitive ``*``/``?`` matching that a B-tree index can serve for a prefix."""
    if dialect == "sqlite":
        # GLOB uses the same * and ?; only "[" opens a character class and must be escaped.
        return column.op("GLOB")(value.replace("[", "[[]"))
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def _text_match(column: Any, value: str, dialect: str) -> ColumnElement[bool] | None:
    parts = [p for p in value.split("\\")]
    exact = [p for p in parts if not _has_wildcard(p)]
    ors: list[ColumnElement[bool]] = [_wildcard(column, p, dialect) for p in parts if _has_wildcard(p)]
    if len(exact) == 1:
        ors.append(column == exact[0])
    elif exact:
        ors.append(column.in_(exact))
    return ors[0] if len(ors) == 1 else or_(*ors)


def _condition(attr: Attr, value: str, dialect: str) -> ColumnElement[bool] | None:
    """The WHERE clause for one key, or None for universal matching."""
    if _is_universal(value):
        return None
    kind = attr.kind
    if kind == "pn":
        # Fold each alternative like the stored key; * and ? survive folding.
        folded = "\\".join(fold_text(p) for p in value.split("\\"))
        return _text_match(attr.folded, folded, dialect)
    if kind == "uid":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        return attr.column == uids[0] if len(uids) == 1 else attr.column.in_(uids)
    if kind in ("date", "time"):
        ors = []
        for part in value.split("\\"):
            low, high = _range(attr, part)
            conds = []
            if low == high:
                conds.append(attr.column == low if kind == "date" else
                             and_(attr.column >= low, attr.column <= low + "~"))
            else:
                if low:
                    conds.append(attr.column >= low)
                if high:
                    # "~" sorts after digits and ".": a partial TM bound (1200) includes 12:00:59.
                    conds.append(attr.column <= (high if kind == "date" else high + "~"))
            # An empty stored value never matches a range (it is "unknown").
            conds.append(attr.column != "")
            ors.append(and_(*conds))
        return ors[0] if len(ors) == 1 else or_(*ors)
    if kind == "int":
        ints = [int(p) for p in value.split("\\")]
        return attr.column == ints[0] if len(ints) == 1 else attr.column.in_(ints)
    if kind == "modalities":
        se = SE.alias("m_se")
        match = _text_match(se.c.modality, value, dialect)
        return exists().where(se.c.study_pk == ST.c.id, match)  # type: ignore[arg-type]
    return _text_match(attr.column, value, dialect)
