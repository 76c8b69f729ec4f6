"""The PostgreSQL fixtures give a real server, a fresh UTF-8 database per test, and clean up."""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine, text

from tests.fixtures.postgres import create_database, drop_database, pg_url_for

NAME = "Nguyễn Văn An"  # Vietnamese, as (0010,0010) PN would carry it with ISO_IR 192


def test_pg_url_round_trips_utf8_through_sqlalchemy_psycopg(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+psycopg://")
    engine = create_engine(pg_url)
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE patient (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(text("INSERT INTO patient (name) VALUES (:name)"), {"name": NAME})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM patient")).scalar_one() == NAME
            assert conn.execute(text("SHOW server_encoding")).scalar_one() == "UTF8"
            version = int(conn.execute(text("SHOW server_version_num")).scalar_one())
            assert version >= 160000
    finally:
        engine.dispose()


def test_pg_url_is_a_fresh_empty_database(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one().startswith("t_")
            tables = conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            ).scalar_one()
            assert tables == 0
    finally:
        engine.dispose()


def test_drop_database_terminates_open_sessions(pg_server) -> None:  # type: ignore[no-untyped-def]
    create_database(pg_server, "t_drop_me")
    engine = create_engine(pg_url_for(pg_server, "t_drop_me"))
    held = engine.connect()  # an open session must not block the drop
    try:
        held.execute(text("SELECT 1"))
        drop_database(pg_server, "t_drop_me")
        with psycopg.connect(pg_server.get_uri("postgres")) as admin:
            left = admin.execute("SELECT count(*) FROM pg_database WHERE datname = 't_drop_me'")
            assert left.fetchone() == (0,)
    finally:
        held.invalidate()
        engine.dispose()
