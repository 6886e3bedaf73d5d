"""Read-only queries of the status API, on their own connection.

Every answer is a model of ``receiver.models``, built through the one row mapping of
``receiver.store.rows``; the SELECT lists come from the models' fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import TypeVar

import aiosqlite

from receiver.errors import StoreUnavailable
from receiver.models import (
    Backlog,
    Delivery,
    DeliveryState,
    ListedDelivery,
    SavedFile,
    Task,
    TaskSummary,
    Transition,
)
from receiver.store import retention
from receiver.store.rows import decode, select_list
from submitter.protocol import Route, TaskStatus

_NESTED = ("transitions", "callbacks", "deliveries", "files")  # read from other tables
_SUMMARY = select_list(TaskSummary.model_fields)
_TASK = select_list(n for n in Task.model_fields if n not in _NESTED)
_TRANSITION = select_list(Transition.model_fields)
#: A delivery's fields come from ``d`` (deliveries) but for these.
_DELIVERY_SOURCES = {"task_status": "t", "task_id": "t", "external_task_id": "k"}
_DELIVERY = select_list(Delivery.model_fields, tables=_DELIVERY_SOURCES, default="d")
_LISTED = select_list(ListedDelivery.model_fields, tables=_DELIVERY_SOURCES, default="d")
_FILE = select_list(SavedFile.__dataclass_fields__)
#: The states of a delivery that is not over yet (``Backlog.pending``).
_UNFINISHED = (DeliveryState.PENDING, DeliveryState.RUNNING, DeliveryState.FAILED)

T = TypeVar("T")
_LATEST_TRANSITION_BEFORE = (
    "(SELECT MAX(received_at) FROM transitions t WHERE t.task_id = tasks.task_id) < ?"
)


class Reader:
    """Read-only queries for the status API.

    Args:
        conn: A connection from :func:`receiver.store.connect` with ``read_only=True``.

    Every method raises :class:`StoreUnavailable` when the database does not answer.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless ``SELECT 1`` succeeds."""
        await self._fetch("SELECT 1", ())

    async def get_task(self, id_: str) -> Task | None:
        """The task whose task_id (preferred) or external_task_id is ``id_``, or None.

        Transitions come oldest first; deliveries (those of every transition) and files by id.
        """
        rows = await self._fetch(
            f"SELECT {_TASK} FROM tasks WHERE task_id = ? OR external_task_id = ? "
            "ORDER BY task_id = ? DESC LIMIT 1",
            (id_, id_, id_),
        )
        if not rows:
            return None
        task_id = rows[0]["task_id"]
        transitions = await self._fetch(
            f"SELECT {_TRANSITION} FROM transitions WHERE task_id = ? ORDER BY id", (task_id,)
        )
        callbacks = await self._fetch(
            "SELECT verdict, COUNT(*) FROM callbacks WHERE task_id = ? GROUP BY verdict",
            (task_id,),
        )
        deliveries = await self._fetch(
            f"SELECT {_DELIVERY} FROM deliveries d JOIN transitions t ON t.id = d.transition_id"
            " WHERE t.task_id = ? ORDER BY d.id",
            (task_id,),
        )
        files = await self._fetch(
            f"SELECT {_FILE} FROM files WHERE task_id = ? ORDER BY id", (task_id,)
        )
        return Task.model_validate(
            {
                **decode(rows[0]),
                "transitions": [dict(r) for r in transitions],
                "callbacks": {r[0]: r[1] for r in callbacks},
                "deliveries": [dict(r) for r in deliveries],
                "files": [dict(r) for r in files],
            }
        )

    async def list_tasks(
        self,
        *,
        task_status: TaskStatus | None,
        route: Route | None,
        limit: int,
        before_id: int | None,
        transition_before: int | None = None,
    ) -> tuple[list[TaskSummary], int | None]:
        """Tasks newest first (by first-seen order), filtered, at most ``limit``.

        Args:
            transition_before: Only tasks whose latest transition was received before this
                time, Unix ms (``kling-hooks reconcile`` looks for overdue tasks so).

        Returns:
            ``(tasks, next_cursor)``; ``next_cursor`` is None on the last page.
        """
        where, args = _filters(
            ("task_status = ?", task_status),
            ("route = ?", route),
            ("id < ?", before_id),
            (_LATEST_TRANSITION_BEFORE, transition_before),
        )
        rows = await self._fetch(
            f"SELECT id, {_SUMMARY} FROM tasks WHERE {where} ORDER BY id DESC LIMIT ?",
            [*args, limit + 1],
        )
        page, cursor = _paged(rows, limit)
        return [TaskSummary.model_validate(_without_id(r)) for r in page], cursor

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None,
        plugin: str | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[ListedDelivery], int | None]:
        """Deliveries newest first (by id), filtered, at most ``limit``.

        Args:
            state: Only deliveries in this state.
            plugin: Only deliveries to the plugin of this name.
            before_id: The cursor: only deliveries with a smaller id.

        Returns:
            ``(deliveries, next_cursor)``; ``next_cursor`` is None on the last page.
        """
        where, args = _filters(
            ("d.state = ?", state), ("d.plugin = ?", plugin), ("d.id < ?", before_id)
        )
        rows = await self._fetch(
            f"SELECT {_LISTED} FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id"
            " JOIN tasks k ON k.task_id = t.task_id"
            f" WHERE {where} ORDER BY d.id DESC LIMIT ?",
            [*args, limit + 1],
        )
        page, cursor = _paged(rows, limit)
        return [ListedDelivery.model_validate(dict(r)) for r in page], cursor

    async def backlog(self) -> list[Backlog]:
        """Each plugin's deliveries not yet over and dead ones, for ``GET /metrics``.

        Returns:
            One :class:`Backlog` per plugin that has such deliveries, by plugin name (plugins
            whose deliveries are all done are left out). Done rows are not read: the query
            goes through the ``(state, id)`` index.
        """
        states = [*_UNFINISHED, DeliveryState.DEAD]
        rows = await self._fetch(
            "SELECT plugin, state, COUNT(*), MIN(created_at) FROM deliveries"
            f" WHERE state IN ({', '.join('?' * len(states))})"
            " GROUP BY plugin, state ORDER BY plugin",
            states,
        )
        found: dict[str, Backlog] = {}
        for plugin, state, count, oldest_at in rows:
            was = found.get(plugin, Backlog(plugin))
            if state == DeliveryState.DEAD:
                found[plugin] = replace(was, dead=count)
            else:
                oldest = min(oldest_at, was.oldest_pending_at or oldest_at)
                found[plugin] = replace(was, pending=was.pending + count, oldest_pending_at=oldest)
        return list(found.values())

    async def prunable(self, cutoff_ms: int) -> retention.Prunable:
        """What ``prune`` would remove before ``cutoff_ms`` (Unix ms), counted, and the old
        deliveries it keeps (:func:`receiver.store.retention.prunable`)."""
        return await self._guarded(retention.prunable(self._conn, cutoff_ms))

    async def space(self) -> retention.Space:
        """The file's size, its free bytes and its ``auto_vacuum`` mode, as committed."""
        return await self._guarded(retention.space(self._conn))

    async def _guarded(self, query: Awaitable[T]) -> T:
        try:
            return await query
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[aiosqlite.Row]:
        """All rows of one query; raises :class:`StoreUnavailable` when it fails."""
        try:
            async with self._conn.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc


def _filters(*clauses: tuple[str, object]) -> tuple[str, list[object]]:
    """``WHERE`` text and arguments of the clauses whose value is not None."""
    given = [(c, v) for c, v in clauses if v is not None]
    return " AND ".join(["1 = 1", *(c for c, _ in given)]), [v for _, v in given]


def _paged(rows: list[aiosqlite.Row], limit: int) -> tuple[list[aiosqlite.Row], int | None]:
    """The first ``limit`` rows, and the cursor of the next page (the last row's ``id``)."""
    page = rows[:limit]
    return page, (int(page[-1]["id"]) if len(rows) > limit else None)


def _without_id(row: aiosqlite.Row) -> dict[str, object]:
    values = decode(row)
    del values["id"]
    return values
