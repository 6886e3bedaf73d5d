"""One history of real write operations, written to a SQLite file and to a Postgres database
through their writers, and each backend's readers on it (``tests/test_pg_reads.py``,
``tests/test_pg_prune.py``).

Every time is fixed (the operations carry them), so both databases hold the same rows; only
the row ids that Postgres's identity sequences skip (an upsert that finds its row consumes a
value) can differ, and those are the ``tasks`` ids alone: a delivery, a file and a callback
are inserted once each, in the same order, on both.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from receiver.models import DeliveryState, SavedFile
from receiver.store import DashboardReader, DashboardReads, Reader, ReadPool, StatusReads
from receiver.store.deliveries import Claim, Finish, Outcome, Redeliver
from receiver.store.postgres import PgDashboardReader, PgReader, PgReadPool, Replica
from receiver.transitions import IncomingCallback, Registration
from receiver.writer import Writer
from submitter.protocol import TaskStatus
from tests.test_pg_writes import callback
from tests.test_reads import AWKWARD_RESULT

MINUTE_MS = 60_000
DAY_MS = 86_400_000
#: The history's first moment, Unix ms (a UTC midnight, 2026-09-21).
T0 = 1_790_035_200_000
#: Kling's ``updated_at`` of the tasks that ended: two UTC days.
DAY_1, DAY_2 = T0 + 3_600_000, T0 + DAY_MS + 3_600_000
#: Text Postgres can store (no NUL), that JSON and SQL could disagree on.
TEXT = 'quote " backslash \\ tab \t newline \n bell \x07 é ünï 😀 \u2028 end'
#: Two files saved by one delivery, their urls in the opposite order of their ids.
FILES = (
    SavedFile("https://cdn.example/z.mp4", "/srv/dl/z.mp4", 2**40, "cd" * 32, "video/mp4"),
    SavedFile("https://cdn.example/a 😀.png", "/srv/dl/a.png", 3, "ab" * 32, "image/png"),
)


def at(minutes: float) -> int:
    """``T0`` plus ``minutes``, Unix ms."""
    return T0 + int(minutes * MINUTE_MS)


def route_plugins(task_status: str, route: str | None) -> list[str]:
    """The router of the history: the downloader on ended tasks, slack on everything."""
    return ["downloader", "slack"] if task_status in ("succeed", "failed") else ["slack"]


@dataclass
class Backend:
    """A database, its running writer, and its readers."""

    name: str
    writer: Writer
    reader: StatusReads
    dashboard: DashboardReads
    #: ``tasks.id`` of a task_id (the cursor of a page ending at it).
    row_id: Callable[[str], int]
    #: ``SELECT COUNT(*)`` of a table, and all rows of a query (test-side checks).
    count: Callable[[str], int]


@contextlib.asynccontextmanager
async def sqlite_backend(path: Path) -> AsyncIterator[Backend]:
    writer = await Writer.open(path, router=route_plugins)
    writer.start()
    pool = ReadPool(path)
    try:

        def one(sql: str, *args: object) -> int:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                return int(conn.execute(sql, args).fetchone()[0])

        yield Backend(
            "sqlite",
            writer,
            Reader(pool),
            DashboardReader(pool),
            lambda task_id: one("SELECT id FROM tasks WHERE task_id = ?", task_id),
            lambda table: one(f"SELECT COUNT(*) FROM {table}"),
        )
    finally:
        await pool.close()
        await writer.close()


@contextlib.asynccontextmanager
async def pg_backend(url: str) -> AsyncIterator[Backend]:
    writer = await Writer.open_postgres(url, replica=Replica("r0"), router=route_plugins)
    writer.start()
    pool = await PgReadPool.open(url, size=2)
    try:

        def one(sql: str, *args: object) -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute(sql, args).fetchone()
                assert row is not None
                return int(row[0])

        yield Backend(
            "postgres",
            writer,
            PgReader(pool),
            PgDashboardReader(pool),
            lambda task_id: one("SELECT id FROM tasks WHERE task_id = %s", task_id),
            lambda table: one(f"SELECT COUNT(*) FROM {table}"),
        )
    finally:
        await pool.close()
        await writer.close()


#: The task_ids of the history.
TASK_IDS = ["t-1", "t-2", "t-3", "ext-2", *(f"p-{n}" for n in range(6))]


@contextlib.asynccontextmanager
async def both(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Backend, Backend]]:
    """The history (:func:`write_history`) written to a SQLite file in ``tmp_path`` and to the
    Postgres database ``pg_url``: ``(sqlite, postgres)``."""
    async with sqlite_backend(tmp_path / "kling-hooks.db") as lite, pg_backend(pg_url) as pg:
        await write_history(lite.writer)
        await write_history(pg.writer)
        yield lite, pg


def _registration(
    task_id: str, ext: str, route: str, request: object, minute: float
) -> Registration:
    body = None if request is None else json.dumps(request)
    return Registration(task_id, ext, route, body, TaskStatus.SUBMITTED, at(minute) - 5, at(minute))


async def write_history(w: Writer) -> None:
    """The same operations, one at a time (so that ids are given in one order): registrations,
    callbacks with a duplicate, a stale one and a failed task, paged tasks, then deliveries
    claimed and finished (done with files, failed, dead, still running) and a replay."""
    done = {"task_result": AWKWARD_RESULT, "task_status_msg": TEXT}
    ops: list[Registration | IncomingCallback] = [
        _registration("t-1", "ext-1", "images/generations", {"prompt": TEXT, "n": 1}, 0),
        callback("t-1", "processing", "ext-1", at(1)),
        callback(
            "t-1", "succeed", "ext-1", at(2), final_unit_deduction="0.2", updated_at=DAY_1, **done
        ),
        callback(
            "t-1", "succeed", "ext-1", at(2.5), final_unit_deduction="0.2", updated_at=DAY_1, **done
        ),
        callback("t-1", "processing", "ext-1", at(3)),  # a duplicate, late
        _registration("t-2", "ext-2", "videos/text2video", {"prompt": 5}, 4),
        callback("t-2", "failed", "ext-2", at(5), task_status_msg="bad prompt", updated_at=DAY_1),
        callback("t-3", "succeed", "ext-3", at(6), final_unit_deduction="1.5", updated_at=DAY_2),
        callback("t-3", "succeed", "ext-3", at(6.2), final_unit_deduction="1.5", updated_at=DAY_2),
        callback("t-3", "processing", "ext-3", at(6.5)),  # stale: t-3 has ended
        # a task_id that is another task's external_task_id: the task_id wins
        _registration("ext-2", "ext-4", "images/generations", None, 7),
    ]
    for n in range(6):
        route = "videos/text2video" if n % 2 else "images/generations"
        ops.append(_registration(f"p-{n}", f"ext-p{n}", route, {"prompt": f"p {n}"}, 8 + n))
        if n % 3 == 0:
            units = {"final_unit_deduction": "0.25", "updated_at": DAY_2}
            ops.append(callback(f"p-{n}", "succeed", f"ext-p{n}", at(8.5 + n), **units))
    for op in ops:
        await w.submit(op)
    claimed = await w.submit(Claim({"slack": 100, "downloader": 100}, at(30)))
    for job in sorted(claimed.jobs, key=lambda j: j.event.delivery_id):
        e = job.event
        key = (job.plugin, e.task_id, e.task_status)
        if key == ("downloader", "t-1", "succeed"):
            outcome = Outcome(DeliveryState.DONE, files=FILES)
        elif key == ("slack", "t-1", "succeed"):
            outcome = Outcome(DeliveryState.FAILED, at(90), "timeout: slack took 10 s")
        elif key == ("downloader", "t-2", "failed"):
            outcome = Outcome(DeliveryState.DEAD, None, "refused for good")
        elif key == ("slack", "p-3", "succeed"):
            continue  # still running
        else:
            outcome = Outcome(DeliveryState.DONE)
        await w.submit(Finish(e.delivery_id, e.task_id, outcome, at(31) + e.delivery_id))
    # one done delivery replayed: pending again
    first = min(j.event.delivery_id for j in claimed.jobs if j.event.task_id == "p-4")
    await w.submit(Redeliver(at(40), delivery_id=first))
