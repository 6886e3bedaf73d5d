"""The outbox's write operations: claim due deliveries, finish an attempt, recover after a
crash, replay.

A delivery is one (transition, plugin) pair. Its row is written in the transaction that
records the transition (``receiver.store.batches``), so an acknowledged callback always has
its deliveries on disk. States (:class:`~receiver.models.DeliveryState`):

* ``pending``: waiting for its first attempt (or replayed by hand), due at ``next_attempt_at``;
* ``running``: claimed by the dispatcher, the handler is running (``attempts`` counts it,
  ``next_attempt_at`` is NULL);
* ``failed``: the last attempt failed, the next one is due at ``next_attempt_at``;
* ``done``: the handler returned; ``dead``: no attempt is left, ``last_error`` says why.

Each operation is a :class:`~receiver.store.transaction.WriteOp` that
:meth:`receiver.writer.Writer.submit` runs in the writer's group-commit transaction, inside a
savepoint of its own; its result reaches the caller once that transaction has committed.
Times are Unix ms.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from receiver.errors import DeliveryNotFound, DeliveryRunning, PluginNotLoaded
from receiver.models import DeliveryState, Event, SavedFile
from receiver.store.rows import decode, marks, select_list
from receiver.store.transaction import Transaction

T = TypeVar("T")


class DeliveryOp(Generic[T]):
    """A write operation on deliveries; the transaction runs it in a savepoint of its own."""

    task_keys: ClassVar[None] = None

    def run(self, tx: Transaction) -> T:
        """Run :meth:`apply` on the transaction's connection."""
        return self.apply(tx.conn)

    def apply(self, conn: sqlite3.Connection) -> T:
        """The operation's statements (on the writer's thread)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Job:
    """A claimed delivery: which plugin runs which event."""

    plugin: str
    event: Event


@dataclass(frozen=True)
class Claimed:
    """What :class:`Claim` returns: the jobs, and when the next unclaimed delivery is due
    (Unix ms, None when nothing is waiting for a plugin with a free slot)."""

    jobs: list[Job]
    next_due_at: int | None


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the delivery's new state and what to store with it."""

    state: DeliveryState
    next_attempt_at: int | None = None
    last_error: str | None = None
    files: tuple[SavedFile, ...] = ()


#: Where each event field is read: the transition ``t`` (its own snapshot), the task ``k``
#: or the delivery ``d``.
_EVENT_SOURCES = {
    "delivery_id": "d.id",
    "attempt": "d.attempts",
    "external_task_id": "k",
    "route": "k",
    "request": "k",
    "created_at": "k",
}
_EVENT_COLUMNS = ("idempotency_key", "saved_files")  # derived, not stored
#: The events of deliveries, by id: ``{marks}`` is the ids' placeholders (SQL that Postgres
#: runs too, with its own placeholders: ``receiver.store.postgres.deliveries``).
EVENT_SQL = (
    "SELECT d.plugin, "
    + select_list(
        [n for n in Event.__dataclass_fields__ if n not in _EVENT_COLUMNS],
        tables=_EVENT_SOURCES,
        default="t",
    )
    + " FROM deliveries d JOIN transitions t ON t.id = d.transition_id"
    " JOIN tasks k ON k.task_id = t.task_id WHERE d.id IN ({marks}) ORDER BY d.id"
)


@dataclass(frozen=True)
class Claim(DeliveryOp[Claimed]):
    """Mark due deliveries ``running`` (``attempts + 1``) and load their events.

    Args:
        slots: Free handler slots per plugin name; at most that many are claimed for each.
        now_ms: Deliveries with ``next_attempt_at <= now_ms`` are due.
    """

    slots: dict[str, int]
    now_ms: int

    def apply(self, conn: sqlite3.Connection) -> Claimed:
        ids: list[int] = []
        left: list[str] = []
        for plugin, free in self.slots.items():
            if free <= 0:
                continue
            cur = conn.execute(
                "UPDATE deliveries SET state = 'running', attempts = attempts + 1,"
                " next_attempt_at = NULL, updated_at = ?"
                " WHERE id IN (SELECT id FROM deliveries WHERE plugin = ?"
                " AND state IN ('pending', 'failed') AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?) RETURNING id",
                (self.now_ms, plugin, self.now_ms, free),
            )
            got = [int(r[0]) for r in cur.fetchall()]
            ids += got
            if len(got) < free:
                left.append(plugin)
        jobs = _load_jobs(conn, ids) if ids else []
        return Claimed(jobs, _next_due(conn, left) if left else None)


def _next_due(conn: sqlite3.Connection, plugins: list[str]) -> int | None:
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE state IN ('pending', 'failed')"
        f" AND plugin IN ({marks(len(plugins))})",
        plugins,
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _load_jobs(conn: sqlite3.Connection, ids: list[int]) -> list[Job]:
    rows = [decode(r) for r in conn.execute(EVENT_SQL.format(marks=marks(len(ids))), ids)]
    return jobs_of(rows, saved_files(conn, sorted({r["task_id"] for r in rows})))


def jobs_of(rows: list[dict[str, Any]], files: dict[str, list[SavedFile]]) -> list[Job]:
    """The jobs of :data:`EVENT_SQL`'s rows (decoded: ``receiver.store.rows.decode``), each
    event with its task's saved files (``{task_id: [SavedFile]}``), in the rows' order."""
    jobs = []
    for r in rows:
        plugin = r.pop("plugin")
        key = f"{r['task_id']}:{r['task_status']}"
        saved = tuple(files.get(r["task_id"], ()))
        jobs.append(Job(plugin, Event(idempotency_key=key, saved_files=saved, **r)))
    return jobs


def saved_files(conn: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[SavedFile]]:
    """The files recorded for each of ``task_ids``, by id: ``{task_id: [SavedFile]}``."""
    names = ", ".join(SavedFile.__dataclass_fields__)
    found: dict[str, list[SavedFile]] = {}
    for r in conn.execute(
        f"SELECT task_id, {names} FROM files WHERE task_id IN ({marks(len(task_ids))}) ORDER BY id",
        task_ids,
    ):
        found.setdefault(r[0], []).append(SavedFile(*tuple(r)[1:]))
    return found


#: A saved file's columns, in the order of :data:`UPSERT_FILE_SET`'s values.
FILE_COLUMNS = ["task_id", "delivery_id", *SavedFile.__dataclass_fields__, "saved_at"]
#: The latest save of a (task, url) replaces the one before (the ``ON CONFLICT`` clause).
UPSERT_FILE_SET = " ON CONFLICT (task_id, url) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in FILE_COLUMNS if c not in ("task_id", "url")
)
_UPSERT_FILE = (
    f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({marks(len(FILE_COLUMNS))})"
    + UPSERT_FILE_SET
)


@dataclass(frozen=True)
class Finish(DeliveryOp[bool]):
    """Store an attempt's :class:`Outcome` (and the files it saved) for a running delivery.

    Returns:
        Whether it was stored: False when the delivery was no longer running that attempt
        (on Postgres: its lease expired and another attempt took it over); nothing changed.

    Args:
        attempt: Which attempt ended (the event's ``attempt``, the claim's ``attempts``).
            Where replicas share a store (Postgres) the outcome counts only if the delivery
            is still at that attempt, so the late outcome of an earlier attempt changes
            nothing. SQLite ignores it: one dispatcher owns every running row there, and a
            running row is never claimed again before that dispatcher restarts. None (the
            default): any attempt.
    """

    delivery_id: int
    task_id: str
    outcome: Outcome
    now_ms: int
    attempt: int | None = None

    @property
    def one_statement(self) -> bool:
        """Without files it is one UPDATE: it needs no savepoint of its own."""
        return not self.outcome.files

    def apply(self, conn: sqlite3.Connection) -> bool:
        o = self.outcome
        cur = conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = ?, updated_at = ?"
            " WHERE id = ? AND state = 'running'",
            (
                o.state,
                o.next_attempt_at,
                None if o.state is DeliveryState.DONE else o.last_error,
                self.now_ms,
                self.delivery_id,
            ),
        )
        if cur.rowcount and o.files:
            conn.executemany(
                _UPSERT_FILE,
                [(self.task_id, self.delivery_id, *astuple(f), self.now_ms) for f in o.files],
            )
        return cur.rowcount == 1


@dataclass(frozen=True)
class Recover(DeliveryOp[int]):
    """At start-up: deliveries left ``running`` by a crash or a kill are due again at once;
    their interrupted attempt counts, so one that was on its last attempt (it may be what
    crashed the process) becomes ``dead`` instead of crashing it again for ever.

    Args:
        now_ms: The time they become due.
        attempts_allowed: Per plugin, ``1 + len(retry_schedule_s)``; plugins not named keep
            every interrupted delivery due.

    Returns:
        How many deliveries were recovered (made due or dead).
    """

    now_ms: int
    attempts_allowed: dict[str, int] = field(default_factory=dict)
    reason: str = "interrupted: the receiver stopped during this attempt"

    def apply(self, conn: sqlite3.Connection) -> int:
        dead = 0
        for plugin, allowed in self.attempts_allowed.items():
            dead += conn.execute(
                "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, last_error = ?,"
                " updated_at = ? WHERE state = 'running' AND plugin = ? AND attempts >= ?",
                (f"{self.reason} (its last attempt)", self.now_ms, plugin, allowed),
            ).rowcount
        return (
            dead
            + conn.execute(
                "UPDATE deliveries SET state = 'failed', next_attempt_at = ?, last_error = ?,"
                " updated_at = ? WHERE state = 'running'",
                (self.now_ms, self.reason, self.now_ms),
            ).rowcount
        )


@dataclass(frozen=True)
class Redeliver(DeliveryOp[int]):
    """Replay deliveries: back to ``pending``, due now, with a fresh retry schedule
    (``attempts`` reset to 0). Either one delivery by ``delivery_id``, or every delivery
    matching the filter (``state``, ``plugin``, created at or after ``since_ms``) that is not
    running.

    Returns:
        How many deliveries were replayed.

    Raises:
        DeliveryNotFound: ``delivery_id`` names no delivery.
        DeliveryRunning: ``delivery_id`` is running now.
        PluginNotLoaded: ``delivery_id`` belongs to a plugin not in ``loaded``.
    """

    now_ms: int
    delivery_id: int | None = None
    state: DeliveryState | None = None
    plugin: str | None = None
    since_ms: int | None = None
    loaded: frozenset[str] | None = None

    #: The one delivery's state and plugin (``{m}``: the driver's parameter mark).
    FIND_SQL = "SELECT state, plugin FROM deliveries WHERE id = {m}"

    def apply(self, conn: sqlite3.Connection) -> int:
        if self.delivery_id is not None:
            self.check_found(conn.execute(self.FIND_SQL.format(m="?"), (self.delivery_id,)))
        sql, args = self.update_sql("?")
        return conn.execute(sql, args).rowcount

    def check_found(self, rows: Iterable[Sequence[Any]]) -> None:
        """Raise as the class docstring says for ``delivery_id``, given what
        :data:`FIND_SQL` found (every backend runs the same check)."""
        row = next(iter(rows), None)
        if row is None:
            raise DeliveryNotFound(f"no delivery with id {self.delivery_id}")
        if row[0] == DeliveryState.RUNNING:
            raise DeliveryRunning(f"delivery {self.delivery_id} is running now")
        if self.loaded is not None and row[1] not in self.loaded:
            raise PluginNotLoaded(
                f"delivery {self.delivery_id} belongs to plugin {row[1]!r}, which is not "
                f"loaded: enable [plugins.{row[1]}] and restart, then replay it"
            )

    def update_sql(self, mark: str) -> tuple[str, list[Any]]:
        """The replay's ``UPDATE`` and its arguments, with ``mark`` as the driver's parameter
        mark (``?`` for sqlite3, ``%s`` for psycopg)."""
        where, args = ["state != 'running'"], list[Any]()
        if self.loaded is not None:  # none loaded: nothing matches (Postgres has no IN ())
            where.append(f"plugin IN ({', '.join([mark] * len(self.loaded)) or 'NULL'})")
            args.extend(sorted(self.loaded))
        for column, value in (
            ("id", self.delivery_id),
            ("state", self.state),
            ("plugin", self.plugin),
        ):
            if value is not None:
                where.append(f"{column} = {mark}")
                args.append(value)
        if self.since_ms is not None:
            where.append(f"created_at >= {mark}")
            args.append(self.since_ms)
        sql = (
            f"UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = {mark},"
            f" updated_at = {mark} WHERE {' AND '.join(where)}"
        )
        return sql, [self.now_ms, self.now_ms, *args]
