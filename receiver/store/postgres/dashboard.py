"""The dashboard's reads on Postgres (:class:`PgDashboardReader`): the methods and results of
the SQLite :class:`~receiver.store.dashboard.DashboardReader`, on the status API's Postgres
read connections (:class:`~receiver.store.postgres.pool.PgReadPool`).

The statements are SQLite's, translated: time buckets are the same integer arithmetic on Unix
ms; a NULL route sorts first and text sorts by bytes (``COLLATE "C"``), as in SQLite; Kling's
``final_unit_deduction`` string is read as a number by its numeric prefix, 0 when it has none
(SQLite's ``CAST(... AS REAL)``); a ``prompt`` is taken from the stored request in Python, a
string or nothing (SQLite's ``json_extract`` then the string check).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from receiver.store.dashboard import (
    DAY_MS,
    FILE_SELECT,
    MINUTE_MS,
    Overview,
    RowExtras,
    StoredFile,
    preview,
    text_or_none,
)
from receiver.store.postgres.pool import PgAsyncConnection, PgReadPool

#: As SQLite's ``_SINCE``: the id after which every row is at least as new as the cutoff.
_SINCE = (
    "id > COALESCE((SELECT id FROM {table} WHERE {column} < %(cutoff)s"
    " ORDER BY id DESC LIMIT 1), 0)"
)
_CALLBACKS = (
    f"SELECT received_at / {MINUTE_MS} * {MINUTE_MS} AS minute, verdict, COUNT(*) FROM callbacks"
    f" WHERE {_SINCE.format(table='callbacks', column='received_at')}"
    " AND received_at >= %(cutoff)s"
    ' GROUP BY minute, verdict ORDER BY minute, verdict COLLATE "C"'
)
_ENDED_AT = "COALESCE(updated_at, last_received_at)"
#: ``final_unit_deduction`` as a number: its numeric prefix (``CAST(x AS REAL)`` in SQLite).
_UNITS = (
    "COALESCE(substring(final_unit_deduction FROM"
    " '^\\s*([-+]?(?:[0-9]+\\.?[0-9]*|\\.[0-9]+)(?:[eE][-+]?[0-9]+)?)')::float8, 0)"
)
_SPEND = (
    f"SELECT {_ENDED_AT} / {DAY_MS} * {DAY_MS} AS day, COALESCE(route, ''),"
    f" SUM({_UNITS}), COUNT(*) FROM tasks"
    f" WHERE {_SINCE.format(table='tasks', column='first_seen_at')}"
    f" AND final_unit_deduction IS NOT NULL AND {_ENDED_AT} >= %(cutoff)s"
    ' GROUP BY day, route ORDER BY day, route COLLATE "C" NULLS FIRST'
)


class PgDashboardReader:
    """Read-only queries of the dashboard on Postgres: the methods of
    :class:`receiver.store.dashboard.DashboardReader` (its documentation holds for each).

    Args:
        pool: The read connections, shared with the status API's
            :class:`~receiver.store.postgres.reads.PgReader`.

    Every method raises :class:`~receiver.errors.StoreUnavailable` when the database does
    not answer.
    """

    def __init__(self, pool: PgReadPool) -> None:
        self._pool = pool

    async def file(self, file_id: int) -> StoredFile | None:
        """The saved file whose ``files.id`` is ``file_id``, or None."""
        rows = await self._rows(f"{FILE_SELECT} WHERE id = %s", [file_id])
        return StoredFile(*rows[0]) if rows else None

    async def task_files(self, task_id: str) -> list[StoredFile]:
        """The files saved for one task, by id (the order of ``Task.files``)."""
        rows = await self._rows(f"{FILE_SELECT} WHERE task_id = %s ORDER BY id", [task_id])
        return [StoredFile(*r) for r in rows]

    async def row_extras(self, task_ids: Sequence[str]) -> dict[str, RowExtras]:
        """:class:`RowExtras` of each of ``task_ids`` (one read for a page of tasks)."""
        if not task_ids:
            return {}
        ids = list(task_ids)

        async def read(conn: PgAsyncConnection) -> dict[str, RowExtras]:
            cur = await conn.execute(
                "SELECT task_id, request_json FROM tasks WHERE task_id = ANY(%s)", [ids]
            )
            prompts = {task_id: _prompt(request) for task_id, request in await cur.fetchall()}
            files: dict[str, list[StoredFile]] = {}
            cur = await conn.execute(f"{FILE_SELECT} WHERE task_id = ANY(%s) ORDER BY id", [ids])
            for row in await cur.fetchall():
                files.setdefault(row[1], []).append(StoredFile(*row))
            return {i: RowExtras(prompts.get(i), preview(files.get(i, []))) for i in ids}

        return await self._pool.run(read)

    async def overview(self, *, callbacks_since_ms: int, spend_since_ms: int) -> Overview:
        """Tasks by status, callbacks per minute since ``callbacks_since_ms`` and spend per
        day and route since ``spend_since_ms`` (Unix ms; one snapshot per statement)."""

        async def read(conn: PgAsyncConnection) -> Overview:
            cur = await conn.execute("SELECT task_status, COUNT(*) FROM tasks GROUP BY task_status")
            statuses = await cur.fetchall()
            cur = await conn.execute(_CALLBACKS, {"cutoff": callbacks_since_ms})
            callbacks = await cur.fetchall()
            cur = await conn.execute(_SPEND, {"cutoff": spend_since_ms})
            spend = await cur.fetchall()
            return Overview(
                {str(s): int(n) for s, n in statuses},
                [(int(m), str(v), int(n)) for m, v, n in callbacks],
                [(int(d), str(r), float(u or 0), int(n)) for d, r, u, n in spend],
            )

        return await self._pool.run(read)

    async def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        async def read(conn: PgAsyncConnection) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, args)).fetchall()

        return await self._pool.run(read)


def _prompt(request_json: str | None) -> str | None:
    """The stored request's ``prompt`` when it is a string, else None."""
    if request_json is None:
        return None
    request = json.loads(request_json)
    return text_or_none(request.get("prompt")) if isinstance(request, dict) else None
