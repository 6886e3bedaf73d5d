"""The SQLite store: schema migrations, the batch I/O the writer uses, and read queries.

One process owns the database. Writes go through :class:`receiver.writer.Writer` on its own
connection; the status API reads on a second, read-only connection, which WAL lets run beside
the writer. ``synchronous=FULL``: a transition acknowledged with 200 survives a power cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any

import aiosqlite

from receiver.transitions import Batch, CallbackRow, TaskRow, TransitionRow

SCHEMA_VERSION = 2
_TASK_COLUMNS = [f.name for f in fields(TaskRow)]
# Row -> tuple in column order (attrgetter: no deep copy, unlike dataclasses.astuple).
_task_values = attrgetter(*_TASK_COLUMNS)
_transition_values = attrgetter(*[f.name for f in fields(TransitionRow)])
_callback_values = attrgetter(*[f.name for f in fields(CallbackRow)])


class StoreUnavailable(Exception):
    """The database could not commit or answer; nothing of the operation was recorded."""


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("receiver") / "migrations"
    found = [
        (int(p.name.split("_", 1)[0]), p.read_text())
        for p in folder.iterdir()
        if p.name.endswith(".sql")
    ]
    return sorted(found)


async def connect(
    path: Path, *, busy_timeout_ms: int = 5000, read_only: bool = False
) -> aiosqlite.Connection:
    """Open a connection in autocommit mode with WAL and ``synchronous=FULL``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    await conn.execute("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = FULL")
    if read_only:
        await conn.execute("PRAGMA query_only = 1")
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; each step in its own transaction.

    Returns:
        The schema version now in force.

    Raises:
        StoreUnavailable: the database is newer than this program knows.
    """
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(f"database schema {version} is newer than {SCHEMA_VERSION}")
    for number, sql in _migrations():
        if number <= version:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        version = number
    return version


async def get_or_create_meta(
    conn: aiosqlite.Connection, key: str, factory: Callable[[], str]
) -> tuple[str, bool]:
    """Read ``meta[key]``, creating it with ``factory()`` if absent (atomic across processes).

    Returns:
        ``(value, created)``.
    """
    async with conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, factory())
    ) as cur:
        created = cur.rowcount == 1
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    assert row is not None
    return str(row[0]), created


def _marks(n: int) -> str:
    return ",".join("?" * n)


async def load_batch(
    conn: aiosqlite.Connection, task_ids: set[str], external_ids: set[str]
) -> Batch:
    """Load the rows a batch touches (inside the writer's open transaction)."""
    if not task_ids and not external_ids:
        return Batch(tasks={}, seen=set(), next_transition_id=0)  # outbox operations only
    ids, exts = sorted(task_ids), sorted(external_ids)
    sql = (
        f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE task_id IN ({_marks(len(ids))})"
        f" OR external_task_id IN ({_marks(len(exts))})"
    )
    async with conn.execute(sql, [*ids, *exts]) as cur:
        tasks = {r["task_id"]: TaskRow(**dict(r)) for r in await cur.fetchall()}
    seen: set[tuple[str, str]] = set()
    if tasks:
        names = list(tasks)
        sql = (
            f"SELECT task_id, task_status FROM transitions WHERE task_id IN ({_marks(len(names))})"
        )
        async with conn.execute(sql, names) as cur:
            seen = {(r[0], r[1]) for r in await cur.fetchall()}
    async with conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM transitions") as cur:
        row = await cur.fetchone()
    return Batch(tasks=tasks, seen=seen, next_transition_id=int(row[0]) if row else 1)


_UPSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({_marks(len(_TASK_COLUMNS))}) "
    "ON CONFLICT (task_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _TASK_COLUMNS if c != "task_id")
)


async def write_batch(conn: aiosqlite.Connection, batch: Batch) -> None:
    """Write what a batch produced: task rows, new transitions, the raw callbacks."""
    if batch.changed:
        await conn.executemany(_UPSERT_TASK, [_task_values(t) for t in batch.changed.values()])
    if batch.transitions:
        await conn.executemany(
            "INSERT INTO transitions (id, task_id, task_status, updated_at, received_at, source,"
            " task_status_msg, task_result_json, final_unit_deduction)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_transition_values(t) for t in batch.transitions],
        )
    if batch.callbacks:
        await conn.executemany(
            "INSERT INTO callbacks (task_id, task_status, verdict, received_at, body)"
            " VALUES (?, ?, ?, ?, ?)",
            [_callback_values(c) for c in batch.callbacks],
        )


def _task_json(row: aiosqlite.Row, transitions: Iterable[aiosqlite.Row]) -> dict[str, Any]:
    return {
        "task_id": row["task_id"],
        "external_task_id": row["external_task_id"],
        "route": row["route"],
        "task_status": row["task_status"],
        "task_status_msg": row["task_status_msg"],
        "task_result": _load(row["task_result_json"]),
        "task_info": _load(row["task_info_json"]),
        "final_unit_deduction": row["final_unit_deduction"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "first_seen_at": row["first_seen_at"],
        "last_received_at": row["last_received_at"],
        "request": _load(row["request_json"]),
        "transitions": [
            {
                "task_status": t["task_status"],
                "updated_at": t["updated_at"],
                "received_at": t["received_at"],
            }
            for t in transitions
        ],
    }


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


#: A delivery as the status API shows it (``d`` is deliveries, ``t`` its transition).
_DELIVERY_COLUMNS = (
    "d.id, d.plugin, d.state, d.attempts, d.next_attempt_at, d.last_error,"
    " t.task_status, d.created_at, d.updated_at"
)


class Reader:
    """Read-only queries for the status API, on their own connection.

    Every method raises :class:`StoreUnavailable` when the database does not answer.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless ``SELECT 1`` succeeds."""
        try:
            await self._conn.execute("SELECT 1")
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get_task(self, id_: str) -> dict[str, Any] | None:
        """The task whose task_id (preferred) or external_task_id is ``id_``, or None.

        Returns:
            ``{task_id, external_task_id, route, task_status, task_status_msg, task_result,
            task_info, final_unit_deduction, created_at, updated_at, first_seen_at,
            last_received_at, request, transitions: [{task_status, updated_at, received_at}],
            callbacks: {verdict: count}, deliveries: [...], files: [...]}``;
            times in Unix ms, transitions oldest first. ``deliveries`` are the outbox rows of
            every transition, by id (``{id, plugin, state, attempts, next_attempt_at,
            last_error, task_status, created_at, updated_at}``); ``files`` are the files
            plugins saved for the task, by id (``{url, path, bytes, sha256}``).
        """
        rows = await self._fetch(
            "SELECT * FROM tasks WHERE task_id = ? OR external_task_id = ? "
            "ORDER BY task_id = ? DESC LIMIT 1",
            (id_, id_, id_),
        )
        if not rows:
            return None
        row = rows[0]
        task_id = row["task_id"]
        transitions = await self._fetch(
            "SELECT task_status, updated_at, received_at FROM transitions "
            "WHERE task_id = ? ORDER BY id",
            (task_id,),
        )
        callbacks = await self._fetch(
            "SELECT verdict, COUNT(*) FROM callbacks WHERE task_id = ? GROUP BY verdict",
            (task_id,),
        )
        deliveries = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id WHERE t.task_id = ? ORDER BY d.id",
            (task_id,),
        )
        files = await self._fetch(
            "SELECT url, path, bytes, sha256 FROM files WHERE task_id = ? ORDER BY id",
            (task_id,),
        )
        return {
            **_task_json(row, transitions),
            "callbacks": {r[0]: r[1] for r in callbacks},
            "deliveries": [dict(r) for r in deliveries],
            "files": [dict(r) for r in files],
        }

    async def list_tasks(
        self, *, task_status: str | None, route: str | None, limit: int, before_id: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Tasks newest first (by first-seen order), filtered, at most ``limit``.

        Returns:
            ``(tasks, next_cursor)``; ``next_cursor`` is None on the last page. Tasks carry
            no ``transitions``, ``request`` or ``task_info`` (fetch one task for those).
        """
        where: list[str] = ["1 = 1"]
        args: list[str | int] = []
        if task_status:
            where.append("task_status = ?")
            args.append(task_status)
        if route:
            where.append("route = ?")
            args.append(route)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = f"SELECT * FROM tasks WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        rows = await self._fetch(sql, [*args, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for r in rows:
            item = _task_json(r, [])
            for key in ("transitions", "request", "task_info"):
                item.pop(key)
            items.append(item)
        return items, (rows[-1]["id"] if more else None)

    async def list_deliveries(
        self, *, state: str | None, plugin: str | None, limit: int, before_id: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Deliveries newest first (by id), filtered, at most ``limit``.

        Args:
            state: Only deliveries in this state (pending, running, done, failed, dead).
            plugin: Only deliveries to the plugin of this name.
            before_id: The cursor: only deliveries with a smaller id.

        Returns:
            ``(deliveries, next_cursor)``; ``next_cursor`` is None on the last page. Each
            delivery is ``{id, plugin, state, attempts, next_attempt_at, last_error,
            created_at, updated_at, task_id, external_task_id, task_status}``, times in Unix ms.
        """
        where: list[str] = ["1 = 1"]
        args: list[str | int] = []
        for clause, value in (("d.state = ?", state), ("d.plugin = ?", plugin)):
            if value:
                where.append(clause)
                args.append(value)
        if before_id is not None:
            where.append("d.id < ?")
            args.append(before_id)
        rows = await self._fetch(
            f"SELECT {_DELIVERY_COLUMNS}, t.task_id, k.external_task_id FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id"
            " JOIN tasks k ON k.task_id = t.task_id"
            f" WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?",
            [*args, limit + 1],
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [dict(r) for r in rows], (rows[-1]["id"] if more else None)

    async def _fetch(self, sql: str, args: Sequence[object]) -> list[aiosqlite.Row]:
        """All rows of one query; raises :class:`StoreUnavailable` when it fails."""
        try:
            async with self._conn.execute(sql, args) as cur:
                return list(await cur.fetchall())
        except Exception as exc:
            raise StoreUnavailable(str(exc)) from exc
