"""The Postgres test server itself (``tests/pg_support.py``): a database of its own per test."""

from __future__ import annotations

import psycopg

from tests.pg_support import with_database


def test_each_test_gets_an_empty_database_of_its_own(pg_server: str, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert name is not None and name[0].startswith("kh_test_")
    assert pg_url == with_database(pg_server, name[0])
    assert tables == (0,)
