"""Alembic migrations: idempotent upgrade, agreement with the models, downgrade and back.

Runs on SQLite and on a real PostgreSQL (``pg_url``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydicom.data import get_testdata_file
from sqlalchemy import Connection, inspect

from pacs.ingest import IngestService, Origin, Outcome
from pacs.store.blobs import FilesystemBlobStore
from pacs.store.index import MIGRATIONS, Index
from pacs.store.models import Base

TABLES = {"patient", "study", "series", "instance"}


def alembic_config(index: Index) -> Config:
    """The configuration :meth:`Index.migrate` builds (the connection is set per call)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", index.url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def model_differences(index: Index) -> list[object]:
    with index.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def tables(index: Index) -> set[str]:
    return set(inspect(index.engine).get_table_names())


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    idx = Index(url, fsync=False)
    yield idx
    idx.dispose()


def test_migrate_is_idempotent_and_reaches_head(index: Index) -> None:
    assert index.schema_revision() is None  # a fresh, empty database
    index.migrate()
    assert index.schema_revision() == head_revision()
    assert TABLES <= tables(index)
    index.migrate()  # every start runs it again
    assert index.schema_revision() == head_revision()
    assert index.counts().instances == 0


def test_migrated_schema_matches_the_models(index: Index) -> None:
    index.migrate()
    assert model_differences(index) == []


def test_compare_metadata_sees_a_drift(index: Index) -> None:
    """The agreement check above can fail: a database missing an index is reported."""
    index.migrate()
    with index.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_instance_received_at")
    diffs = model_differences(index)
    assert [d[0] for d in diffs] == ["add_index"], diffs  # type: ignore[index]


def test_downgrade_to_base_then_upgrade_again(index: Index, tmp_path: Path) -> None:
    index.migrate()
    cfg = alembic_config(index)

    with index.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not TABLES & tables(index)
    assert index.schema_revision() is None

    with index.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert index.schema_revision() == head_revision()
    assert TABLES <= tables(index)
    assert model_differences(index) == []
    # The rebuilt schema takes writes.
    ingest = IngestService(FilesystemBlobStore(tmp_path / "blobs", fsync=False), index)
    try:
        raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        assert ingest.store(raw, Origin("import")).outcome is Outcome.STORED
    finally:
        ingest.close()
    assert index.counts().instances == 1


def _patient_and_studies(conn: Connection, *study_pks: int) -> None:
    """Patient 1 and studies ``study_pks`` (UIDs 1.2.<pk>), inserted as raw rows at an older revision."""
    conn.exec_driver_sql(
        "INSERT INTO patient (id, patient_key, patient_id, patient_name, patient_name_folded, "
        "birth_date, sex, created_at) VALUES (1, 'id:P1', 'P1', '', '', '', '', CURRENT_TIMESTAMP)")
    for study_pk in study_pks:
        conn.exec_driver_sql(
            "INSERT INTO study (id, study_instance_uid, patient_pk, study_date, study_time, "
            "accession_number, study_description, referring_physician_name, "
            "referring_physician_folded, study_id, created_at) "
            f"VALUES ({study_pk}, '1.2.{study_pk}', 1, '', '', '', '', '', '', '', CURRENT_TIMESTAMP)")


def test_0007_counts_the_instances_of_series_stored_before_it(index: Index) -> None:
    """Series rows from before revision 0007 get their instance counts from the instance table."""
    cfg = alembic_config(index)
    with index.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0006")
        _patient_and_studies(conn, 1)
        for series_pk, instances in ((1, 3), (2, 1), (3, 0)):
            conn.exec_driver_sql(
                "INSERT INTO series (id, series_instance_uid, study_pk, modality, series_description, "
                f"body_part_examined, created_at) VALUES ({series_pk}, '1.2.3.{series_pk}', 1, 'CT', '', "
                "'', CURRENT_TIMESTAMP)")
            for k in range(instances):
                conn.exec_driver_sql(
                    "INSERT INTO instance (sop_instance_uid, series_pk, sop_class_uid, transfer_syntax_uid, "
                    "number_of_frames, size, sha256, blob_key, received_at, calling_ae, origin) "
                    f"VALUES ('1.2.3.{series_pk}.{k}', {series_pk}, '', '', 1, 0, '', 'k{series_pk}.{k}', "
                    "CURRENT_TIMESTAMP, '', '')")
        command.upgrade(cfg, "head")
        counts = dict(conn.exec_driver_sql("SELECT id, num_instances FROM series").all())
    assert counts == {1: 3, 2: 1, 3: 0}
    assert model_differences(index) == []


def test_0008_derives_the_study_counters_of_studies_stored_before_it(index: Index) -> None:
    """Studies from before revision 0008 get series / instance counts and modalities from
    their series' counters; a series without instances counts for neither."""
    cfg = alembic_config(index)
    with index.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
        _patient_and_studies(conn, 1, 2)
        for series_pk, study_pk, modality, instances in (
                (1, 1, "MR", 3), (2, 1, "CT", 1), (3, 1, "MR", 2), (4, 1, "PR", 0), (5, 1, "", 1)):
            conn.exec_driver_sql(
                "INSERT INTO series (id, series_instance_uid, study_pk, modality, series_description, "
                f"body_part_examined, created_at, num_instances) VALUES ({series_pk}, '1.2.3.{series_pk}', "
                f"{study_pk}, '{modality}', '', '', CURRENT_TIMESTAMP, {instances})")
        command.upgrade(cfg, "head")
        studies = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(
            "SELECT id, num_series, num_instances, modalities FROM study").all()}
    assert studies == {1: (4, 7, "MR,CT"), 2: (0, 0, "")}
    assert model_differences(index) == []
