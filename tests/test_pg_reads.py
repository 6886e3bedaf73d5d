"""The status API's and the dashboard's reads on Postgres (``receiver.store.postgres.reads``,
``dashboard``, ``pool``) against SQLite's on the same history of real write operations: every
read gives the same answer on both (the same JSON text for ``GET /tasks/{id}`` and
``GET /tasks``), and a Postgres that cannot be reached is ``StoreUnavailable``, never a
psycopg error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState, ListedDelivery, TaskPage
from receiver.store.postgres import PgDashboardReader, PgReader, PgReadPool
from receiver.store.postgres.pool import PgAsyncConnection
from submitter.protocol import Route, TaskStatus
from tests.pg_reads_support import TASK_IDS, Backend, at, both
from tests.pg_support import Gate


async def walk_tasks(
    b: Backend, task_status: TaskStatus | None, route: Route | None, limit: int, before: int | None
) -> list[str]:
    """Every page of ``GET /tasks`` from the first, as its JSON text, with the cursor (this
    backend's row id of the page's last task, checked) written as that task's task_id."""
    pages: list[str] = []
    cursor: int | None = None
    while True:
        text = await b.reader.task_page(
            task_status=task_status,
            route=route,
            limit=limit,
            before_id=cursor,
            transition_before=before,
        )
        page = TaskPage.model_validate_json(text)
        if page.next_cursor is None:
            pages.append(text)
            return pages
        last = page.tasks[-1].task_id
        assert page.next_cursor == str(b.row_id(last)) and len(page.tasks) == limit
        pages.append(text.replace(f'"next_cursor":"{page.next_cursor}"', f'"next_cursor":"{last}"'))
        cursor = int(page.next_cursor)


async def walk_deliveries(
    b: Backend, limit: int, **filters: DeliveryState | str | None
) -> list[tuple[list[ListedDelivery], int | None]]:
    """Every page of ``GET /deliveries`` from the first: ``(deliveries, next_cursor)``."""
    pages: list[tuple[list[ListedDelivery], int | None]] = []
    cursor: int | None = None
    while True:
        found, cursor = await b.reader.list_deliveries(
            limit=limit,
            before_id=cursor,
            **filters,  # type: ignore[arg-type]
        )
        pages.append((found, cursor))
        if cursor is None:
            return pages


async def test_every_status_read_answers_the_same_on_postgres_as_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    async with both(tmp_path, pg_url) as (lite, pg):
        for id_ in [*TASK_IDS, "ext-1", "ext-4", "ext-p3", "nobody"]:
            answer = await lite.reader.task_answer(id_)
            assert await pg.reader.task_answer(id_) == answer, id_
            assert await pg.reader.get_task(id_) == await lite.reader.get_task(id_)
        t1 = await pg.reader.get_task("t-1")
        assert t1 is not None and t1.files[0].url.endswith("z.mp4")  # by id
        t3 = await pg.reader.get_task("t-3")
        assert t3 is not None and {str(k): n for k, n in t3.callbacks.items()} == {
            "duplicate": 1,
            "new": 1,
            "stale": 1,
        }
        assert (await pg.reader.get_task("ext-2") or t1).task_id == "ext-2"

        filters: list[tuple[TaskStatus | None, Route | None, int | None]] = [
            (None, None, None),
            (TaskStatus.SUCCEED, None, None),
            (None, Route.VIDEOS_TEXT2VIDEO, None),
            (TaskStatus.SUBMITTED, Route.IMAGES_GENERATIONS, None),
            (TaskStatus.FAILED, None, None),
            (None, None, at(6.1)),  # latest transition before t-3's duplicate
        ]
        for task_status, route, before in filters:
            for limit in (1, 2, 3, 500):
                pages = await walk_tasks(lite, task_status, route, limit, before)
                got = await walk_tasks(pg, task_status, route, limit, before)
                assert got == pages, (task_status, route, before, limit)

        deliveries_filters: list[dict[str, DeliveryState | str | None]] = [
            {},
            {"state": DeliveryState.DONE},
            {"state": DeliveryState.DEAD},
            {"state": DeliveryState.FAILED},
            {"state": DeliveryState.RUNNING},
            {"state": DeliveryState.PENDING, "plugin": "slack"},
            {"other_than": DeliveryState.DEAD},
            {"plugin": "downloader"},
        ]
        for kw in deliveries_filters:
            for limit in (1, 3, 500):
                full = {"state": None, "plugin": None, **kw}
                expected = await walk_deliveries(lite, limit, **full)
                assert await walk_deliveries(pg, limit, **full) == expected, (kw, limit)
        everything = await walk_deliveries(pg, 500, state=None, plugin=None)
        states = {d.state for d in everything[0][0]}
        assert states == set(DeliveryState)  # the history has every state

        backlog = await lite.reader.backlog()
        assert await pg.reader.backlog() == backlog
        assert {b.plugin for b in backlog} == {"downloader", "slack"}
        for cutoff in (0, at(2.2), at(31) + 5, at(60), at(10_000)):
            assert await pg.reader.prunable(cutoff) == await lite.reader.prunable(cutoff)
        assert (await pg.reader.prunable(at(10_000))).kept_for_files == 1
        await pg.reader.ping()
        space = await pg.reader.space()
        assert space.reclaims_itself and space.size_bytes > 0
        assert not (await lite.reader.space()).reclaims_itself


async def test_every_dashboard_read_answers_the_same_on_postgres_as_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    async with both(tmp_path, pg_url) as (lite, pg):
        for file_id in range(0, 4):
            assert await pg.dashboard.file(file_id) == await lite.dashboard.file(file_id)
        for task_id in [*TASK_IDS, "nobody"]:
            expected = await lite.dashboard.task_files(task_id)
            assert await pg.dashboard.task_files(task_id) == expected
        assert (await pg.dashboard.task_files("t-1"))[0].url.endswith("z.mp4")
        ids = [*TASK_IDS, "nobody"]
        extras = await lite.dashboard.row_extras(ids)
        assert await pg.dashboard.row_extras(ids) == extras
        assert await pg.dashboard.row_extras([]) == {}
        assert extras["t-2"].prompt is None and extras["p-1"].prompt == "p 1"  # 5 is no text
        assert extras["t-1"].preview is not None and extras["t-1"].preview.url.endswith(".png")
        for callbacks_since, spend_since in [(0, 0), (at(2.2), at(0)), (at(100), 0)]:
            expected_overview = await lite.dashboard.overview(
                callbacks_since_ms=callbacks_since, spend_since_ms=spend_since
            )
            got = await pg.dashboard.overview(
                callbacks_since_ms=callbacks_since, spend_since_ms=spend_since
            )
            assert got.tasks_by_status == expected_overview.tasks_by_status
            assert got.callbacks == expected_overview.callbacks
            assert [s[:2] + s[3:] for s in got.spend] == [
                s[:2] + s[3:] for s in expected_overview.spend
            ]
            for mine, theirs in zip(got.spend, expected_overview.spend, strict=True):
                assert mine[2] == pytest.approx(theirs[2])  # float sums, in their own order
        overview = await pg.dashboard.overview(callbacks_since_ms=0, spend_since_ms=0)
        assert {route for _, route, _, _ in overview.spend} == {
            "",
            "images/generations",
            "videos/text2video",
        }
        assert len({day for day, *_ in overview.spend}) == 2


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_postgres_is_store_unavailable_within_the_pool_timeout() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
    pool = await PgReadPool.open(url, size=1, timeout_s=0.5)  # opening does not wait
    reader, dashboard = PgReader(pool), PgDashboardReader(pool)
    try:
        async with asyncio.timeout(10):  # a hang guard, not a measurement
            with pytest.raises(StoreUnavailable, match="no Postgres read connection within"):
                await reader.ping()
            with pytest.raises(StoreUnavailable) as raised:
                await reader.task_answer("t-1")
            assert not isinstance(raised.value, psycopg.Error)
            with pytest.raises(StoreUnavailable):
                await dashboard.overview(callbacks_since_ms=0, spend_since_ms=0)
    finally:
        await pool.close()
    with pytest.raises(StoreUnavailable):
        await reader.ping()  # closed


async def test_a_read_connection_the_server_dropped_is_replaced_not_handed_out(
    pg_url: str,
) -> None:
    async with sqlite_free_pool(pg_url) as (_, reader):
        await reader.ping()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid != pg_backend_pid()"
            ).fetchall()
        assert killed and all(k for (k,) in killed)
        await reader.ping()  # the dead connection failed its check; a new one answers
        assert await reader.task_answer("nobody") is None


@contextlib.asynccontextmanager
async def sqlite_free_pool(url: str) -> AsyncIterator[tuple[PgReadPool, PgReader]]:
    """A migrated database's read pool of one connection, and its reader."""
    from receiver.store.postgres import connect_writer

    connect_writer(url).close()
    pool = await PgReadPool.open(url, size=1, timeout_s=5)
    try:
        yield pool, PgReader(pool)
    finally:
        await pool.close()


def test_a_postgres_read_pool_needs_a_connection_and_a_timeout() -> None:
    with pytest.raises(ValueError, match="size=0 is below 1"):
        asyncio.run(PgReadPool.open("postgresql://127.0.0.1/x", size=0))
    with pytest.raises(ValueError, match="timeout_s=0 is not positive"):
        asyncio.run(PgReadPool.open("postgresql://127.0.0.1/x", timeout_s=0))


async def test_reads_fail_while_postgres_is_away_and_recover_by_themselves(pg_url: str) -> None:
    from receiver.store.postgres import connect_writer

    connect_writer(pg_url).close()  # migrated
    gate = Gate(pg_url)
    await gate.open()
    pool = await PgReadPool.open(gate.url, size=1, timeout_s=1)
    reader = PgReader(pool)
    try:
        async with asyncio.timeout(60):  # a hang guard
            assert await reader.task_answer("nobody") is None
            await gate.shut()
            with pytest.raises(StoreUnavailable):
                await reader.ping()
            with pytest.raises(StoreUnavailable):
                await reader.backlog()
            for _ in range(10):  # 10 s away: the pool's attempts back off to 8 s apart
                with pytest.raises(StoreUnavailable):
                    await reader.ping()
            await gate.open()
            # the first read is served at once, on a connection of its own, and the pool is
            # replaced by one that connects now, not after its backoff
            async with asyncio.timeout(2 * 1 + 1):  # within the read timeout, twice
                await reader.ping()
                assert await reader.backlog() == []
    finally:
        await pool.close()
        await gate.shut()


async def test_size_reads_run_at_once_and_one_more_waits_at_most_the_timeout(
    pg_url: str,
) -> None:
    pool = await PgReadPool.open(pg_url, size=2, timeout_s=1)
    holding: list[int] = []
    both_in = asyncio.Event()

    async def blocked(conn: PgAsyncConnection) -> int:
        """Holds its connection until the test's advisory lock is free (one statement)."""
        holding.append(1)
        if len(holding) == 2:
            both_in.set()
        await conn.execute("SELECT pg_advisory_xact_lock_shared(42)")
        return 1

    try:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_advisory_lock(42)")
            reads = [asyncio.create_task(pool.run(blocked)) for _ in range(2)]
            async with asyncio.timeout(30):
                await both_in.wait()  # two reads hold a connection each, at once
            with pytest.raises(StoreUnavailable, match="no Postgres read connection within 1"):
                await pool.run(blocked)  # every connection is busy: it waits 1 s, no more
            assert len(holding) == 2
            admin.execute("SELECT pg_advisory_unlock(42)")
            assert await asyncio.gather(*reads) == [1, 1]
    finally:
        await pool.close()
