"""The writes of one group-commit batch: the rows it touches, read once, and written once.

:func:`load_batch` reads every task a batch names (and their transitions) in one query each;
the pure state machine (``receiver.transitions``) applies the batch in memory; then
:func:`write_batch` upserts the changed tasks and inserts the new transitions, the raw
callbacks and the outbox rows with one ``executemany`` each, inside the same transaction.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from operator import attrgetter

from receiver.models import DeliveryState
from receiver.store.rows import marks
from receiver.transitions import Batch, CallbackRow, TaskRow, TransitionRow
from submitter.protocol import TaskStatus

#: ``router(task_status, route)`` -> the names of the plugins that want that transition
#: (``receiver.fanout``); one outbox row is written for each.
Router = Callable[[str, str | None], list[str]]


def _columns(row_type: type) -> list[str]:
    return [f.name for f in fields(row_type)]


def _insert(table: str, row_type: type) -> str:
    """``INSERT INTO table (columns) VALUES``: :func:`_insert_rows` adds the rows."""
    return f"INSERT INTO {table} ({', '.join(_columns(row_type))}) VALUES"


#: Most rows in one INSERT statement (SQLite allows 32,766 parameters; a task row has 13).
ROWS_PER_STATEMENT = 500


def _insert_rows(
    conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[object, ...]], tail: str = ""
) -> None:
    """Insert ``rows`` with one multi-row ``INSERT ... VALUES (...), (...)`` statement per
    :data:`ROWS_PER_STATEMENT`: one step of SQLite each, where ``executemany`` steps once per
    row and hands the GIL back and forth every time (the event loop's thread holds it most of
    the time, so each hand-over waits)."""
    if not rows:
        return
    one = f"({marks(len(rows[0]))})"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = list(itertools.chain.from_iterable(chunk))
        conn.execute(f"{insert} {','.join([one] * len(chunk))}{tail}", values)


_TASK_COLUMNS = _columns(TaskRow)
# Row -> tuple in column order (attrgetter: no deep copy, unlike dataclasses.astuple).
_task_values = attrgetter(*_TASK_COLUMNS)
_transition_values = attrgetter(*_columns(TransitionRow))
_callback_values = attrgetter(*_columns(CallbackRow))
_INSERT_TASK = _insert("tasks", TaskRow)
_ON_TASK_CONFLICT = " ON CONFLICT (task_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _TASK_COLUMNS if c != "task_id"
)
_INSERT_TRANSITION = _insert("transitions", TransitionRow)
_INSERT_CALLBACK = _insert("callbacks", CallbackRow)


def load_batch(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> Batch:
    """Load the rows a batch touches (inside the writer's open transaction).

    Args:
        keys: ``(task_id, external_task_id)`` of each operation; a task matching either is
            loaded, with the ``(task_id, task_status)`` pairs already stored for it.
    """
    pairs = list(keys)
    if not pairs:
        return Batch(tasks={}, seen=set(), next_transition_id=0)  # outbox operations only
    ids, exts = sorted({k[0] for k in pairs}), sorted({k[1] for k in pairs})
    sql = (
        f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE task_id IN ({marks(len(ids))})"
        f" OR external_task_id IN ({marks(len(exts))})"
    )
    tasks = {r["task_id"]: _task_row(r) for r in conn.execute(sql, [*ids, *exts])}
    seen: set[tuple[str, TaskStatus]] = set()
    if tasks:
        names = list(tasks)
        sql = f"SELECT task_id, task_status FROM transitions WHERE task_id IN ({marks(len(names))})"
        seen = {(r[0], TaskStatus(r[1])) for r in conn.execute(sql, names)}
    row = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM transitions").fetchone()
    return Batch(tasks=tasks, seen=seen, next_transition_id=int(row[0]) if row else 1)


def _task_row(r: sqlite3.Row) -> TaskRow:
    row = TaskRow(**dict(r))
    row.task_status = TaskStatus(row.task_status)
    return row


def write_batch(conn: sqlite3.Connection, batch: Batch, router: Router) -> None:
    """Write what a batch produced: task rows, new transitions, the raw callbacks, and one
    ``pending`` delivery per (new transition, plugin that ``router`` names), due at once."""
    # A task appears once in ``changed``: no row of one statement conflicts with another.
    tasks = [_task_values(t) for t in batch.changed.values()]
    _insert_rows(conn, _INSERT_TASK, tasks, _ON_TASK_CONFLICT)
    _insert_rows(conn, _INSERT_TRANSITION, [_transition_values(t) for t in batch.transitions])
    _insert_deliveries(conn, batch.transitions, batch.tasks, router)
    _insert_rows(conn, _INSERT_CALLBACK, [_callback_values(c) for c in batch.callbacks])


def _insert_deliveries(
    conn: sqlite3.Connection,
    transitions: Sequence[TransitionRow],
    tasks: dict[str, TaskRow],
    router: Router,
) -> None:
    rows = [
        (t.id, name, DeliveryState.PENDING, t.received_at, t.received_at, t.received_at)
        for t in transitions
        for name in router(t.task_status, tasks[t.task_id].route)
    ]
    _insert_rows(
        conn,
        "INSERT INTO deliveries (transition_id, plugin, state, next_attempt_at, created_at,"
        " updated_at) VALUES",
        rows,
    )
