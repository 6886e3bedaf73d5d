"""Postgres migrations: versioned, applied once, under an advisory lock that replicas starting
together wait on (a real server: ``tests/pg_support.py``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from receiver.errors import SchemaTooNew
from receiver.store import postgres
from receiver.store.database import migration_files


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _applied(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def test_migrate_brings_an_empty_database_to_the_schema_version_once(pg_url: str) -> None:
    numbers = [n for n, _ in migration_files("receiver.store.postgres")]
    assert numbers[-1] == postgres.SCHEMA_VERSION
    with postgres.connect(pg_url) as conn:
        assert postgres.schema_version(conn) == 0
        assert postgres.migrate(conn) == postgres.SCHEMA_VERSION
        assert postgres.migrate(conn) == postgres.SCHEMA_VERSION  # nothing left to apply
    assert {"meta", "tasks", "transitions", "callbacks", "deliveries", "files"} <= _tables(pg_url)
    assert _applied(pg_url) == numbers


def test_replicas_starting_together_wait_on_the_lock_and_migrate_once(pg_url: str) -> None:
    # A third session holds the lock, so both replicas are sure to arrive while it is held.
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (postgres.MIGRATION_LOCK,))
        both_waiting = threading.Barrier(2)

        def replica() -> int:
            with postgres.connect(pg_url) as conn:
                both_waiting.wait(timeout=10)
                return postgres.migrate(conn)

        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(replica) for _ in range(2)]
            waiting = 0
            while waiting < 2:  # both sessions are blocked on the advisory lock
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                waiting = row[0] if row else 0
            assert "tasks" not in _tables(pg_url)  # neither started before the lock was free
            holder.execute("SELECT pg_advisory_unlock(%s)", (postgres.MIGRATION_LOCK,))
            versions = [r.result(timeout=30) for r in runs]
    assert versions == [postgres.SCHEMA_VERSION] * 2
    assert _applied(pg_url) == [n for n, _ in migration_files("receiver.store.postgres")]


def test_a_database_newer_than_this_program_is_refused_and_left_alone(pg_url: str) -> None:
    with postgres.connect(pg_url) as conn:
        postgres.migrate(conn)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (99)")
        known = rf"\({postgres.SCHEMA_VERSION}\)"
        with pytest.raises(SchemaTooNew, match=rf"schema version 99, newer than .* {known}"):
            postgres.migrate(conn)
        assert postgres.schema_version(conn) == 99
        # the lock was given back: another session takes it at once
        with psycopg.connect(pg_url) as other:
            row = other.execute(
                "SELECT pg_try_advisory_lock(%s)", (postgres.MIGRATION_LOCK,)
            ).fetchone()
            assert row == (True,)
