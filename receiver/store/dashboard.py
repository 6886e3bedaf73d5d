"""The dashboard's own reads (``receiver.ui``), beside the status API's (``reads``), on the same
read connections: saved files by id, what a task list row shows beyond a
:class:`~receiver.models.TaskSummary`, and the overview's counts.

Every time is Unix epoch milliseconds; every method raises
:class:`~receiver.errors.StoreUnavailable` when the database does not answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from receiver.store.pool import ReadPool
from receiver.store.rows import marks

MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class StoredFile:
    """A row of ``files``: what the dashboard needs to serve it (``GET /ui/files/{id}``).

    Attributes:
        id: ``files.id``, the only way a request names a file.
        path: Where it is on this machine (from the record, never from a request).
        content_type: The recorded media type, or None (served as octet-stream).
    """

    id: int
    task_id: str
    url: str
    path: str
    bytes: int
    content_type: str | None


@dataclass(frozen=True)
class RowExtras:
    """What a task list row shows beside the task's summary.

    Attributes:
        prompt: The registered request's ``prompt``, or None.
        preview: The first saved image, else the first saved video, or None.
    """

    prompt: str | None
    preview: StoredFile | None


@dataclass(frozen=True)
class Overview:
    """The overview's numbers.

    Attributes:
        tasks_by_status: ``{task_status: count}`` over every task.
        callbacks: ``(minute, verdict, count)`` per minute (Unix ms of its start) since the
            cutoff, by ``received_at``, oldest first.
        spend: ``(day, route, units, tasks)`` per UTC day (Unix ms of its start) and route
            ("" when unknown): the sum of ``final_unit_deduction`` (Kling's units) of the
            tasks that ended that day, by Kling's ``updated_at`` (ours when Kling sent none).
    """

    tasks_by_status: dict[str, int]
    callbacks: list[tuple[int, str, int]]
    spend: list[tuple[int, str, float, int]]


#: A :class:`StoredFile`'s columns, in its order (plain SQL, the Postgres reader's too).
FILE_SELECT = "SELECT id, task_id, url, path, bytes, content_type FROM files"

#: The id after which every row of ``{table}`` is at least as new as the cutoff by
#: ``{column}``: ids grow with time, so scanning back from the newest row stops at the first
#: older one; the query then reads an id range, not the table.
_SINCE = "id > COALESCE((SELECT id FROM {table} WHERE {column} < ?1 ORDER BY id DESC LIMIT 1), 0)"

_CALLBACKS = (
    f"SELECT received_at / {MINUTE_MS} * {MINUTE_MS} AS minute, verdict, COUNT(*) FROM callbacks"
    f" WHERE {_SINCE.format(table='callbacks', column='received_at')} AND received_at >= ?1"
    " GROUP BY minute, verdict ORDER BY minute, verdict"
)
_ENDED_AT = "COALESCE(updated_at, last_received_at)"
_SPEND = (
    f"SELECT {_ENDED_AT} / {DAY_MS} * {DAY_MS} AS day, COALESCE(route, ''),"
    " SUM(CAST(final_unit_deduction AS REAL)), COUNT(*) FROM tasks"
    f" WHERE {_SINCE.format(table='tasks', column='first_seen_at')}"
    f" AND final_unit_deduction IS NOT NULL AND {_ENDED_AT} >= ?1"
    " GROUP BY day, route ORDER BY day, route"
)


class DashboardReads(Protocol):
    """The dashboard's reads, whichever backend holds the data: :class:`DashboardReader`
    (SQLite) and ``receiver.store.postgres.PgDashboardReader`` give the same results for the
    same rows (the methods' documentation is :class:`DashboardReader`'s)."""

    async def file(self, file_id: int) -> StoredFile | None: ...

    async def task_files(self, task_id: str) -> list[StoredFile]: ...

    async def row_extras(self, task_ids: Sequence[str]) -> dict[str, RowExtras]: ...

    async def overview(self, *, callbacks_since_ms: int, spend_since_ms: int) -> Overview: ...


class DashboardReader:
    """Read-only queries of the dashboard.

    Args:
        pool: The read connections (:class:`receiver.store.pool.ReadPool`), shared with the
            status API's :class:`~receiver.store.reads.Reader`.
    """

    def __init__(self, pool: ReadPool) -> None:
        self._pool = pool

    async def file(self, file_id: int) -> StoredFile | None:
        """The saved file whose ``files.id`` is ``file_id``, or None."""
        rows = await self._rows(f"{FILE_SELECT} WHERE id = ?", [file_id])
        return StoredFile(*rows[0]) if rows else None

    async def task_files(self, task_id: str) -> list[StoredFile]:
        """The files saved for one task, by id (the order of ``Task.files``)."""
        rows = await self._rows(f"{FILE_SELECT} WHERE task_id = ? ORDER BY id", [task_id])
        return [StoredFile(*r) for r in rows]

    async def row_extras(self, task_ids: Sequence[str]) -> dict[str, RowExtras]:
        """:class:`RowExtras` of each of ``task_ids`` (one query for a page of tasks)."""
        if not task_ids:
            return {}
        ids = list(task_ids)

        def read(conn: sqlite3.Connection) -> dict[str, RowExtras]:
            prompts = dict(
                conn.execute(
                    "SELECT task_id, json_extract(request_json, '$.prompt') FROM tasks"
                    f" WHERE task_id IN ({marks(len(ids))})",
                    ids,
                ).fetchall()
            )
            files: dict[str, list[StoredFile]] = {}
            for row in conn.execute(
                f"{FILE_SELECT} WHERE task_id IN ({marks(len(ids))}) ORDER BY id", ids
            ).fetchall():
                files.setdefault(row[1], []).append(StoredFile(*row))
            return {
                i: RowExtras(text_or_none(prompts.get(i)), preview(files.get(i, []))) for i in ids
            }

        return await self._pool.run(read)

    async def overview(self, *, callbacks_since_ms: int, spend_since_ms: int) -> Overview:
        """Tasks by status, callbacks per minute since ``callbacks_since_ms`` and spend per
        day and route since ``spend_since_ms`` (one read, one snapshot per statement)."""

        def read(conn: sqlite3.Connection) -> Overview:
            statuses = conn.execute(
                "SELECT task_status, COUNT(*) FROM tasks GROUP BY task_status"
            ).fetchall()
            callbacks = conn.execute(_CALLBACKS, [callbacks_since_ms]).fetchall()
            spend = conn.execute(_SPEND, [spend_since_ms]).fetchall()
            return Overview(
                {str(s): int(n) for s, n in statuses},
                [(int(m), str(v), int(n)) for m, v, n in callbacks],
                [(int(d), str(r), float(u or 0), int(n)) for d, r, u, n in spend],
            )

        return await self._pool.run(read)

    async def _rows(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]

        return await self._pool.run(read)


def text_or_none(value: object) -> str | None:
    """``value`` when it is a string, else None (a ``prompt`` that is not text)."""
    return value if isinstance(value, str) else None


def preview(files: list[StoredFile]) -> StoredFile | None:
    """The first image, else the first video (a browser shows its first frame)."""
    for media in ("image/", "video/"):
        for f in files:
            if (f.content_type or "").startswith(media):
                return f
    return None
