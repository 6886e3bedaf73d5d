"""The status API's reads on Postgres (:class:`PgReader`): the methods and answers of the
SQLite :class:`~receiver.store.reads.Reader`, for the same rows the same JSON text, on the
read connections of :class:`~receiver.store.postgres.pool.PgReadPool`.

SQLite renders ``GET /tasks/{id}`` and ``GET /tasks`` as JSON inside the query; here the rows
are fetched with the SELECT lists of the one row mapping (``receiver.store.rows``:
:func:`select_list` of the models' fields) and rendered in Python by its twin of SQLite's
``json_object`` (:func:`json_text`), field by field in the models' order: the same text, byte
for byte (``tests/test_pg_reads.py``). (A model's ``model_dump_json`` would say the same JSON
value in another text: SQLite keeps a stored JSON column's ``\\u00e9`` escapes.) The other
reads build their models from the rows, as SQLite's reader does.

Text sorts as SQLite's does (byte order, ``COLLATE "C"``), whatever the database's collation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg.rows import dict_row

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
from receiver.store.postgres import retention as pg_retention
from receiver.store.postgres.pool import PgAsyncConnection, PgReadPool
from receiver.store.reads import (
    DELIVERY_SELECT,
    LISTED_SELECT,
    UNFINISHED,
    backlog_of,
    filters,
    paged,
)
from receiver.store.rows import json_scalar, json_text, select_list
from submitter.protocol import Route, TaskStatus

#: The task of ``GET /tasks/{id}``: the row whose task_id (preferred) or external_task_id is
#: ``%(id)s``; the task_id of that row, for the other tables.
_TASK_ROW = (
    "id = COALESCE((SELECT id FROM tasks WHERE task_id = %(id)s),"
    " (SELECT id FROM tasks WHERE external_task_id = %(id)s))"
)
_TASK_ID = f"(SELECT task_id FROM tasks WHERE {_TASK_ROW})"
#: The fields of :class:`Task` read from other tables than ``tasks``.
_NESTED = ("transitions", "callbacks", "deliveries", "files")
_TASK = select_list([n for n in Task.model_fields if n not in _NESTED])
_FILE_FIELDS = select_list(SavedFile.__dataclass_fields__)

#: ``GET /tasks/{id}``'s statements, each of one argument ``id``, run in one snapshot.
_TASK_READS = {
    "task": f"SELECT {_TASK} FROM tasks WHERE {_TASK_ROW}",
    "transitions": f"SELECT {select_list(Transition.model_fields)} FROM transitions"
    f" WHERE task_id = {_TASK_ID} ORDER BY id",
    "callbacks": f"SELECT verdict, COUNT(*) AS n FROM callbacks WHERE task_id = {_TASK_ID}"
    ' GROUP BY verdict ORDER BY verdict COLLATE "C"',
    "deliveries": f"SELECT {DELIVERY_SELECT} FROM deliveries d"
    f" JOIN transitions t ON t.id = d.transition_id WHERE t.task_id = {_TASK_ID}"
    " ORDER BY d.id",
    "files": f"SELECT {_FILE_FIELDS} FROM files WHERE task_id = {_TASK_ID} ORDER BY id",
}

_LATEST_TRANSITION_BEFORE = (
    "(SELECT MAX(received_at) FROM transitions t WHERE t.task_id = tasks.task_id) < %s"
)
_SUMMARY = select_list(TaskSummary.model_fields)


class PgReader:
    """Read-only queries for the status API, on Postgres: the methods of
    :class:`receiver.store.reads.Reader` (its documentation holds for each), with the same
    results for the same rows.

    Args:
        pool: The read connections (:class:`~receiver.store.postgres.pool.PgReadPool`).

    Every method raises :class:`~receiver.errors.StoreUnavailable` when the database does
    not answer within the pool's timeout, never a psycopg error.
    """

    def __init__(self, pool: PgReadPool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless ``SELECT 1`` succeeds."""
        await self._fetch("SELECT 1", [])

    async def task_answer(self, id_: str) -> str | None:
        """``GET /tasks/{id}``'s answer, :class:`Task` JSON text, or None; read from one
        snapshot (``REPEATABLE READ``), its statements sent in one round trip."""
        args = {"id": id_}
        found = await self._pool.snapshot({n: (sql, args) for n, sql in _TASK_READS.items()})
        return _task_answer(found)

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
        """``GET /tasks``' answer, :class:`TaskPage` JSON text (``Reader.task_page``)."""
        where, args = filters(
            ("task_status = %s", task_status),
            ("route = %s", route),
            ("id < %s", before_id),
            (_LATEST_TRANSITION_BEFORE, transition_before),
        )
        rows = await self._fetch(
            f"SELECT id, {_SUMMARY} FROM tasks WHERE {where} ORDER BY id DESC LIMIT %s",
            [*args, limit + 1],
        )
        page, cursor = paged(rows, limit)
        values = {
            "tasks": _list(TaskSummary.model_fields, page),
            "next_cursor": json_scalar(None if cursor is None else str(cursor)),
        }
        return json_text(TaskPage.model_fields, {}, values=values)

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None,
        plugin: str | None,
        limit: int,
        before_id: int | None,
        other_than: DeliveryState | None = None,
    ) -> tuple[list[ListedDelivery], int | None]:
        """Deliveries newest first, filtered, at most ``limit``, and the next page's cursor
        (``Reader.list_deliveries``)."""
        where, args = filters(
            ("d.state = %s", state),
            ("d.state != %s", other_than),
            ("d.plugin = %s", plugin),
            ("d.id < %s", before_id),
        )
        rows = await self._fetch(
            f"SELECT {LISTED_SELECT} FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id"
            " JOIN tasks k ON k.task_id = t.task_id"
            f" WHERE {where} ORDER BY d.id DESC LIMIT %s",
            [*args, limit + 1],
        )
        page, cursor = paged(rows, limit)
        return [ListedDelivery.model_validate(r) for r in page], cursor

    async def backlog(self) -> list[Backlog]:
        """Each plugin's deliveries not yet over and dead ones (``Reader.backlog``)."""
        rows = await self._fetch(
            "SELECT plugin, state, COUNT(*), MIN(created_at) FROM deliveries"
            ' WHERE state = ANY(%s) GROUP BY plugin, state ORDER BY plugin COLLATE "C"',
            [[str(s) for s in (*UNFINISHED, DeliveryState.DEAD)]],
        )
        return backlog_of([tuple(r.values()) for r in rows])

    async def prunable(self, cutoff_ms: int) -> retention.Prunable:
        """What ``prune`` would remove before ``cutoff_ms`` (Unix ms), counted, and the old
        deliveries it keeps (``Reader.prunable``)."""
        found = await self._pool.snapshot(pg_retention.prunable_queries(cutoff_ms))
        return retention.Prunable(**{n: int(rows[0]["count"]) for n, rows in found.items()})

    async def space(self) -> retention.Space:
        """The database's size (``pg_database_size``, bytes), no free-byte count (0), and
        ``reclaims_itself``: autovacuum gives space back, ``prune`` runs no vacuum step
        (:class:`~receiver.store.retention.Space`)."""
        rows = await self._fetch("SELECT pg_database_size(current_database()) AS n", [])
        return retention.Space(
            size_bytes=int(rows[0]["n"]), free_bytes=0, auto_vacuum=0, reclaims_itself=True
        )

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[dict[str, Any]]:
        """All rows of one query as ``{column: value}``; raises :class:`StoreUnavailable`."""

        async def read(conn: PgAsyncConnection) -> list[dict[str, Any]]:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, args)
            return await cur.fetchall()

        return await self._pool.run(read)


def _task_answer(found: dict[str, list[dict[str, Any]]]) -> str | None:
    """:meth:`PgReader.task_answer`'s text from the rows of :data:`_TASK_READS`."""
    if not found["task"]:
        return None
    callbacks = {r["verdict"]: r["n"] for r in found["callbacks"]}
    nested = {
        "transitions": _list(Transition.model_fields, found["transitions"]),
        "callbacks": json_scalar(callbacks),
        "deliveries": _list(Delivery.model_fields, found["deliveries"]),
        "files": _list(SavedFile.__dataclass_fields__, found["files"]),
    }
    return json_text(Task.model_fields, found["task"][0], values=nested)


def _list(names: Iterable[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """The JSON array of one object of ``names`` per row (:func:`json_text`), in order."""
    fields = list(names)
    return "[" + ",".join(json_text(fields, r) for r in rows) + "]"
