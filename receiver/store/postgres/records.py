"""Recording callbacks and registrations on Postgres, where every replica writes at once.

SQLite's writer owns its file, so it may read a batch's task rows, apply the state machine in
memory and write them back (``receiver.store.batches``). Postgres is shared: here the database
decides, inside the statements, and each operation runs at once in the batch's transaction.

* **What the task would become** comes from the state machine itself: the operation is applied
  to an empty :class:`~receiver.transitions.Batch` (as if the task were new), which gives the
  proposed :class:`TaskRow`, :class:`TransitionRow` and :class:`CallbackRow`, the one
  definition of each shape and of how Kling's fields map onto them.
* **Forward only.** ``INSERT INTO tasks ... ON CONFLICT (task_id) DO UPDATE ... WHERE
  tasks.status_rank < EXCLUDED.status_rank``: the task is created, or moved forward only when
  the proposed state ranks higher (``TaskStatus.rank``), compared in the statement under the
  row's lock; a replica racing on the same task waits for that lock and then compares with
  the committed row. Which fields a forward move changes follows
  :meth:`Batch.apply_callback` and :meth:`Batch.apply_registration` (``created_at``,
  ``route`` and ``request_json`` keep a value once they have one; ``task_info`` is kept when
  a callback brings none).
* **Dedupe.** The new transition is ``INSERT ... ON CONFLICT (task_id, task_status) DO
  NOTHING``: the unique key decides, across replicas. Otherwise the verdict is ``duplicate``
  when that ``(task_id, task_status)`` is stored, else ``stale``.
* **The outbox** rows of a new transition are inserted in the same transaction, one per
  plugin that the router names.
* The URL's ``external_task_id`` and the body's ``task_id`` must belong to the same task:
  otherwise :class:`~receiver.errors.TaskConflict` (the operation's savepoint is undone).
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter
from typing import Any

import psycopg
from psycopg import errors

from receiver.errors import TaskConflict
from receiver.models import DeliveryState, Verdict
from receiver.store.batches import Router
from receiver.transitions import (
    Batch,
    CallbackRow,
    IncomingCallback,
    Registration,
    TaskRow,
    TransitionRow,
)

_TASK_COLUMNS = [f.name for f in dataclasses.fields(TaskRow)]
_task_values = attrgetter(*_TASK_COLUMNS)
# A transition's id is the database's (an identity column shared by every replica).
_TRANSITION_COLUMNS = [f.name for f in dataclasses.fields(TransitionRow) if f.name != "id"]
_transition_values = attrgetter(*_TRANSITION_COLUMNS)
_CALLBACK_COLUMNS = [f.name for f in dataclasses.fields(CallbackRow)]
_callback_values = attrgetter(*_CALLBACK_COLUMNS)


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def _forward(changes: dict[str, str]) -> str:
    """The conditional upsert of a task and the insert of its transition, in one statement
    (one round trip): ``changes`` is what a forward move sets, by column (SQL over ``k``, the
    stored row, and ``excluded``, the proposed one). Its arguments: the task's columns and
    its rank, then the transition's columns. It returns no row when the task did not move,
    else ``(route, transition id)``, the id NULL when the transition's key was taken."""
    sets = ", ".join(f"{c} = {v}" for c, v in changes.items())
    return (
        "WITH moved AS ("
        f"INSERT INTO tasks AS k ({', '.join(_TASK_COLUMNS)}, status_rank)"
        f" VALUES ({_marks(len(_TASK_COLUMNS) + 1)})"
        " ON CONFLICT (task_id) DO UPDATE SET task_status = excluded.task_status,"
        f" status_rank = excluded.status_rank, {sets}"
        " WHERE k.status_rank < excluded.status_rank"
        " AND k.external_task_id = excluded.external_task_id"
        " RETURNING k.route),"
        f" added AS (INSERT INTO transitions ({', '.join(_TRANSITION_COLUMNS)})"
        f" SELECT {_marks(len(_TRANSITION_COLUMNS))} FROM moved"
        " ON CONFLICT (task_id, task_status) DO NOTHING RETURNING id)"
        " SELECT moved.route, (SELECT id FROM added) FROM moved"
    )


_NEW = "excluded.{0}"
_KEEP = "COALESCE(k.{0}, excluded.{0})"

#: A callback that moves its task forward: Kling's fields, as ``Batch.apply_callback`` sets them.
_CALLBACK_FORWARD = _forward(
    {
        "task_status_msg": _NEW.format("task_status_msg"),
        "task_result_json": _NEW.format("task_result_json"),
        "task_info_json": "COALESCE(excluded.task_info_json, k.task_info_json)",
        "final_unit_deduction": _NEW.format("final_unit_deduction"),
        "created_at": _KEEP.format("created_at"),
        "updated_at": _NEW.format("updated_at"),
        "last_received_at": _NEW.format("last_received_at"),
    }
)
#: A registration that moves its task forward: the status, and what it fills in.
_REGISTRATION_FORWARD = _forward(
    {c: _KEEP.format(c) for c in ("route", "request_json", "created_at")}
)

#: What a callback that does not move its task changes; and whether its state was stored.
_CALLBACK_TOUCH = (
    "UPDATE tasks SET last_received_at = GREATEST(last_received_at, %(at)s)"
    " WHERE task_id = %(task_id)s RETURNING external_task_id,"
    " EXISTS (SELECT 1 FROM transitions t WHERE t.task_id = %(task_id)s"
    " AND t.task_status = %(task_status)s)"
)
#: The same for a registration: it fills in what the task lacks.
_REGISTRATION_TOUCH = (
    "UPDATE tasks SET route = COALESCE(route, %(route)s),"
    " request_json = COALESCE(request_json, %(request_json)s),"
    " created_at = COALESCE(created_at, %(created_at)s)"
    " WHERE task_id = %(task_id)s RETURNING external_task_id,"
    " EXISTS (SELECT 1 FROM transitions t WHERE t.task_id = %(task_id)s"
    " AND t.task_status = %(task_status)s)"
)
_INSERT_CALLBACK = (
    f"INSERT INTO callbacks ({', '.join(_CALLBACK_COLUMNS)})"
    f" VALUES ({_marks(len(_CALLBACK_COLUMNS))})"
)
_INSERT_DELIVERY = (
    "INSERT INTO deliveries (transition_id, plugin, state, next_attempt_at, created_at,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s)"
)


#: The savepoint each operation of a batch runs in (``PgTransaction.run`` opens and ends it).
OP_SAVEPOINT = "op"


class _AlreadyStored(Exception):
    """The transition's unique key was taken (the forward move is undone with it)."""


class Records:
    """The callbacks and registrations of one batch, each decided by the database at once.

    Args:
        conn: The writer's connection, inside the batch's open transaction (each operation
            runs in a savepoint of its own: ``receiver.store.postgres.transaction``).
        router: Names the plugins that want a new transition (one outbox row each).

    Attributes:
        transitions: The new transitions recorded so far, with their database ids (the
            writer's commit listeners get them).
        callbacks: The raw callbacks stored so far, whatever their verdict.
        outbox_due_at: When the earliest outbox row written so far is due, Unix ms (None:
            none was); the batch's notification to the other replicas says so.
    """

    def __init__(self, conn: psycopg.Connection[Any], router: Router) -> None:
        self.conn = conn
        self._router = router
        self.transitions: list[TransitionRow] = []
        self.callbacks: list[CallbackRow] = []
        self.outbox_due_at: int | None = None

    def apply_callback(self, cb: IncomingCallback) -> Verdict:
        """Record one callback and, when it moves its task forward, its transition and
        outbox rows; the raw body always, with its verdict.

        Returns:
            ``new``, ``duplicate`` or ``stale`` (rules: ``receiver.transitions``).

        Raises:
            TaskConflict: its ``task_id`` and ``external_task_id`` belong to different tasks.
            psycopg.Error: a statement failed (a value Postgres cannot store).
        """
        proposed = Batch(tasks={}, seen=set(), next_transition_id=0)
        proposed.apply_callback(cb)
        (callback,) = proposed.callbacks
        verdict = self._record(
            proposed, _CALLBACK_FORWARD, _CALLBACK_TOUCH, {"at": cb.received_at_ms}
        )
        stored = dataclasses.replace(callback, verdict=verdict)
        self.conn.execute(_INSERT_CALLBACK, _callback_values(stored))
        self.callbacks.append(stored)
        return verdict

    def apply_registration(self, reg: Registration) -> Verdict:
        """Record one registration: the task with its route and request, and ``submitted``
        (its transition and outbox rows) when the task has no state yet.

        Raises:
            TaskConflict: its ``task_id`` and ``external_task_id`` belong to different tasks.
            psycopg.Error: a statement failed.
        """
        proposed = Batch(tasks={}, seen=set(), next_transition_id=0)
        proposed.apply_registration(reg)
        fill = {"route": reg.route, "request_json": reg.request_json, "created_at": reg.created_at}
        return self._record(proposed, _REGISTRATION_FORWARD, _REGISTRATION_TOUCH, fill)

    def _record(
        self, proposed: Batch, forward: str, touch: str, touch_args: dict[str, Any]
    ) -> Verdict:
        (task,) = proposed.changed.values()
        (transition,) = proposed.transitions
        try:
            recorded = self._forward(forward, task, transition)
        except _AlreadyStored:
            recorded = None
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "tasks_external_task_id_key":
                raise
            raise _conflict(task) from None
        if recorded is not None:
            self.transitions.append(recorded)
            return Verdict.NEW
        args = {**touch_args, "task_id": task.task_id, "task_status": task.task_status}
        row = self.conn.execute(touch, args).fetchone()
        assert row is not None  # the upsert found the task: it exists, and is locked
        if row[0] != task.external_task_id:
            raise _conflict(task)
        return Verdict.DUPLICATE if row[1] else Verdict.STALE

    def _forward(self, sql: str, task: TaskRow, transition: TransitionRow) -> TransitionRow | None:
        """Create or move the task forward with its transition (one statement), then its
        outbox rows: None when the task did not move (nothing was written).

        It is the operation's first write, inside the operation's savepoint
        (:data:`OP_SAVEPOINT`, ``receiver.store.postgres.transaction``): a move whose
        transition key was taken is undone by rolling back to it (:class:`_AlreadyStored`).
        """
        args = (*_task_values(task), task.task_status.rank, *_transition_values(transition))
        moved = self.conn.execute(sql, args).fetchone()
        if moved is None:
            return None
        route, transition_id = moved
        if transition_id is None:  # the key is taken: the state was stored, though it ranked lower
            self.conn.execute(f"ROLLBACK TO {OP_SAVEPOINT}")
            raise _AlreadyStored
        recorded = dataclasses.replace(transition, id=int(transition_id))
        self._outbox(recorded, route)
        return recorded

    def _outbox(self, t: TransitionRow, route: str | None) -> None:
        rows = [
            (t.id, name, DeliveryState.PENDING, t.received_at, t.received_at, t.received_at)
            for name in self._router(t.task_status, route)
        ]
        if rows:
            self.conn.cursor().executemany(_INSERT_DELIVERY, rows)
            due = self.outbox_due_at
            self.outbox_due_at = t.received_at if due is None else min(due, t.received_at)


def _conflict(task: TaskRow) -> TaskConflict:
    return TaskConflict(
        f"task_id {task.task_id} and external_task_id {task.external_task_id} belong to "
        "different tasks"
    )
