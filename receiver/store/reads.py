"""Read-only queries of the status API, on the read connections of
:class:`receiver.store.pool.ReadPool`: one pool hop per answer, all of its statements inside.

The two reads the status API serves most, ``GET /tasks/{id}`` and ``GET /tasks``, are
rendered as JSON by SQLite itself (:func:`receiver.store.rows.json_object`), field by field
in the order of the models of ``receiver.models`` (:class:`Task`, :class:`TaskSummary`,
:class:`TaskPage`), so that no row becomes a Python object on the way: the text is what
``model_dump_json`` of the validated model would say (``tests/test_reads.py`` checks that
against the models). The other reads build their models through the one row mapping of
``receiver.store.rows``; the SELECT lists come from the models' fields.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from receiver.models import (
    Backlog,
    Delivery,
    DeliveryState,
    ListedDelivery,
    SavedFile,
    Task,
    TaskPage,
    TaskSummary,
    Transition,
)
from receiver.store import retention
from receiver.store.pool import ReadPool
from receiver.store.rows import json_object, select_list
from submitter.protocol import Route, TaskStatus

#: A row that has an ``id`` (sqlite3's, or psycopg's ``dict_row``).
R = TypeVar("R", sqlite3.Row, dict[str, Any])

#: Task fields read from other tables, each a JSON value made by a subquery. An aggregate
#: takes its rows in the order of the subquery it reads (SQLite never flattens an ordered
#: subquery into an aggregate), hence the nested SELECT ... ORDER BY.
#: A delivery's fields come from ``d`` (deliveries) but for these (``t``: transitions, ``k``:
#: tasks); the SELECT lists of :class:`Delivery` and :class:`ListedDelivery` (plain SQL, the
#: Postgres reader's too).
DELIVERY_SOURCES = {"task_status": "t", "task_id": "t", "external_task_id": "k"}
DELIVERY_SELECT = select_list(Delivery.model_fields, tables=DELIVERY_SOURCES, default="d")
LISTED_SELECT = select_list(ListedDelivery.model_fields, tables=DELIVERY_SOURCES, default="d")


def _json_list(fields: Iterable[str], select: str, rest: str) -> str:
    """SQL: the JSON array of one object of ``fields`` per row of ``SELECT {select} {rest}``,
    in its order."""
    return f"SELECT json_group_array({json_object(fields)}) FROM (SELECT {select} {rest})"


_NESTED = {
    "transitions": _json_list(
        Transition.model_fields,
        select_list(Transition.model_fields),
        "FROM transitions WHERE task_id = tasks.task_id ORDER BY id",
    ),
    "callbacks": "SELECT json_group_object(verdict, n) FROM (SELECT verdict, COUNT(*) AS n"
    " FROM callbacks WHERE task_id = tasks.task_id GROUP BY verdict ORDER BY verdict)",
    "deliveries": _json_list(
        Delivery.model_fields,
        DELIVERY_SELECT,
        "FROM deliveries d JOIN transitions t ON t.id = d.transition_id"
        " WHERE t.task_id = tasks.task_id ORDER BY d.id",
    ),
    "files": _json_list(
        SavedFile.__dataclass_fields__,
        select_list(SavedFile.__dataclass_fields__),
        "FROM files WHERE task_id = tasks.task_id ORDER BY id",
    ),
}
#: The states of a delivery that is not over yet (``Backlog.pending``).
UNFINISHED = (DeliveryState.PENDING, DeliveryState.RUNNING, DeliveryState.FAILED)

_LATEST_TRANSITION_BEFORE = (
    "(SELECT MAX(received_at) FROM transitions t WHERE t.task_id = tasks.task_id) < ?"
)

#: ``GET /tasks/{id}`` in one statement (one snapshot) and one row: the :class:`Task`
#: whose task_id (preferred) or external_task_id is the argument, as its JSON; no row when
#: there is none. The row id comes from a UNIQUE index alone, then the row by its id.
_TASK_ANSWER = f"""
SELECT {json_object(Task.model_fields, values={n: f"json(({q}))" for n, q in _NESTED.items()})}
FROM tasks WHERE id = COALESCE(
    (SELECT id FROM tasks WHERE task_id = ?1),
    (SELECT id FROM tasks WHERE external_task_id = ?1)
)
"""


#: ``GET /tasks`` in one statement and one row, the :class:`TaskPage`'s JSON; ``{where}``
#: is filled in, and its arguments are followed by ``limit + 1, limit, limit``. The page's
#: ids come from an index alone (``limit + 1`` of them: one more tells that a next page
#: exists); only the ``limit`` shown are read from the table, and aggregated in their order
#: (as for :data:`_NESTED`). ``next_cursor`` is the last shown id, as a string, when there
#: is more.
_TASK_PAGE = """
WITH page (id) AS (SELECT id FROM tasks WHERE {{where}} ORDER BY id DESC LIMIT ?)
SELECT {}
FROM (SELECT s.id, {} FROM (SELECT id FROM page ORDER BY id DESC LIMIT ?) s
      JOIN tasks t ON t.id = s.id ORDER BY s.id DESC)
""".format(
    json_object(
        TaskPage.model_fields,
        values={
            "tasks": f"json_group_array({json_object(TaskSummary.model_fields)})",
            "next_cursor": "CASE WHEN (SELECT COUNT(*) FROM page) > ? THEN CAST(MIN(id) AS TEXT)"
            " END",
        },
    ),
    select_list(TaskSummary.model_fields, default="t"),
)


class StatusReads(Protocol):
    """The status API's reads, whichever backend holds the data: :class:`Reader` (SQLite)
    and ``receiver.store.postgres.PgReader`` give the same answers for the same rows (the
    methods' documentation is :class:`Reader`'s). Every method raises
    :class:`StoreUnavailable` when the database does not answer."""

    async def ping(self) -> None: ...

    async def task_answer(self, id_: str) -> str | None: ...

    async def get_task(self, id_: str) -> Task | None: ...

    async def task_page(
        self,
        *,
        task_status: TaskStatus | None,
        route: Route | None,
        limit: int,
        before_id: int | None,
        transition_before: int | None = None,
    ) -> str: ...

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None,
        plugin: str | None,
        limit: int,
        before_id: int | None,
        other_than: DeliveryState | None = None,
    ) -> tuple[list[ListedDelivery], int | None]: ...

    async def backlog(self) -> list[Backlog]: ...

    async def prunable(self, cutoff_ms: int) -> retention.Prunable: ...

    async def space(self) -> retention.Space: ...


class Reader:
    """Read-only queries for the status API.

    Args:
        pool: The read connections (:class:`receiver.store.pool.ReadPool`).

    Every method raises :class:`StoreUnavailable` when the database does not answer.
    """

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless ``SELECT 1`` succeeds."""
        await self._pool.run(lambda conn: conn.execute("SELECT 1").fetchall())

    async def task_answer(self, id_: str) -> str | None:
        """``GET /tasks/{id}``'s answer: the :class:`Task` whose task_id (preferred) or
        external_task_id is ``id_``, as JSON text, or None when there is none.

        Transitions come oldest first; deliveries (those of every transition) and files by
        id. The whole answer is read from one committed snapshot.
        """
        return await self._pool.run(lambda conn: _task_answer(conn, id_))

    async def get_task(self, id_: str) -> Task | None:
        """:meth:`task_answer` as a validated :class:`Task`, or None."""
        answer = await self.task_answer(id_)
        return None if answer is None else Task.model_validate_json(answer)

    async def task_page(
        self,
        *,
        task_status: TaskStatus | None,
        route: Route | None,
        limit: int,
        before_id: int | None,
        transition_before: int | None = None,
    ) -> str:
        """``GET /tasks``' answer, a :class:`TaskPage` as JSON text: tasks newest first (by
        first-seen order), filtered, at most ``limit``; ``next_cursor`` is null on the last
        page.

        Args:
            before_id: The cursor: only tasks with a smaller row id.
            transition_before: Only tasks whose latest transition was received before this
                time, Unix ms (``kling-hooks reconcile`` looks for overdue tasks so).
        """
        where, args = filters(
            ("task_status = ?", task_status),
            ("route = ?", route),
            ("id < ?", before_id),
            (_LATEST_TRANSITION_BEFORE, transition_before),
        )
        sql = _TASK_PAGE.format(where=where)
        args = [*args, limit + 1, limit, limit]
        return await self._pool.run(lambda conn: str(conn.execute(sql, args).fetchone()[0]))

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None,
        plugin: str | None,
        limit: int,
        before_id: int | None,
        other_than: DeliveryState | None = None,
    ) -> tuple[list[ListedDelivery], int | None]:
        """Deliveries newest first (by id), filtered, at most ``limit``.

        Args:
            state: Only deliveries in this state.
            other_than: Only deliveries in another state (the dashboard lists the dead
                letters first, then the others).
            plugin: Only deliveries to the plugin of this name.
            before_id: The cursor: only deliveries with a smaller id.

        Returns:
            ``(deliveries, next_cursor)``; ``next_cursor`` is None on the last page.
        """
        where, args = filters(
            ("d.state = ?", state),
            ("d.state != ?", other_than),
            ("d.plugin = ?", plugin),
            ("d.id < ?", before_id),
        )
        rows = await self._fetch(
            f"SELECT {LISTED_SELECT} FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id"
            " JOIN tasks k ON k.task_id = t.task_id"
            f" WHERE {where} ORDER BY d.id DESC LIMIT ?",
            [*args, limit + 1],
        )
        page, cursor = paged(rows, limit)
        return [ListedDelivery.model_validate(dict(r)) for r in page], cursor

    async def backlog(self) -> list[Backlog]:
        """Each plugin's deliveries not yet over and dead ones, for ``GET /metrics``.

        Returns:
            One :class:`Backlog` per plugin that has such deliveries, by plugin name (plugins
            whose deliveries are all done are left out). Done rows are not read: the query
            goes through the ``(state, id)`` index.
        """
        states = [*UNFINISHED, DeliveryState.DEAD]
        rows = await self._fetch(
            "SELECT plugin, state, COUNT(*), MIN(created_at) FROM deliveries"
            f" WHERE state IN ({', '.join('?' * len(states))})"
            " GROUP BY plugin, state ORDER BY plugin",
            states,
        )
        return backlog_of(rows)

    async def prunable(self, cutoff_ms: int) -> retention.Prunable:
        """What ``prune`` would remove before ``cutoff_ms`` (Unix ms), counted, and the old
        deliveries it keeps (:func:`receiver.store.retention.prunable`)."""
        return await self._pool.run(lambda conn: retention.prunable(conn, cutoff_ms))

    async def space(self) -> retention.Space:
        """The file's size, its free bytes and its ``auto_vacuum`` mode, as committed."""
        return await self._pool.run(retention.space)

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[sqlite3.Row]:
        """All rows of one query; raises :class:`StoreUnavailable` when it fails."""
        return await self._pool.run(lambda conn: conn.execute(sql, args).fetchall())


def _tuples(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
    """All rows of one query as plain tuples (no ``sqlite3.Row``)."""
    cur = conn.cursor()
    cur.row_factory = None
    return cur.execute(sql, args).fetchall()


def _task_answer(conn: sqlite3.Connection, id_: str) -> str | None:
    row = conn.execute(_TASK_ANSWER, (id_,)).fetchone()
    return None if row is None else str(row[0])


def backlog_of(rows: Iterable[Sequence[Any]]) -> list[Backlog]:
    """The :class:`Backlog` list of :meth:`Reader.backlog` from its rows ``(plugin, state,
    count, oldest created_at)``, grouped by plugin and state, in plugin order."""
    found: dict[str, Backlog] = {}
    for plugin, state, count, oldest_at in rows:
        was = found.get(plugin, Backlog(plugin))
        if state == DeliveryState.DEAD:
            found[plugin] = replace(was, dead=count)
        else:
            oldest = min(oldest_at, was.oldest_pending_at or oldest_at)
            found[plugin] = replace(was, pending=was.pending + count, oldest_pending_at=oldest)
    return list(found.values())


def filters(*clauses: tuple[str, object]) -> tuple[str, list[object]]:
    """``WHERE`` text and arguments of the ``(clause, value)`` pairs whose value is not None
    (``"1 = 1"`` when none is)."""
    given = [(c, v) for c, v in clauses if v is not None]
    return " AND ".join(["1 = 1", *(c for c, _ in given)]), [v for _, v in given]


def paged(rows: Sequence[R], limit: int) -> tuple[Sequence[R], int | None]:
    """The first ``limit`` of the ``limit + 1`` rows read, and the cursor of the next page
    (the last shown row's ``id``), None when there is no more."""
    page = rows[:limit]
    return page, (int(page[-1]["id"]) if len(rows) > limit else None)
