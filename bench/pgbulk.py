"""A Postgres copy of a ``bench/bulkdb.py`` database, for the status API's figures on
Postgres (``bench/run.py --postgres``).

``kling-hooks migrate-store`` is not on this branch, so the copy is done here, plainly:

1. the receiver's own migrations make the schema (:func:`receiver.store.postgres.migrate`);
2. the migrations' secondary indexes (those not behind a constraint) are dropped, with their
   definitions kept (``pg_indexes``); primary keys and UNIQUE constraints stay;
3. ``tasks``, ``transitions``, ``callbacks``, ``deliveries`` and ``files`` are read from
   SQLite in id order and written with ``COPY ... FROM STDIN`` in one transaction, every
   column the two schemas share, ids included; ``tasks.status_rank`` (Postgres only) is
   :attr:`submitter.protocol.TaskStatus.rank` of the status; the leases are NULL;
4. the indexes are made again from their definitions, each identity sequence is set past
   its table's largest id, and ``VACUUM ANALYZE`` runs (a server's autovacuum would do the
   same within minutes of such a load; run here, it does not run during the figures).

The loader's session uses ``synchronous_commit = off``: only the load's own commit is
affected, and the benchmark waits for it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.store import postgres as pg_store
from submitter.protocol import TaskStatus

#: The tables copied, in an order their foreign keys allow.
TABLES = ("tasks", "transitions", "callbacks", "deliveries", "files")
#: Rows read from SQLite per fetch.
CHUNK = 5_000


def _rank_sql() -> str:
    """SQL (SQLite): ``status_rank`` from ``task_status``."""
    cases = " ".join(f"WHEN '{s.value}' THEN {s.rank}" for s in TaskStatus)
    return f"CASE task_status {cases} END"


def _columns(
    pg: psycopg.Connection[tuple[object, ...]], lite: sqlite3.Connection, table: str
) -> list[str]:
    """The columns of ``table`` that both schemas have, in Postgres's order."""
    ours = {str(r[1]) for r in lite.execute(f"PRAGMA table_info({table})")}
    theirs = pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        " ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [str(name) for (name,) in theirs if name in ours]


def _rows(lite: sqlite3.Connection, sql: str) -> Iterator[tuple[object, ...]]:
    cursor = lite.execute(sql)
    while chunk := cursor.fetchmany(CHUNK):
        yield from chunk


def copy(source: Path, url: str) -> dict[str, int]:
    """Copy the SQLite database ``source`` into the empty Postgres database ``url``.

    Returns:
        Rows copied, by table.

    Raises:
        RuntimeError: ``url``'s database already holds tasks.
        psycopg.Error, sqlite3.Error: a database failed; the copy was rolled back.
    """
    with contextlib.closing(pg_store.connect(url)) as conn:
        pg_store.migrate(conn)
    lite = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    copied: dict[str, int] = {}
    try:
        with psycopg.connect(url) as pg:
            pg.execute("SET synchronous_commit = off")
            pg.execute("SET maintenance_work_mem = '256MB'")
            if pg.execute("SELECT count(*) FROM tasks").fetchone() != (0,):
                raise RuntimeError(f"{pg_store.describe(url)}: tasks already there")
            indexes = pg.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                " AND tablename = ANY(%s) AND indexname NOT IN"
                " (SELECT conname FROM pg_constraint)",
                (list(TABLES),),
            ).fetchall()
            for name, _ in indexes:
                pg.execute(f'DROP INDEX "{name}"')
            for table in TABLES:
                copied[table] = _copy_table(pg, lite, table)
            for _, definition in indexes:
                pg.execute(definition)
            for table in TABLES:
                pg.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)"
                )
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
    finally:
        lite.close()
    return copied


def _copy_table(
    pg: psycopg.Connection[tuple[object, ...]], lite: sqlite3.Connection, table: str
) -> int:
    columns = _columns(pg, lite, table)
    select = ", ".join(columns)
    target = list(columns)
    if table == "tasks":
        select += f", {_rank_sql()}"
        target.append("status_rank")
    count = 0
    names = ", ".join(target)
    with pg.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as out:
        for row in _rows(lite, f"SELECT {select} FROM {table} ORDER BY id"):
            out.write_row(row)
            count += 1
    return count


def main() -> None:
    """``python bench/pgbulk.py SQLITE_PATH POSTGRES_URL``: copy, print the counts and time."""
    started = time.monotonic()
    counts = copy(Path(sys.argv[1]), sys.argv[2])
    print(f"{counts} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
