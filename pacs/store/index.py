"""The index: one SQLAlchemy engine per process, short transactions, plain dataclasses out.

Safe under concurrent writers (threads, processes and nodes): rows are created with
``INSERT … ON CONFLICT DO NOTHING`` on their UID and then read back, so two
associations storing the same study never make two rows and never fail on each other.
Works on SQLite (WAL, one writer at a time, ``BEGIN IMMEDIATE``) and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (Connection, Engine, bindparam, case, create_engine, event, func, or_, select, text,
                        update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pacs.dicom import InstanceKeys
from pacs.errors import StorageUnavailable
from pacs.store.blobs import BlobInfo
from pacs.store.models import Instance, InstanceMetadata, Patient, Series, Study

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class CountDrift:
    """A counter kept at ingest that disagrees with the rows (:meth:`Index.recount`).

    ``kept`` and ``counted``: ``(num_instances,)`` for a series; ``(num_series,
    num_instances, modalities)`` for a study."""

    level: str
    pk: int
    uid: str
    kept: tuple[Any, ...]
    counted: tuple[Any, ...]


@dataclass(frozen=True)
class InstanceRecord:
    """One indexed instance, as callers outside the index see it."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    received_at: datetime
    #: Image geometry from the index (None for objects without pixel data).
    rows: int | None = None
    number_of_frames: int = 1


@dataclass(frozen=True)
class AddResult:
    """``added`` is False when the SOP Instance UID was already indexed (``existing`` tells by whom)."""

    added: bool
    existing: InstanceRecord | None = None


@dataclass(frozen=True)
class CachedMetadata:
    """An instance's metadata-cache row as stored (:class:`pacs.store.metadata.Entry`):
    zlib-compressed DICOM JSON and the frame map's JSON text (or None)."""

    dicom_json: bytes
    frames: str | None = None


@dataclass(frozen=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def patient_key(keys: InstanceKeys) -> str:
    """The archive's patient identity: PatientID, else name and birth date (PS3.4 C.6.1)."""
    if keys.patient_id:
        return "id:" + keys.patient_id
    return f"nb:{keys.patient_name}|{keys.patient_birth_date}"


def make_engine(url: str, *, fsync: bool = True) -> Engine:
    """An engine set up for concurrent ingest on SQLite or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        _sqlite_setup(engine, fsync=fsync)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_setup(engine: Engine, *, fsync: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged store survives power loss.
        cur.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front (IMMEDIATE): a deferred transaction that reads
        # first and then writes fails at once with SQLITE_BUSY instead of waiting.
        if conn.get_execution_options().get("sqlite_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class Index:
    """Add, look up and list instances in the SQL index."""

    def __init__(self, url: str, *, fsync: bool = True, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url, fsync=fsync)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._insert = sqlite.insert if self.engine.dialect.name == "sqlite" else postgresql.insert
        # Built once: values go in as parameters so the compiled SQL is reused every time.
        inst = Instance.__table__
        self._insert_instance = (
            self._insert(inst)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(inst.c.id)
        )
        meta = InstanceMetadata.__table__
        insert_meta = self._insert(meta)
        # A row left by an instance of the same primary key (SQLite may reuse the id of a
        # deleted last row) is replaced: the cache names the bytes it was built from.
        self._insert_metadata = insert_meta.on_conflict_do_update(
            index_elements=["instance_pk"],
            set_={"blob_key": insert_meta.excluded.blob_key, "dicom_json": insert_meta.excluded.dicom_json,
                  "frames": insert_meta.excluded.frames})
        self._locate = (
            select(inst.c.sop_instance_uid, Series.series_instance_uid, Study.study_instance_uid,
                   inst.c.sop_class_uid, inst.c.transfer_syntax_uid, inst.c.blob_key, inst.c.size,
                   inst.c.sha256, inst.c.received_at, inst.c.rows, inst.c.number_of_frames)
            .join(Series.__table__, inst.c.series_pk == Series.id)
            .join(Study.__table__, Series.study_pk == Study.id)
            .where(inst.c.sop_instance_uid == bindparam("uid"))
        )
        series, study = Series.__table__, Study.__table__
        # Last in the instance's transaction: on PostgreSQL the series and study rows stay
        # locked until the commit, so parallel stores into one study serialize only on the
        # commit itself. Each UPDATE computes from the row it locks (``x = x + 1``), so under
        # PostgreSQL's READ COMMITTED a writer that waited for the lock adds to the value the
        # other one committed: no count is lost.
        self._count_instance = (
            update(series).where(series.c.id == bindparam("pk"))
            .values(num_instances=series.c.num_instances + 1)
            .returning(series.c.num_instances, series.c.modality)
        )
        self._count_in_study = (
            update(study).where(study.c.id == bindparam("pk"))
            .values(num_instances=study.c.num_instances + 1)
        )
        # A series' first instance: one more series, and its modality joins the list unless
        # it is empty or already there (``,CT,`` in ``,MR,CT,``; "_" in a CS value is escaped).
        self._count_series_in_study = (
            update(study).where(study.c.id == bindparam("pk"))
            .values(
                num_series=study.c.num_series + 1, num_instances=study.c.num_instances + 1,
                modalities=case(
                    (or_(bindparam("modality") == "",
                         ("," + study.c.modalities + ",").like(bindparam("pattern"), escape="/")),
                     study.c.modalities),
                    (study.c.modalities == "", bindparam("modality")),
                    else_=study.c.modalities + "," + bindparam("modality"),
                ))
        )
        #: Series UID -> (series row id, its study's row id), so a series' later instances skip
        #: four look-ups. A throwaway node-local cache: a miss or a stale entry costs a query,
        #: never data.
        self._series_pk: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"Index({self.engine.url.render_as_string(hide_password=True)!r})"

    def session(self) -> Session:
        return self._session()

    @contextlib.contextmanager
    def write_session(self) -> Iterator[Session]:
        """One write transaction, committed on success; SQLite's lock is taken at BEGIN."""
        with self._session() as s:
            s.connection(execution_options={"sqlite_immediate": True})
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe to run at every start)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        try:
            with self.engine.begin() as conn:
                if self.engine.dialect.name == "postgresql":
                    # Several nodes may start at once: one migrates, the others wait (PS: app lock id).
                    conn.execute(text("SELECT pg_advisory_xact_lock(7263540)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unreachable: {exc.orig}") from exc

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except SQLAlchemyError:
                return None

    # -- writes -------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A Core connection in one write transaction (SQLite: lock taken at BEGIN)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    def add_instance(
        self, keys: InstanceKeys, blob: BlobInfo, *, origin: str, calling_ae: str = "",
        received_at: datetime | None = None, metadata: CachedMetadata | None = None,
    ) -> AddResult:
        """Index one stored blob; return ``added=False`` with the existing row if the UID is known.

        One transaction: patient, study and series rows are created if missing, then the
        instance row, then (``metadata``) its metadata-cache row. It is committed (and, on
        SQLite with fsync, synced) before returning. Core statements, not the ORM: this runs
        once per received instance.
        """
        now = received_at or utcnow()
        try:
            try:
                return self._add(keys, blob, origin, calling_ae, now, metadata)
            except IntegrityError:
                # A cached series row was deleted by another node: forget the cache, retry once.
                self._series_pk.clear()
                return self._add(keys, blob, origin, calling_ae, now, metadata)
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def _attach_metadata(self, conn: Connection, instance_pk: int, blob_key: str,
                         metadata: CachedMetadata) -> None:
        """The instance's metadata-cache row, in the instance's own transaction.

        Why here: written in a transaction of its own it cost a second commit (and fsync)
        per received instance, 1.3 ms of 8.5 on SQLite. Inside a SAVEPOINT: the cache is
        derived data (rebuilt from the blob on first use), so its failure never fails the store.
        """
        try:
            with conn.begin_nested():
                conn.execute(self._insert_metadata, {
                    "instance_pk": instance_pk, "blob_key": blob_key,
                    "dicom_json": metadata.dicom_json, "frames": metadata.frames})
        except OperationalError:
            raise  # the database itself is failing: so is the store
        except Exception as exc:  # noqa: BLE001 - derived data: log, store the instance anyway
            log.warning("metadata cache row of instance %d not written: %s", instance_pk, exc)

    def _add(
        self, keys: InstanceKeys, blob: BlobInfo, origin: str, calling_ae: str, now: datetime,
        metadata: CachedMetadata | None = None,
    ) -> AddResult:
        with self._write() as conn:
            parents = self._series_pk.get(keys.series_instance_uid)
            if parents is None:
                parents = self._parents(conn, keys, now)
            series_pk, study_pk = parents
            params = dict(
                sop_instance_uid=keys.sop_instance_uid, series_pk=series_pk,
                sop_class_uid=keys.sop_class_uid, instance_number=keys.instance_number,
                transfer_syntax_uid=keys.transfer_syntax_uid, rows=keys.rows,
                columns=keys.columns, number_of_frames=keys.number_of_frames,
                size=blob.size, sha256=blob.sha256, blob_key=blob.key,
                received_at=now, calling_ae=calling_ae[:16], origin=origin[:16],
            )
            inserted = conn.execute(self._insert_instance, params).first()
            if inserted is not None:
                if metadata is not None:
                    self._attach_metadata(conn, int(inserted[0]), blob.key, metadata)
                self._count(conn, series_pk, study_pk)
                self._series_pk[keys.series_instance_uid] = parents
                return AddResult(added=True)
        return AddResult(added=False, existing=self.get_instance(keys.sop_instance_uid))

    def _count(self, conn: Connection, series_pk: int, study_pk: int) -> None:
        """One more instance in the series' and the study's counters (models.Series, .Study)."""
        in_series, modality = conn.execute(self._count_instance, {"pk": series_pk}).one()
        if in_series != 1:
            conn.execute(self._count_in_study, {"pk": study_pk})
            return
        escaped = modality.replace("/", "//").replace("%", "/%").replace("_", "/_")
        conn.execute(self._count_series_in_study,
                     {"pk": study_pk, "modality": modality, "pattern": f"%,{escaped},%"})

    def _parents(self, conn: Connection, keys: InstanceKeys, now: datetime) -> tuple[int, int]:
        patient_pk = self._get_or_create(
            conn, Patient, "patient_key", patient_key(keys),
            patient_id=keys.patient_id, patient_name=keys.patient_name,
            patient_name_folded=keys.patient_name_folded,
            birth_date=keys.patient_birth_date, sex=keys.patient_sex, created_at=now,
        )
        study_pk = self._get_or_create(
            conn, Study, "study_instance_uid", keys.study_instance_uid,
            patient_pk=patient_pk, study_date=keys.study_date, study_time=keys.study_time,
            accession_number=keys.accession_number, study_description=keys.study_description,
            referring_physician_name=keys.referring_physician_name,
            referring_physician_folded=keys.referring_physician_folded,
            study_id=keys.study_id, created_at=now,
        )
        # An existing series keeps the study it was first stored in (its UID names it).
        return self._get_or_create(
            conn, Series, "series_instance_uid", keys.series_instance_uid, ("study_pk",),
            study_pk=study_pk, modality=keys.modality, series_number=keys.series_number,
            series_description=keys.series_description,
            body_part_examined=keys.body_part_examined, created_at=now,
        )

    def _get_or_create(self, conn: Connection, model: Any, key_name: str, key: str,
                       also: tuple[str, ...] = (), **values: Any) -> Any:
        """The row id (with the ``also`` columns: a tuple) of the row keyed ``key``, made if missing."""
        table = model.__table__
        key_col = table.c[key_name]
        wanted = select(table.c.id, *(table.c[c] for c in also)).where(key_col == key)
        row = conn.execute(wanted).first()
        if row is None:
            conn.execute(
                self._insert(table).values({key_name: key, **values})
                .on_conflict_do_nothing(index_elements=[key_name])
            )
            row = conn.execute(wanted).one()
        return tuple(int(v) for v in row) if also else int(row[0])

    def replace_blob(self, sop_instance_uid: str, blob: BlobInfo, *, origin: str, calling_ae: str = "") -> str:
        """Point an instance at a new blob (the "overwrite" duplicate policy); return the old key."""
        try:
            with self.write_session() as s:
                row = s.execute(
                    select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
                ).scalar_one()
                old = row.blob_key
                row.blob_key, row.size, row.sha256 = blob.key, blob.size, blob.sha256
                row.received_at, row.origin, row.calling_ae = utcnow(), origin[:16], calling_ae[:16]
                return old
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def clear(self) -> None:
        """Delete every row (``pacs reindex`` rebuilds from the blob store afterwards)."""
        self._series_pk.clear()
        with self.write_session() as s:
            for model in (Instance, Series, Study, Patient):
                s.execute(model.__table__.delete())

    # -- reads --------------------------------------------------------------------

    def instances_of(self, study_uid: str, series_uid: str | None = None) -> list[InstanceRecord]:
        """A study's (or one of its series') instances in reading order: series, then instance number."""
        q = (
            select(Instance, Series.series_instance_uid, Study.study_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        )
        if series_uid is not None:
            q = q.where(Series.series_instance_uid == series_uid)
        try:
            with self.session() as s:
                return [
                    InstanceRecord(
                        sop_instance_uid=inst.sop_instance_uid, series_instance_uid=se,
                        study_instance_uid=st, sop_class_uid=inst.sop_class_uid,
                        transfer_syntax_uid=inst.transfer_syntax_uid, blob_key=inst.blob_key,
                        size=inst.size, sha256=inst.sha256, received_at=inst.received_at,
                        rows=inst.rows, number_of_frames=inst.number_of_frames,
                    )
                    for inst, se, st in s.execute(q)
                ]
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def get_instance(self, sop_instance_uid: str) -> InstanceRecord | None:
        # Core, not the ORM: this runs for every rendered image the viewer asks for.
        try:
            with self.engine.connect() as conn:
                row = conn.execute(self._locate, {"uid": sop_instance_uid}).first()
                if row is None:
                    return None
                return InstanceRecord(*row)
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    def iter_blobs(self, batch: int = 1000) -> Iterator[tuple[str, str, str, int]]:
        """Yield ``(sop_instance_uid, blob_key, sha256, size)`` for every instance, in id order."""
        last = 0
        while True:
            with self.session() as s:
                rows = s.execute(
                    select(Instance.id, Instance.sop_instance_uid, Instance.blob_key,
                           Instance.sha256, Instance.size)
                    .where(Instance.id > last).order_by(Instance.id).limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield row[1], row[2], row[3], row[4]
            last = rows[-1][0]

    def recount(self, *, fix: bool = False) -> list[CountDrift]:
        """Check the counters kept at ingest (models.Series.num_instances; models.Study
        num_series, num_instances, modalities) against the rows; with ``fix``, rewrite those
        that differ. Returns what differed.

        Why: the counters are derived data that C-FIND, QIDO-RS and the worklist answer from;
        a hand-edited database or a bug would make them lie quietly (``pacs verify``). One
        SELECT reads everything, so a store running meanwhile is seen entirely or not at all;
        with ``fix`` it runs inside a write transaction that keeps stores waiting (SQLite:
        the write lock; PostgreSQL: the two tables locked against writes).
        """
        try:
            with (self._write() if fix else self.engine.connect()) as conn:
                if fix and self.engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("LOCK TABLE study, series IN EXCLUSIVE MODE")
                drift = self._count_drift(conn)
                if fix:
                    series = Series.__table__
                    study = Study.__table__
                    fixed_series = [{"pk": d.pk, "n": d.counted[0]} for d in drift if d.level == "SERIES"]
                    fixed_studies = [{"pk": d.pk, "ns": d.counted[0], "ni": d.counted[1], "m": d.counted[2]}
                                     for d in drift if d.level == "STUDY"]
                    if fixed_series:
                        conn.execute(update(series).where(series.c.id == bindparam("pk"))
                                     .values(num_instances=bindparam("n")), fixed_series)
                    if fixed_studies:
                        conn.execute(update(study).where(study.c.id == bindparam("pk"))
                                     .values(num_series=bindparam("ns"), num_instances=bindparam("ni"),
                                             modalities=bindparam("m")), fixed_studies)
                    self._series_pk.clear()
                return drift
        except OperationalError as exc:
            raise StorageUnavailable(f"index database unavailable: {exc.orig}") from exc

    @staticmethod
    def _count_drift(conn: Connection) -> list[CountDrift]:
        st, se, inst = Study.__table__, Series.__table__, Instance.__table__
        counted = (select(func.count()).select_from(inst).where(inst.c.series_pk == se.c.id)
                   .scalar_subquery())
        rows = conn.execute(
            select(st.c.id, st.c.study_instance_uid, st.c.num_series, st.c.num_instances,
                   st.c.modalities, se.c.id, se.c.series_instance_uid, se.c.modality,
                   se.c.num_instances, counted)
            .select_from(st.outerjoin(se, se.c.study_pk == st.c.id))
            .order_by(st.c.id, se.c.id)
        ).all()
        drift: list[CountDrift] = []
        by_study: dict[int, list[Any]] = {}
        for row in rows:
            by_study.setdefault(row[0], []).append(row)
            if row[5] is not None and row[8] != row[9]:
                drift.append(CountDrift("SERIES", row[5], row[6], (row[8],), (row[9],)))
        for study_rows in by_study.values():
            first = study_rows[0]
            holding = [r for r in study_rows if r[5] is not None and r[9] > 0]
            modalities: list[str] = []
            for r in holding:
                if r[7] and r[7] not in modalities:
                    modalities.append(r[7])
            truth = (len(holding), sum(r[9] for r in holding), ",".join(modalities))
            kept = (first[2], first[3], first[4])
            # The modalities compare as sets: the kept list is in arrival order.
            if kept[:2] != truth[:2] or set(filter(None, kept[2].split(","))) != set(modalities):
                drift.append(CountDrift("STUDY", first[0], first[1], kept, truth))
        return drift

    def counts(self) -> Counts:
        with self.session() as s:
            return Counts(
                patients=s.scalar(select(func.count()).select_from(Patient)) or 0,
                studies=s.scalar(select(func.count()).select_from(Study)) or 0,
                series=s.scalar(select(func.count()).select_from(Series)) or 0,
                instances=s.scalar(select(func.count()).select_from(Instance)) or 0,
                bytes=s.scalar(select(func.coalesce(func.sum(Instance.size), 0))) or 0,
            )
