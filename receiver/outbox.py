"""The outbox: delivery rows, and the operations on them that run inside the writer.

A delivery is one (transition, plugin) pair. Its row is written in the transaction that
records the transition, so an acknowledged callback always has its deliveries on disk. States:

* ``pending``: waiting for its first attempt (or replayed by hand), due at ``next_attempt_at``;
* ``running``: claimed by the dispatcher, the handler is running (``attempts`` counts it,
  ``next_attempt_at`` is NULL);
* ``failed``: the last attempt failed, the next one is due at ``next_attempt_at``;
* ``done``: the handler returned; ``dead``: no attempt is left, ``last_error`` says why.

Every operation here is an :class:`OutboxOp` that :meth:`receiver.writer.Writer.execute` runs
in the writer's group-commit transaction; the values they return reach the caller only once
that transaction has committed. Times are Unix ms.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import aiosqlite

from receiver.plugins import Event, PermanentError, RetryAfter, SavedFile
from receiver.transitions import TaskRow, TransitionRow
from submitter.protocol import TaskStatus

T = TypeVar("T")
#: ``router(task_status, route)`` -> the names of the plugins that want that transition.
Router = Callable[[str, str | None], list[str]]
JITTER = 0.2


class DeliveryState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class DeliveryNotFound(Exception):
    """No delivery has that id (answered 404)."""


class DeliveryRunning(Exception):
    """The delivery is running now and cannot be replayed until it ends (answered 409)."""


class PluginNotLoaded(Exception):
    """The delivery's plugin is not loaded, so a replay could not run (answered 409)."""


class OutboxOp(Generic[T]):
    """An operation the writer runs inside its transaction (subclasses define :meth:`run`).

    The writer runs each inside a savepoint: an exception from ``run`` undoes that
    operation's writes and reaches its caller only.
    """

    async def run(self, conn: aiosqlite.Connection) -> T:
        raise NotImplementedError


def _marks(n: int) -> str:
    return ",".join("?" * n)


async def insert_deliveries(
    conn: aiosqlite.Connection,
    transitions: Sequence[TransitionRow],
    tasks: dict[str, TaskRow],
    router: Router,
) -> int:
    """Write one ``pending`` delivery per (new transition, interested plugin), due at once.

    Returns:
        The number of rows written.
    """
    rows = [
        (t.id, name, DeliveryState.PENDING.value, t.received_at, t.received_at, t.received_at)
        for t in transitions
        for name in router(t.task_status, tasks[t.task_id].route)
    ]
    if rows:
        await conn.executemany(
            "INSERT INTO deliveries (transition_id, plugin, state, next_attempt_at, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


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


_EVENT_SQL = """
SELECT d.id AS delivery_id, d.plugin, d.attempts, t.task_id, t.task_status, t.task_status_msg,
       t.task_result_json, t.final_unit_deduction, t.updated_at, t.received_at,
       k.external_task_id, k.route, k.request_json, k.created_at
FROM deliveries d
JOIN transitions t ON t.id = d.transition_id
JOIN tasks k ON k.task_id = t.task_id
WHERE d.id IN ({marks}) ORDER BY d.id
"""


@dataclass(frozen=True)
class Claim(OutboxOp[Claimed]):
    """Mark due deliveries ``running`` (``attempts + 1``) and load their events.

    Args:
        slots: Free handler slots per plugin name; at most that many are claimed for each.
        now_ms: Deliveries with ``next_attempt_at <= now_ms`` are due.
    """

    slots: dict[str, int]
    now_ms: int

    async def run(self, conn: aiosqlite.Connection) -> Claimed:
        ids: list[int] = []
        left: list[str] = []
        for plugin, free in self.slots.items():
            if free <= 0:
                continue
            async with conn.execute(
                "UPDATE deliveries SET state = 'running', attempts = attempts + 1,"
                " next_attempt_at = NULL, updated_at = ?"
                " WHERE id IN (SELECT id FROM deliveries WHERE plugin = ?"
                " AND state IN ('pending', 'failed') AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT ?) RETURNING id",
                (self.now_ms, plugin, self.now_ms, free),
            ) as cur:
                got = [int(r[0]) for r in await cur.fetchall()]
            ids += got
            if len(got) < free:
                left.append(plugin)
        jobs = await _load_jobs(conn, ids) if ids else []
        next_due = None
        if left:
            async with conn.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state IN ('pending', 'failed')"
                f" AND plugin IN ({_marks(len(left))})",
                left,
            ) as cur:
                row = await cur.fetchone()
            next_due = None if row is None or row[0] is None else int(row[0])
        return Claimed(jobs, next_due)


async def _load_jobs(conn: aiosqlite.Connection, ids: list[int]) -> list[Job]:
    async with conn.execute(_EVENT_SQL.format(marks=_marks(len(ids))), ids) as cur:
        rows = list(await cur.fetchall())
    task_ids = sorted({r["task_id"] for r in rows})
    async with conn.execute(
        f"SELECT task_id, url, path, bytes, sha256 FROM files WHERE task_id IN"
        f" ({_marks(len(task_ids))}) ORDER BY id",
        task_ids,
    ) as cur:
        files: dict[str, list[SavedFile]] = {}
        for f in await cur.fetchall():
            files.setdefault(f[0], []).append(SavedFile(f[1], f[2], f[3], f[4]))
    return [Job(r["plugin"], _event(r, tuple(files.get(r["task_id"], ())))) for r in rows]


def _event(r: aiosqlite.Row, saved: tuple[SavedFile, ...]) -> Event:
    return Event(
        idempotency_key=f"{r['task_id']}:{r['task_status']}",
        delivery_id=r["delivery_id"],
        attempt=r["attempts"],
        task_id=r["task_id"],
        external_task_id=r["external_task_id"],
        route=r["route"],
        task_status=TaskStatus(r["task_status"]),
        task_status_msg=r["task_status_msg"],
        task_result=_load(r["task_result_json"]),
        final_unit_deduction=r["final_unit_deduction"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        received_at=r["received_at"],
        request=_load(r["request_json"]),
        saved_files=saved,
    )


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended: the delivery's new state and what to store with it."""

    state: DeliveryState
    next_attempt_at: int | None = None
    last_error: str | None = None
    files: tuple[SavedFile, ...] = ()


def outcome_of(
    error: BaseException | None,
    *,
    attempts: int,
    schedule_s: Sequence[float],
    now_ms: int,
    rng: random.Random,
    files: Iterable[SavedFile] = (),
) -> Outcome:
    """Decide what follows an attempt.

    Args:
        error: What the handler raised (a ``TimeoutError`` for a timeout), or None.
        attempts: Attempts made so far, this one included (1 after the first).
        schedule_s: The waits before attempts 2, 3, ...; ``len(schedule_s) + 1`` attempts
            in all. Each wait is multiplied by a uniform factor in [0.8, 1.2] (jitter).

    Returns:
        ``done``; ``failed`` with the next attempt's time; or ``dead`` after the last attempt
        or on :class:`PermanentError`. A :class:`RetryAfter` sets the wait (no jitter).
    """
    kept = tuple(files)
    if error is None:
        return Outcome(DeliveryState.DONE, files=kept)
    message = describe_error(error)
    if isinstance(error, PermanentError) or attempts > len(schedule_s):
        return Outcome(DeliveryState.DEAD, last_error=message, files=kept)
    if isinstance(error, RetryAfter):
        wait_s = error.seconds
    else:
        wait_s = schedule_s[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    return Outcome(DeliveryState.FAILED, now_ms + round(wait_s * 1000), message, kept)


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, at most 1,000 characters (kept as ``last_error``)."""
    if isinstance(error, TimeoutError):
        return "timeout: the handler did not finish within timeout_s"
    detail = str(error)
    text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return text[:1000]


@dataclass(frozen=True)
class Finish(OutboxOp[None]):
    """Store an attempt's :class:`Outcome` (and the files it saved) for a running delivery."""

    delivery_id: int
    task_id: str
    outcome: Outcome
    now_ms: int

    async def run(self, conn: aiosqlite.Connection) -> None:
        o = self.outcome
        await conn.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, last_error = ?, updated_at = ?"
            " WHERE id = ? AND state = 'running'",
            (
                o.state.value,
                o.next_attempt_at,
                None if o.state is DeliveryState.DONE else o.last_error,
                self.now_ms,
                self.delivery_id,
            ),
        )
        if o.files:
            await conn.executemany(
                "INSERT INTO files (task_id, delivery_id, url, path, bytes, sha256, saved_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, url) DO UPDATE SET"
                " delivery_id = excluded.delivery_id, path = excluded.path,"
                " bytes = excluded.bytes, sha256 = excluded.sha256, saved_at = excluded.saved_at",
                [
                    (self.task_id, self.delivery_id, f.url, f.path, f.bytes, f.sha256, self.now_ms)
                    for f in o.files
                ],
            )


@dataclass(frozen=True)
class Recover(OutboxOp[int]):
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

    async def run(self, conn: aiosqlite.Connection) -> int:
        dead = 0
        for plugin, allowed in self.attempts_allowed.items():
            async with conn.execute(
                "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, last_error = ?,"
                " updated_at = ? WHERE state = 'running' AND plugin = ? AND attempts >= ?",
                (f"{self.reason} (its last attempt)", self.now_ms, plugin, allowed),
            ) as cur:
                dead += cur.rowcount
        async with conn.execute(
            "UPDATE deliveries SET state = 'failed', next_attempt_at = ?, last_error = ?,"
            " updated_at = ? WHERE state = 'running'",
            (self.now_ms, self.reason, self.now_ms),
        ) as cur:
            return dead + cur.rowcount


@dataclass(frozen=True)
class Redeliver(OutboxOp[int]):
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

    async def run(self, conn: aiosqlite.Connection) -> int:
        if self.delivery_id is not None:
            async with conn.execute(
                "SELECT state, plugin FROM deliveries WHERE id = ?", (self.delivery_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise DeliveryNotFound(f"no delivery with id {self.delivery_id}")
            if row[0] == DeliveryState.RUNNING:
                raise DeliveryRunning(f"delivery {self.delivery_id} is running now")
            if self.loaded is not None and row[1] not in self.loaded:
                raise PluginNotLoaded(
                    f"delivery {self.delivery_id} belongs to plugin {row[1]!r}, which is not "
                    f"loaded: enable [plugins.{row[1]}] and restart, then replay it"
                )
        where, args = ["state != 'running'"], list[Any]()
        if self.loaded is not None:
            where.append(f"plugin IN ({_marks(len(self.loaded))})")
            args.extend(sorted(self.loaded))
        for column, value in (
            ("id = ?", self.delivery_id),
            ("state = ?", self.state.value if self.state else None),
            ("plugin = ?", self.plugin),
            ("created_at >= ?", self.since_ms),
        ):
            if value is not None:
                where.append(column)
                args.append(value)
        async with conn.execute(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
            f" updated_at = ? WHERE {' AND '.join(where)}",
            [self.now_ms, self.now_ms, *args],
        ) as cur:
            return cur.rowcount
