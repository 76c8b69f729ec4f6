"""The C-FIND / QIDO matching engine (PS3.4 C.2.2.2) on SQLite and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from pacs.errors import InvalidQuery
from pacs.ingest import IngestService, Origin
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.query import FindQuery, FindStream, Level, Model, run_find
from tests.fixtures.find_data import (
    S1, S2, S3, S4, S5, SE1, SE2, SE3, datasets, instance_uid,
)
from tests.test_dicom import part10

PR, SR = Model.PATIENT_ROOT, Model.STUDY_ROOT


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    tmp = tmp_path_factory.mktemp("query")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'index.sqlite'}"
        cleanup = None
    else:
        import uuid

        from tests.fixtures.postgres import create_database, drop_database, pg_url_for

        server = request.getfixturevalue("pg_server")
        dbname = f"q_{uuid.uuid4().hex}"
        create_database(server, dbname)
        url = pg_url_for(server, dbname)
        cleanup = lambda: drop_database(server, dbname)  # noqa: E731
    idx = Index(url, fsync=False)
    idx.migrate()
    ingest = IngestService(FilesystemBlobStore(tmp / "blobs", fsync=False), idx)
    for ds in datasets():
        ingest.store(part10(ds), Origin("import"))
    yield idx
    idx.dispose()
    if cleanup:
        cleanup()


def find(index: Index, level: str, model: Model, limit: int | None = None, offset: int = 0,
         relational: bool = False, **keys: str) -> list[dict]:
    q = FindQuery.parse(level, model, keys, relational=relational)
    return run_find(index.engine, q, limit=limit, offset=offset).rows


def uids(rows: list[dict], key: str = "StudyInstanceUID") -> list[str]:
    return sorted(r[key] for r in rows)


@pytest.mark.parametrize("name", ["NGUYEN*", "nguyen*", "Nguyễn*", "nguyễn*", "NGUYỄN*"])
def test_name_prefix_case_and_accent_insensitive(index: Index, name: str) -> None:
    rows = find(index, "PATIENT", PR, PatientName=name, PatientID="")
    assert sorted(r["PatientID"] for r in rows) == ["VN001", "VN003"]
    assert {r["PatientName"] for r in rows} == {"Nguyễn^Văn An", "Nguyễn^Thị Hương"}  # original text back


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nguyen van*", ["VN001"]),
        ("Nguyễn^Văn*", ["VN001"]),
        ("NGUYEN^VAN AN", ["VN001"]),  # single value: exact on the folded key
        ("nguyen van", []),  # single value is not a prefix
        ("Dang*", ["VN002"]),  # Đ folds to D
        ("đặng^minh châu", ["VN002"]),
        ("*NGUYEN", ["VN004"]),
        ("?E VAN*", ["VN004"]),
        ("*VAN*", ["VN001", "VN004"]),
        ("*", ["VN001", "VN002", "VN003", "VN004"]),
        ("", ["VN001", "VN002", "VN003", "VN004"]),
        ("TRAN*", []),
    ],
)
def test_person_name_matching(index: Index, name: str, expected: list[str]) -> None:
    assert sorted(r["PatientID"] for r in find(index, "PATIENT", PR, PatientName=name)) == expected


def test_referring_physician_folded(index: Index) -> None:
    assert uids(find(index, "STUDY", SR, ReferringPhysicianName="tran thi*")) == sorted([S1, S3])


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("20261105", [S1]),
        ("20261101-20261130", [S1, S2]),
        ("-20261031", [S4, S5]),
        ("20261201-", [S3]),
        ("20261031-20261031", [S4]),
        ("20261105\\20261201", [S1, S3]),
        ("19990101", []),
    ],
)
def test_study_date(index: Index, date: str, expected: list[str]) -> None:
    assert uids(find(index, "STUDY", SR, StudyDate=date)) == sorted(expected)


@pytest.mark.parametrize(
    ("time", "expected"),
    [("1000-1200", [S1]), ("0830", [S2]), ("2359-", [S4]), ("-0900", [S2, S5]), ("101500", [S1])],
)
def test_study_time(index: Index, time: str, expected: list[str]) -> None:
    assert uids(find(index, "STUDY", SR, StudyTime=time)) == sorted(expected)


def test_uid_list_and_single(index: Index) -> None:
    assert uids(find(index, "STUDY", SR, StudyInstanceUID=f"{S1}\\{S3}")) == sorted([S1, S3])
    assert uids(find(index, "STUDY", SR, StudyInstanceUID=S2)) == [S2]
    assert find(index, "STUDY", SR, StudyInstanceUID="1.2.3.4") == []


def test_wildcards_escape_sql_metacharacters(index: Index) -> None:
    assert uids(find(index, "STUDY", SR, AccessionNumber="A_4%")) == [S4]
    assert uids(find(index, "STUDY", SR, AccessionNumber="A_*")) == [S4]  # "_" is literal
    assert uids(find(index, "STUDY", SR, AccessionNumber="A?")) == sorted([S1, S2, S3, S5])
    assert uids(find(index, "STUDY", SR, AccessionNumber="a1")) == []  # case-sensitive (C.2.2.2.1)
    assert uids(find(index, "STUDY", SR, StudyDescription="CT*")) == sorted([S1, S4])


def test_study_counts_and_modalities(index: Index) -> None:
    rows = {r["StudyInstanceUID"]: r for r in find(
        index, "STUDY", SR, ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="", PatientName="")}
    assert len(rows) == 5  # one row per study, not per instance
    assert rows[S1]["ModalitiesInStudy"] == ["CT", "SR"]
    assert (rows[S1]["NumberOfStudyRelatedSeries"], rows[S1]["NumberOfStudyRelatedInstances"]) == (2, 4)
    assert (rows[S2]["NumberOfStudyRelatedSeries"], rows[S2]["NumberOfStudyRelatedInstances"]) == (1, 2)
    assert rows[S3]["PatientName"] == "Đặng^Minh Châu"


def test_instance_counters_match_the_rows_and_ignore_duplicates(index: Index, tmp_path: Any) -> None:
    """The per-series counters the counts are summed from (Series.num_instances, kept at ingest)."""
    ingest = IngestService(FilesystemBlobStore(tmp_path / "blobs", fsync=False), index)
    try:
        for ds in datasets()[:3]:  # all stored by the fixture already: duplicates now
            ingest.store(part10(ds), Origin("import"))
    finally:
        ingest.close()
    with index.engine.connect() as conn:
        series = conn.execute(text(
            "SELECT s.num_instances, (SELECT count(*) FROM instance i WHERE i.series_pk = s.id) "
            "FROM series s")).all()
    assert len(series) >= 3 and all(kept == counted for kept, counted in series), series
    with index.engine.connect() as conn:
        studies = conn.execute(text(
            "SELECT st.num_series, st.num_instances, st.modalities, "
            "(SELECT count(*) FROM series s WHERE s.study_pk = st.id), "
            "(SELECT count(*) FROM instance i JOIN series s ON i.series_pk = s.id WHERE s.study_pk = st.id), "
            "(SELECT count(DISTINCT s.modality) FROM series s WHERE s.study_pk = st.id AND s.modality != '') "
            "FROM study st")).all()
    assert len(studies) == 5
    for num_series, num_instances, modalities, series_rows, instance_rows, distinct in studies:
        assert (num_series, num_instances) == (series_rows, instance_rows)
        assert len(set(modalities.split(","))) == len(modalities.split(",")) == distinct
    row = find(index, "STUDY", SR, StudyInstanceUID=S1, NumberOfStudyRelatedInstances="",
               NumberOfStudyRelatedSeries="", ModalitiesInStudy="")[0]
    assert (row["NumberOfStudyRelatedInstances"], row["NumberOfStudyRelatedSeries"]) == (4, 2)
    assert row["ModalitiesInStudy"] == ["CT", "SR"]


def test_modalities_in_study_matching(index: Index) -> None:
    assert uids(find(index, "STUDY", SR, ModalitiesInStudy="CT")) == sorted([S1, S4])
    assert uids(find(index, "STUDY", SR, ModalitiesInStudy="MR\\CR")) == sorted([S2, S3])
    assert uids(find(index, "STUDY", SR, ModalitiesInStudy="S?")) == [S1]


def test_patient_counts(index: Index) -> None:
    rows = find(index, "PATIENT", PR, PatientID="VN001", NumberOfPatientRelatedStudies="",
                NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")
    assert len(rows) == 1
    r = rows[0]
    assert (r["NumberOfPatientRelatedStudies"], r["NumberOfPatientRelatedSeries"],
            r["NumberOfPatientRelatedInstances"]) == (2, 3, 6)


def test_series_and_image_levels(index: Index) -> None:
    rows = find(index, "SERIES", SR, StudyInstanceUID=S1, Modality="", SeriesNumber="",
                NumberOfSeriesRelatedInstances="")
    assert {r["SeriesInstanceUID"]: (r["Modality"], r["NumberOfSeriesRelatedInstances"]) for r in rows} == {
        SE1: ("CT", 3), SE2: ("SR", 1)}
    assert uids(find(index, "SERIES", SR, StudyInstanceUID=S1, Modality="CT"), "SeriesInstanceUID") == [SE1]
    # Patient Root: PatientID is required above STUDY.
    assert uids(find(index, "SERIES", PR, PatientID="VN001", StudyInstanceUID=S2),
                "SeriesInstanceUID") == [SE3]
    images = find(index, "IMAGE", SR, StudyInstanceUID=S1, SeriesInstanceUID=SE1, InstanceNumber="",
                  SOPClassUID="")
    assert sorted((r["InstanceNumber"], r["SOPInstanceUID"]) for r in images) == [
        (i, instance_uid(SE1, i)) for i in (1, 2, 3)]
    assert {r["SOPClassUID"] for r in images} == {"1.2.840.10008.5.1.4.1.1.7"}
    two = find(index, "IMAGE", PR, PatientID="VN001", StudyInstanceUID=S1, SeriesInstanceUID=SE1,
               InstanceNumber="2")
    assert [r["SOPInstanceUID"] for r in two] == [instance_uid(SE1, 2)]


def test_patient_root_study_level_needs_patient_id(index: Index) -> None:
    with pytest.raises(InvalidQuery, match="PatientID") as err:
        find(index, "STUDY", PR, StudyDate="")
    assert err.value.structural
    assert uids(find(index, "STUDY", PR, PatientID="VN001")) == sorted([S1, S2])


@pytest.mark.parametrize(
    ("level", "model", "keys"),
    [
        ("PATIENT", SR, {}),  # Study Root has no PATIENT level
        ("FOO", SR, {}),
        ("", PR, {}),
        ("SERIES", SR, {}),  # needs StudyInstanceUID
        ("SERIES", SR, {"StudyInstanceUID": f"{S1}\\{S2}"}),  # a single one
        ("IMAGE", SR, {"StudyInstanceUID": S1}),  # and SeriesInstanceUID
        ("STUDY", PR, {"PatientID": "VN*"}),  # no wildcard in a unique key above
    ],
)
def test_structural_errors(level: str, model: Model, keys: dict[str, str]) -> None:
    with pytest.raises(InvalidQuery) as err:
        FindQuery.parse(level, model, keys)
    assert err.value.structural


@pytest.mark.parametrize(
    "keys",
    [
        {"StudyDate": "2026-01-01"},
        {"StudyDate": "20261301"},
        {"StudyDate": "20261130-20261101"},
        {"StudyDate": "2026"},
        {"StudyDate": "-"},
        {"StudyTime": "25:00"},
        {"StudyInstanceUID": "1.2.*"},
        {"NumberOfStudyRelatedInstances": "3"},
    ],
)
def test_malformed_values(keys: dict[str, str]) -> None:
    with pytest.raises(InvalidQuery) as err:
        FindQuery.parse("STUDY", SR, keys)
    assert not err.value.structural
    assert err.value.keyword == next(iter(keys))


def test_relational_query_skips_hierarchy(index: Index) -> None:
    rows = find(index, "SERIES", SR, relational=True, Modality="CT", PatientName="nguyen*")
    assert uids(rows, "SeriesInstanceUID") == sorted([SE1, "1.2.826.0.1.3680043.10.1999.2.5"])


def test_limit_and_offset(index: Index) -> None:
    q = FindQuery.parse("STUDY", SR, {})
    first = run_find(index.engine, q, limit=2)
    assert len(first.rows) == 2 and first.more
    second = run_find(index.engine, q, limit=2, offset=2)
    third = run_find(index.engine, q, limit=2, offset=4)
    assert len(second.rows) == 2 and second.more
    assert len(third.rows) == 1 and not third.more
    seen = [r["StudyInstanceUID"] for r in first.rows + second.rows + third.rows]
    assert sorted(seen) == sorted([S1, S2, S3, S4, S5])
    exact = run_find(index.engine, q, limit=5)
    assert len(exact.rows) == 5 and not exact.more


def test_stream_reads_the_first_rows_one_by_one_then_hands_the_connection_back(index: Index) -> None:
    """FindStream: the first answers leave before the query is done; a slow peer then
    holds no connection (the rest was fetched at once)."""
    q = FindQuery.parse("STUDY", SR, {})
    pool = index.engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    stream = FindStream(index.engine, q, stream_first=2)
    rows = iter(stream)
    got = [next(rows), next(rows)]
    assert pool.checkedout() == 1  # type: ignore[attr-defined]  # still stepping the cursor
    got.append(next(rows))
    assert pool.checkedout() == 0  # type: ignore[attr-defined]  # the rest came in one fetch
    got += list(rows)
    assert got == run_find(index.engine, q).rows
    assert stream.count == 5 and not stream.more


@pytest.mark.parametrize("stream_first", [0, 1, 16])
def test_stream_limit_tells_whether_there_were_more(index: Index, stream_first: int) -> None:
    q = FindQuery.parse("STUDY", SR, {})
    cut = FindStream(index.engine, q, limit=2, stream_first=stream_first)
    assert len(list(cut)) == 2 and cut.more and cut.count == 2
    exact = FindStream(index.engine, q, limit=5, stream_first=stream_first)
    assert len(list(exact)) == 5 and not exact.more
    assert index.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_stream_closed_early_returns_its_connection(index: Index) -> None:
    """A cancelled C-FIND stops reading: the generator's close gives the connection back."""
    rows = iter(FindStream(index.engine, FindQuery.parse("STUDY", SR, {}), stream_first=16))
    next(rows)
    assert index.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    rows.close()  # type: ignore[attr-defined]
    assert index.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_stream_opens_no_transaction_and_leaves_the_connection_as_it_found_it(index: Index) -> None:
    """On PostgreSQL the one SELECT runs in autocommit (psycopg sends no BEGIN, and no ROLLBACK
    follows); the pooled connection then goes back to transactions for its next user. On
    SQLite the index's own explicit-BEGIN setup (isolation_level None) stays untouched."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import QueuePool

    postgres = index.engine.dialect.name == "postgresql"
    engine = (create_engine(index.url, poolclass=QueuePool, pool_size=1, max_overflow=0)
              if postgres else index.engine)

    def mode(conn: Any) -> Any:
        dbapi = conn.connection.dbapi_connection
        return dbapi.autocommit if postgres else dbapi.isolation_level

    seen: list[Any] = []

    def executing(conn: Any, *_: Any) -> None:
        seen.append(mode(conn))

    event.listen(engine, "before_cursor_execute", executing)
    try:
        rows = list(FindStream(engine, FindQuery.parse("STUDY", SR, {}), stream_first=2))
        assert len(rows) == 5
        assert seen[-1] is (True if postgres else None)  # the stream's SELECT
        with engine.connect() as conn:  # on PostgreSQL the same pooled connection (a pool of one)
            assert mode(conn) is (False if postgres else None)
    finally:
        event.remove(engine, "before_cursor_execute", executing)
        if engine is not index.engine:
            engine.dispose()


def test_unknown_and_lower_level_keys_are_not_matched(index: Index) -> None:
    q = FindQuery.parse("STUDY", SR, {"Modality": "XX", "OperatorsName": "x", "StudyDate": "20261105"})
    assert q.level is Level.STUDY and set(q.keys) == {"StudyDate"}
    assert uids(run_find(index.engine, q).rows) == [S1]


def test_name_prefix_uses_an_index(index: Index) -> None:
    """No scan of the patient table for a name prefix (PS: the issue's "indexed columns")."""
    stmt = FindQuery.parse("STUDY", SR, {"PatientName": "nguyen van*"}).statement(index.engine.dialect.name)
    sql = str(stmt.compile(index.engine, compile_kwargs={"literal_binds": True}))
    with index.engine.connect() as conn:
        if index.engine.dialect.name == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "ix_patient_name_folded" in plan, plan
        else:
            conn.execute(text("SET enable_seqscan = off"))  # tiny table: force the planner's hand
            plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
            assert "ix_patient_name_folded" in plan, plan


@pytest.mark.parametrize(
    "value",
    ["", "*", "?", "-", "--", "\\", "2026-", "-2026", "[", "%", "_", "'", '"', "a\\b", "\x00",
     "20261105-\\", "Đ*", "ễ?", "1" * 40, "20260229", "20240229", " 20261105 "],
)
def test_parse_never_crashes(index: Index, value: str) -> None:
    """Any value either runs or raises InvalidQuery (never another error)."""
    try:
        q = FindQuery.parse("STUDY", SR, {"StudyDate": value, "PatientName": value,
                                          "AccessionNumber": value, "StudyTime": value})
    except InvalidQuery:
        return
    run_find(index.engine, q)


def test_limit_and_offset_are_written_into_the_sql(index: Index) -> None:
    """Not bound: PostgreSQL's generic plan for a prepared statement (psycopg prepares after
    five runs) guesses a bound LIMIT and then scans study by primary key (README benchmarks)."""
    q = FindQuery.parse("STUDY", SR, {"StudyDate": "20261105", "StudyInstanceUID": ""})
    compiled = q.statement(index.engine.dialect.name, limit=1001, offset=2).compile(index.engine)
    sql = " ".join(str(compiled).split())
    assert "LIMIT 1001 OFFSET 2" in sql
    assert sorted(map(str, compiled.params.values())) == ["", "20261105"]  # only the match values
    # Far past psycopg's prepare threshold and PostgreSQL's five custom plans: same answers.
    for _ in range(12):
        assert uids(find(index, "STUDY", SR, limit=1, StudyDate="20261105", StudyInstanceUID="")) == [S1]


def test_statements_reuse_the_computed_columns() -> None:
    """Joins and count subqueries are built once per process (they cost ~2 ms per query)."""
    keys = {"StudyInstanceUID": "", "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": ""}
    for dialect in ("sqlite", "postgresql"):
        a = FindQuery.parse("STUDY", SR, keys).statement(dialect)
        b = FindQuery.parse("STUDY", SR, keys | {"PatientID": "VN001"}).statement(dialect)
        shared = {id(c.element) for c in a.selected_columns} & {id(c.element) for c in b.selected_columns}
        assert len(shared) == len(keys) + 1  # every column, the computed ones included
