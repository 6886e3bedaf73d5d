"""Retention: removing old raw callbacks and finished deliveries in small batches, and giving
the pages they held back to the file system (``kling-hooks prune``).

What goes, for a cutoff (Unix ms):

* ``callbacks`` rows (the raw bodies, an audit log) received before it;
* ``deliveries`` rows in state ``done`` last updated before it, unless a saved file points at
  one (``files.delivery_id``): the file's record keeps its delivery, so no reference dangles.

What stays, whatever its age: tasks, transitions (a task's history, and what each delivery
carries), saved-file records, and every delivery not ``done``. ``dead`` deliveries are dead
letters: each waits for a person to replay it (``kling-hooks redeliver --all``), and a timer
must not settle it for them; their number grows only with failures, and ``prune`` reports how
many old ones it kept.

Each batch is one write operation of the writer (:class:`PruneWindow`): it looks at the next
``window`` rows by id after a cursor and deletes those that qualify, so a batch's work is
bounded whatever the table holds, and callbacks are committed between batches. ids grow with
arrival, so the scan ends at the first window whose last row is newer than the cutoff. The
rule and the statements are written once, with the driver's parameter mark
(:meth:`PruneWindow.scan_sql`, :func:`prunable_sql`): SQLite runs them here, Postgres in
``receiver.store.postgres.retention``.

Space: deleted rows leave free pages inside the file. A database made by schema 4 or later
has ``auto_vacuum = INCREMENTAL``, and :class:`IncrementalVacuum` gives back ``pages`` at a
time, each step a write operation like any other. An older file has ``auto_vacuum = NONE``,
which only a ``VACUUM`` can change: :class:`FullVacuum` does that once, alone on the writer's
connection (callbacks wait for it; it rewrites the whole file). On Postgres, autovacuum makes
the deleted rows' space reusable by itself: prune runs no vacuum step there
(:attr:`Space.reclaims_itself`).

Checkpoints never wait for readers: a reader holding a snapshot (a ``kling-hooks backup``, a
slow status query) would otherwise make a ``TRUNCATE`` checkpoint wait the writer's whole
``busy_timeout`` while every callback queues. :func:`checkpoint` turns the busy handler off
for its one statement: it copies what no reader still needs, truncates the WAL when no reader
is in the way, and leaves the rest for a later checkpoint.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from receiver.store.transaction import Transaction

#: Which table a :class:`PruneWindow` prunes.
Table = Literal["callbacks", "deliveries"]

#: Per table: the column that orders rows in time (ends the scan), and what qualifies a row
#: (``{m}``: the driver's parameter mark, whose one argument is the cutoff). Every backend runs
#: this rule (``receiver.store.postgres.retention``).
_SCAN: dict[Table, tuple[str, str]] = {
    "callbacks": ("received_at", "received_at < {m}"),
    "deliveries": (
        "created_at",
        "state = 'done' AND updated_at < {m}"
        " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.delivery_id = deliveries.id)",
    ),
}
#: ``auto_vacuum`` values (SQLite's ``PRAGMA auto_vacuum``).
AUTO_VACUUM_NONE, AUTO_VACUUM_INCREMENTAL = 0, 2


@dataclass(frozen=True)
class Windowed:
    """What one :class:`PruneWindow` did: rows deleted, the cursor for the next window, and
    whether the scan is over."""

    deleted: int
    last_id: int
    finished: bool


@dataclass(frozen=True)
class PruneWindow:
    """Delete the rows of ``table`` that qualify among the ``window`` rows after ``after_id``.

    Args:
        table: ``callbacks`` or ``deliveries``.
        cutoff_ms: Rows older than this qualify (see the module docstring), Unix ms.
        after_id: The cursor: the last id of the previous window (0 to start).
        window: Most rows looked at.
    """

    task_keys: ClassVar[None] = None

    table: Table
    cutoff_ms: int
    after_id: int
    window: int

    def run(self, tx: Transaction) -> Windowed:
        """Runs in a savepoint of the writer's transaction."""
        seen = tx.conn.execute(*self.scan_sql("?")).fetchall()
        if not seen:
            return self.windowed([], 0)
        return self.windowed(seen, tx.conn.execute(*self.delete_sql("?", seen)).rowcount)

    def scan_sql(self, mark: str) -> tuple[str, list[object]]:
        """The window's ``SELECT id, time`` and its arguments, with ``mark`` as the driver's
        parameter mark (``?`` for sqlite3, ``%s`` for psycopg)."""
        time_column, _ = _SCAN[self.table]
        return (
            f"SELECT id, {time_column} FROM {self.table} WHERE id > {mark} ORDER BY id"
            f" LIMIT {mark}",
            [self.after_id, self.window],
        )

    def delete_sql(self, mark: str, seen: Sequence[Sequence[Any]]) -> tuple[str, list[object]]:
        """The ``DELETE`` of the qualifying rows among ``seen`` (what :meth:`scan_sql` found,
        not empty) and its arguments."""
        _, qualifies = _SCAN[self.table]
        return (
            f"DELETE FROM {self.table} WHERE id > {mark} AND id <= {mark}"
            f" AND {qualifies.format(m=mark)}",
            [self.after_id, int(seen[-1][0]), self.cutoff_ms],
        )

    def windowed(self, seen: Sequence[Sequence[Any]], deleted: int) -> Windowed:
        """This window's :class:`Windowed`, given the rows :meth:`scan_sql` found and how
        many the ``DELETE`` removed (every backend decides the end of the scan so)."""
        if not seen:
            return Windowed(0, self.after_id, True)
        last_id, last_time = int(seen[-1][0]), int(seen[-1][1])
        finished = len(seen) < self.window or last_time >= self.cutoff_ms
        return Windowed(deleted, last_id, finished)


@dataclass(frozen=True)
class IncrementalVacuum:
    """Give up to ``pages`` free pages back (``PRAGMA incremental_vacuum``; the file shrinks
    at the next checkpoint). Needs ``auto_vacuum = INCREMENTAL``.

    Returns:
        The free pages left.
    """

    task_keys: ClassVar[None] = None

    pages: int

    def run(self, tx: Transaction) -> int:
        """Runs in a savepoint of the writer's transaction."""
        # One page per step of the statement; executemany steps each execution once.
        tx.conn.executemany("PRAGMA incremental_vacuum(1)", itertools.repeat((), self.pages))
        return _pragma(tx.conn, "freelist_count")


@dataclass(frozen=True)
class FullVacuum:
    """``VACUUM`` the whole file with ``auto_vacuum = INCREMENTAL`` (what turns an old
    database into one that :class:`IncrementalVacuum` can shrink), then checkpoint the WAL.
    A :class:`~receiver.store.transaction.ConnectionOp`: it runs alone."""

    def run_alone(self, conn: sqlite3.Connection) -> None:
        """Raises ``sqlite3.Error`` when the file cannot be rewritten (e.g. the disk is full:
        VACUUM needs room for a second copy)."""
        conn.execute(f"PRAGMA auto_vacuum = {AUTO_VACUUM_INCREMENTAL}")
        conn.execute("VACUUM")
        checkpoint(conn)


@dataclass(frozen=True)
class Checkpoint:
    """:func:`checkpoint`: copy the WAL into the file, and truncate the file to the
    database's size (a step of ``IncrementalVacuum`` shrinks it only then). Runs alone; a
    reader holding a snapshot leaves part of the WAL for the next checkpoint, and is never
    waited for."""

    def run_alone(self, conn: sqlite3.Connection) -> bool:
        """Runs on the writer's connection, outside any transaction; returns
        :func:`checkpoint`'s answer."""
        return checkpoint(conn)


def checkpoint(conn: sqlite3.Connection) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on ``conn`` with its busy handler off for that
    statement (``busy_timeout = 0``, then restored), so it never waits for a reader.

    Returns:
        True when the whole WAL was copied and truncated; False when a reader (or another
        connection's checkpoint) was in the way, and SQLite did as much as a ``PASSIVE``
        checkpoint could (see https://sqlite.org/pragma.html#pragma_wal_checkpoint).
    """
    busy_timeout_ms = _pragma(conn, "busy_timeout")
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return row is not None and int(row[0]) == 0


@dataclass(frozen=True)
class Space:
    """How the database's space is used.

    Attributes:
        size_bytes: SQLite: ``page_count * page_size``; Postgres: ``pg_database_size``.
        free_bytes: SQLite: the free pages inside the file; Postgres: 0 (it keeps no such
            count: dead rows' space is reused by new rows once autovacuum has seen them).
        auto_vacuum: SQLite's ``auto_vacuum`` mode (0 none, 1 full, 2 incremental); 0 on
            Postgres.
        reclaims_itself: True when the database gives freed space back by itself
            (Postgres's autovacuum), so ``prune`` runs none of the vacuum steps of this
            module (they are SQLite's).
    """

    size_bytes: int
    free_bytes: int
    auto_vacuum: int
    reclaims_itself: bool = False


def space(conn: sqlite3.Connection) -> Space:
    """The :class:`Space` of the database behind ``conn`` (any connection, read-only too;
    a plain ``sqlite3`` one, as the status API's read connections are)."""
    page_size = _pragma(conn, "page_size")
    return Space(
        size_bytes=_pragma(conn, "page_count") * page_size,
        free_bytes=_pragma(conn, "freelist_count") * page_size,
        auto_vacuum=_pragma(conn, "auto_vacuum"),
    )


@dataclass(frozen=True)
class Prunable:
    """What a prune with that cutoff removes, and the old deliveries it keeps."""

    callbacks: int
    deliveries: int
    dead_kept: int
    kept_for_files: int


def prunable_sql(mark: str) -> list[str]:
    """The four counts of :class:`Prunable`, in its order, each a ``SELECT COUNT(*)`` whose
    one argument is the cutoff (Unix ms); ``mark`` is the driver's parameter mark."""
    _, callbacks = _SCAN["callbacks"]
    _, deliveries = _SCAN["deliveries"]
    return [
        f"SELECT COUNT(*) FROM callbacks WHERE {callbacks.format(m=mark)}",
        f"SELECT COUNT(*) FROM deliveries WHERE {deliveries.format(m=mark)}",
        f"SELECT COUNT(*) FROM deliveries WHERE state = 'dead' AND updated_at < {mark}",
        f"SELECT COUNT(*) FROM deliveries WHERE state = 'done' AND updated_at < {mark}"
        " AND EXISTS (SELECT 1 FROM files f WHERE f.delivery_id = deliveries.id)",
    ]


def prunable(conn: sqlite3.Connection, cutoff_ms: int) -> Prunable:
    """Count, without changing anything, what :class:`PruneWindow` would remove before
    ``cutoff_ms`` (Unix ms), and the old deliveries it keeps (dead ones; done ones with a
    saved file). One scan of each table; meant for a read connection (plain ``sqlite3``)."""
    counts = [int(conn.execute(sql, (cutoff_ms,)).fetchone()[0]) for sql in prunable_sql("?")]
    return Prunable(*counts)


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    """``PRAGMA name``'s value, on any plain ``sqlite3`` connection (the writer's, on its
    thread, or a read connection)."""
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return int(row[0]) if row else 0
