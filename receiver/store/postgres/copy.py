"""``kling-hooks migrate-store``: copy a SQLite database into the Postgres store.

The tables are copied in :data:`TABLES` order (referenced before referencing: a delivery's
transition, a file's delivery), each in id order, with its ids: every reference stays valid.
Each table is copied in batches of ``batch_rows`` rows (``COPY ... FROM STDIN``), each batch
in a Postgres transaction of its own, and each table's identity is then set past its highest
id, so that the next row a receiver writes gets a fresh id. ``tasks.status_rank`` is
``TaskStatus.rank`` of the row's ``task_status`` (``submitter.protocol``), as the Postgres
writes compute it. ``meta`` (the callback secret and the status API token the receiver
generated, so that the receivers keep them) has no id: its keys are copied with
``ON CONFLICT DO NOTHING``; the write probe's scratch row (``write_probe_ms``) is not copied.

**Resumable.** A batch is all or nothing, so after an interruption (a kill, a lost
connection) each table holds a prefix of the source's rows by id; the next run copies the
rows with ``id`` above the highest already there, and a run on a complete copy copies
nothing.

**Whose rows.** The source's identity is recorded in the target's ``meta`` under
:data:`SOURCE_KEY`, in the first batch's transaction: ``{"source": PATH, "fingerprint":
HEX}``, where the fingerprint (:func:`fingerprint`) is a SHA-256 of the source's ``meta`` rows
and, per table, its row count, highest id and sums of the columns a receiver rewrites. A
copy starts only into a target whose tables are all empty, and goes on only into one whose
recorded fingerprint is the source's now and whose tables hold no more rows, and no higher
ids, than the source's.
So another database is refused, and so is the same file after a receiver wrote to it since
the copy began (rows already copied may have changed: copy into an empty database again),
and a target a receiver has written to.

The SQLite file is opened read-only, in one read transaction (one snapshot) for the whole
run, while the caller holds its owner lock (``receiver.store.DatabaseLock``): no receiver
writes to it meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from receiver.errors import MigrateStoreError, NotADatabase
from receiver.store.database import (
    SCHEMA_VERSION as SQLITE_SCHEMA_VERSION,
)
from receiver.store.database import (
    check_schema,
    is_not_a_database,
    not_a_database_message,
)
from receiver.store.postgres.database import PgConnection
from receiver.store.probe import PROBE_KEY
from submitter.protocol import TaskStatus

#: The tables copied, in this order: a table comes after those its rows name.
TABLES = ("tasks", "transitions", "callbacks", "deliveries", "files")

#: The target's ``meta`` key that names the source its rows came from.
SOURCE_KEY = "migrate_store_source"

#: The advisory lock a copy holds (``pg_try_advisory_lock``): one copy into a database at a
#: time. The bytes of ``"khcopy01"``, apart from the migrations' lock.
COPY_LOCK = int.from_bytes(b"khcopy01", "big")

#: Per table, what the fingerprint sums besides the count and the highest id: the columns
#: that change when a row is written again in place (transitions and callbacks never are).
#: A task's last_received_at moves with every callback, its route, request and created_at
#: are filled in by a late registration; each change of a delivery sets its updated_at; a
#: file saved again gets a new saved_at. Times are summed modulo 2**31 - 1 (no overflow).
_REWRITTEN = {
    "tasks": "SUM(last_received_at % 2147483647), COUNT(route), COUNT(request_json),"
    " COUNT(created_at)",
    "transitions": "0",
    "callbacks": "0",
    "deliveries": "SUM(updated_at % 2147483647), SUM(attempts)",
    "files": "SUM(saved_at % 2147483647)",
}


@dataclass
class TableCopy:
    """One table's progress: ``total`` rows in the source, ``before`` already in the target
    when the run began, ``copied`` by this run so far (rows), ``seconds`` spent on it, and
    whether the table is ``complete`` (its identity set past its highest id)."""

    table: str
    total: int
    before: int
    copied: int = 0
    seconds: float = 0.0
    complete: bool = False


@dataclass
class CopyReport:
    """What a run did: the source's schema version, one :class:`TableCopy` per table
    (``meta`` first, then :data:`TABLES`), and the run's wall time in seconds."""

    sqlite_schema: int
    tables: list[TableCopy] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def copied(self) -> int:
        """Rows copied by this run, every table together."""
        return sum(t.copied for t in self.tables)


#: Called after every committed batch, and once more per table when it is complete.
Progress = Callable[[TableCopy], None]


def open_source(path: Path) -> sqlite3.Connection:
    """``path`` opened read-only, checked to be a kling-hooks database of the schema this
    program knows (:data:`receiver.store.database.SCHEMA_VERSION`).

    Returns:
        A ``sqlite3`` connection (``mode=ro``) in autocommit mode.

    Raises:
        MigrateStoreError: the file does not exist, cannot be opened or read, has no
            kling-hooks tables, or its schema is older than this program's (the message says
            how to migrate it first).
        NotADatabase, SchemaTooNew: from :func:`receiver.store.check_schema`.
    """
    if not path.is_file():
        raise MigrateStoreError(f"{path} does not exist: nothing to copy (is --from right?)")
    try:
        check_schema(path)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:  # NotADatabase and SchemaTooNew go through
        raise MigrateStoreError(f"cannot open {path} read-only: {exc}") from None
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        conn.close()
        if is_not_a_database(exc):
            raise NotADatabase(not_a_database_message(path, exc)) from None
        raise MigrateStoreError(f"cannot read {path}: {exc}") from None
    missing = ", ".join(t for t in ("meta", *TABLES) if t not in names)
    if missing and version in (0, SQLITE_SCHEMA_VERSION):
        conn.close()
        raise MigrateStoreError(f"{path} is not a kling-hooks database: it has no table {missing}")
    if version < SQLITE_SCHEMA_VERSION:
        conn.close()
        raise MigrateStoreError(
            f"{path} has schema version {version}, older than this kling-hooks copies"
            f" ({SQLITE_SCHEMA_VERSION}): migrate it first (start `kling-hooks serve --db"
            f" {path}` once, which migrates it, and stop it), then run migrate-store again"
        )
    return conn


def fingerprint(source: sqlite3.Connection) -> str:
    """The source's identity and state: SHA-256 (hex) of its ``meta`` rows (the write
    probe's excluded) and, per table of :data:`TABLES`, its count, highest id and the sums of
    :data:`_REWRITTEN`. Another database, or the same one after a receiver's write that adds,
    removes or rewrites a row, has another fingerprint (one full scan of each table)."""
    meta = source.execute(
        "SELECT key, value FROM meta WHERE key != ? ORDER BY key", (PROBE_KEY,)
    ).fetchall()
    state: list[object] = [[list(r) for r in meta]]
    for table in TABLES:
        row = source.execute(
            f"SELECT COUNT(*), MAX(id), {_REWRITTEN[table]} FROM {table}"
        ).fetchone()
        state.append([table, *row])
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


def copy_store(
    source: sqlite3.Connection,
    source_path: Path,
    target: PgConnection,
    *,
    batch_rows: int,
    progress: Progress = lambda t: None,
    after_batch: Callable[[], None] = lambda: None,
) -> CopyReport:
    """Copy what the target lacks of ``source`` into ``target``, in one read transaction.

    Args:
        source: From :func:`open_source`; its owner lock is held by the caller.
        source_path: The SQLite file, as recorded in the target (:data:`SOURCE_KEY`).
        target: An autocommit connection to a database migrated to the Postgres schema.
        batch_rows: Rows per batch (one ``COPY``, one commit), at least 1.
        progress: Called with the table's :class:`TableCopy` after each batch, and once more
            when the table is complete.
        after_batch: Called after each commit (the CLI's ``--pause-ms`` sleeps there).

    Returns:
        A :class:`CopyReport`; ``copied`` is 0 when the target already held every row.

    Raises:
        MigrateStoreError: the target holds rows that did not come from this source as it is now
            (see the module docstring), or another copy into it is running; nothing was
            written.
        psycopg.Error: a batch failed (it was rolled back; the committed ones stay).
    """
    started = time.perf_counter()
    locked = target.execute("SELECT pg_try_advisory_lock(%s)", (COPY_LOCK,)).fetchone()
    if not locked or not locked[0]:
        raise MigrateStoreError("another migrate-store is copying into this Postgres database")
    source.execute("BEGIN")  # one snapshot for the whole run
    try:
        sqlite_schema = int(source.execute("PRAGMA user_version").fetchone()[0])
        report = CopyReport(sqlite_schema)
        marker = json.dumps(
            {"source": str(source_path.resolve()), "fingerprint": fingerprint(source)}
        )
        _check_target(source, source_path, target, marker)
        report.tables.append(_copy_meta(source, target, marker, progress))
        for table in TABLES:
            report.tables.append(
                _copy_table(source, target, table, batch_rows, progress, after_batch)
            )
    finally:
        source.execute("ROLLBACK")
        if not target.broken:
            target.execute("SELECT pg_advisory_unlock(%s)", (COPY_LOCK,))
    report.seconds = time.perf_counter() - started
    return report


def _check_target(
    source: sqlite3.Connection, source_path: Path, target: PgConnection, marker: str
) -> None:
    """Refuse a target whose rows did not come from ``source`` as it is now."""
    got = target.execute("SELECT value FROM meta WHERE key = %s", (SOURCE_KEY,)).fetchone()
    counts = {t: _pg_extent(target, t) for t in ("meta", *TABLES)}
    if got is None:
        held = [f"{t} {n:,}" for t, (n, _) in counts.items() if n]
        if held:
            raise MigrateStoreError(
                f"the Postgres database already holds rows that were not copied by"
                f" migrate-store ({', '.join(held)}): copy into an empty database"
            )
        return
    recorded = json.loads(got[0])
    if recorded.get("fingerprint") != json.loads(marker)["fingerprint"]:
        raise MigrateStoreError(
            f"the Postgres database holds a copy of {recorded.get('source')} as it was then,"
            f" and {source_path} differs from it now (another database, or one a receiver"
            " wrote to since): copy into an empty database"
        )
    for table in TABLES:
        pg_count, pg_max = counts[table]
        count, top = source.execute(f"SELECT COUNT(*), MAX(id) FROM {table}").fetchone()
        if pg_count > count or (pg_max or 0) > (top or 0):
            raise MigrateStoreError(
                f"the Postgres database's {table} holds rows that are not in {source_path}"
                f" ({pg_count:,} rows up to id {pg_max}; the source has {count:,} up to id"
                f" {top}): a receiver has written to it; copy into an empty database"
            )


def _pg_extent(target: PgConnection, table: str) -> tuple[int, int | None]:
    """``(rows, highest id)`` of a target table (``meta``: its rows, None)."""
    top = "NULL" if table == "meta" else "MAX(id)"
    row = target.execute(f"SELECT COUNT(*), {top} FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _copy_meta(
    source: sqlite3.Connection, target: PgConnection, marker: str, progress: Progress
) -> TableCopy:
    """The source's ``meta`` keys the target lacks, and the marker, in one transaction."""
    started = time.perf_counter()
    rows = source.execute(
        "SELECT key, value FROM meta WHERE key != ? ORDER BY key", (PROBE_KEY,)
    ).fetchall()
    (before,) = target.execute(
        "SELECT COUNT(*) FROM meta WHERE key != %s", (SOURCE_KEY,)
    ).fetchone() or (0,)
    done = TableCopy("meta", len(rows), int(before))
    with target.transaction(), target.cursor() as cur:
        cur.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
            (SOURCE_KEY, marker),
        )
        for key, value in rows:
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            done.copied += cur.rowcount
    done.seconds = time.perf_counter() - started
    done.complete = True
    progress(done)
    return done


def _copy_table(
    source: sqlite3.Connection,
    target: PgConnection,
    table: str,
    batch_rows: int,
    progress: Progress,
    after_batch: Callable[[], None],
) -> TableCopy:
    """Copy ``table``'s rows above the target's highest id, in batches; then set its
    identity past the highest id."""
    started = time.perf_counter()
    columns = [r[1] for r in source.execute(f"PRAGMA table_info({table})")]
    pg_columns = [*columns, "status_rank"] if table == "tasks" else columns
    rank_of = columns.index("task_status") if table == "tasks" else -1
    (total,) = source.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    before, top = _pg_extent(target, table)
    done = TableCopy(table, int(total), before)
    copy_sql = f"COPY {table} ({', '.join(pg_columns)}) FROM STDIN"
    for batch in _batches(source, table, columns, top or 0, batch_rows):
        with target.transaction(), target.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in batch:
                if rank_of >= 0:
                    row = (*row, TaskStatus(str(row[rank_of])).rank)
                copy.write_row(row)
        done.copied += len(batch)
        done.seconds = time.perf_counter() - started
        progress(done)
        after_batch()
    target.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
        f" GREATEST(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table}"
    )
    done.seconds = time.perf_counter() - started
    done.complete = True
    progress(done)
    return done


def _batches(
    source: sqlite3.Connection, table: str, columns: Sequence[str], after_id: int, size: int
) -> Iterator[list[tuple[object, ...]]]:
    """The rows of ``table`` with ``id > after_id``, in id order, ``size`` at a time."""
    select = f"SELECT {', '.join(columns)} FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
    id_at = list(columns).index("id")
    while True:
        rows = source.execute(select, (after_id, size)).fetchall()
        if not rows:
            return
        yield rows
        after_id = rows[-1][id_at]
