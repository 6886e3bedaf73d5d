"""The write path on Postgres: two replicas (each a :class:`Writer` with its own thread and
connection, as two processes have) recording callbacks into one real database at once.

The database decides: one transition per (task_id, task_status) however many replicas receive
it, a task never moves backward whichever replica commits first, and a new transition's outbox
rows are in its transaction (``receiver.store.postgres.records``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from receiver.errors import StoreUnavailable, TaskConflict
from receiver.models import Verdict
from receiver.parsing import parse_callback
from receiver.store import Router, WriteProbe
from receiver.store.postgres import Replica
from receiver.store.retention import IncrementalVacuum
from receiver.transitions import IncomingCallback, Registration, TransitionRow
from receiver.writer import Writer
from submitter.protocol import TaskStatus
from tests.conftest import task_body
from tests.pg_support import execute


def _two_plugins(task_status: str, route: str | None) -> list[str]:
    return ["downloader", "slack"] if task_status in ("succeed", "failed") else ["slack"]


def replicas(url: str, count: int = 2) -> contextlib.AbstractAsyncContextManager[list[Writer]]:
    """``count`` started writers on the database ``url`` (replicas ``r0``, ``r1``...)."""
    return started_writers(url, [Replica(f"r{i}") for i in range(count)], _two_plugins)


@contextlib.asynccontextmanager
async def started_writers(
    url: str, names: Sequence[Replica], router: Router
) -> AsyncIterator[list[Writer]]:
    """A started writer on the database ``url`` for each replica, opened together (they
    migrate it once, under the advisory lock); closed when the block ends."""
    writers = await asyncio.gather(
        *(Writer.open_postgres(url, replica=r, router=router) for r in names)
    )
    for w in writers:
        w.start()
    try:
        yield list(writers)
    finally:
        for w in writers:
            await w.close()


def callback(
    task_id: str, status: str, ext: str | None = None, at_ms: int = 1, **extra: Any
) -> IncomingCallback:
    ext = ext or f"ext-{task_id}"
    body = json.dumps(task_body(task_id, status, ext, **extra))
    return IncomingCallback(ext, parse_callback(body), body, at_ms)


def rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


async def test_the_same_callback_on_two_replicas_at_once_records_one_transition(
    pg_url: str,
) -> None:
    async with replicas(pg_url) as (a, b):
        same = callback("t-1", "succeed", task_result={"images": [{"url": "https://x/1.png"}]})
        verdicts = await asyncio.gather(*(w.submit(same) for w in [a, b] * 20))
    assert sorted(verdicts) == [Verdict.DUPLICATE] * 39 + [Verdict.NEW]
    assert rows(pg_url, "SELECT task_id, task_status, source FROM transitions") == [
        ("t-1", "succeed", "callback")
    ]
    assert rows(pg_url, "SELECT verdict, count(*) FROM callbacks GROUP BY 1 ORDER BY 1") == [
        ("duplicate", 39),
        ("new", 1),
    ]
    # the outbox rows of the one transition, written with it
    assert rows(
        pg_url,
        "SELECT d.plugin, d.state FROM deliveries d JOIN transitions t ON t.id = d.transition_id"
        " ORDER BY 1",
    ) == [("downloader", "pending"), ("slack", "pending")]
    (task,) = rows(pg_url, "SELECT task_status, status_rank, task_result_json FROM tasks")
    assert task[:2] == ("succeed", TaskStatus.SUCCEED.rank)
    assert json.loads(task[2]) == {"images": [{"url": "https://x/1.png"}]}


async def test_racing_callbacks_on_two_replicas_never_move_a_task_backward(pg_url: str) -> None:
    rng = random.Random(13)
    ops = []
    for n in range(40):
        for status in ("submitted", "processing", "succeed"):
            ops.append(callback(f"t-{n}", status, task_status_msg=status))
    rng.shuffle(ops)
    async with replicas(pg_url) as writers:
        verdicts = await asyncio.gather(*(writers[i % 2].submit(op) for i, op in enumerate(ops)))
    assert set(verdicts) <= {Verdict.NEW, Verdict.STALE}
    # every task ended succeed, with succeed's fields, however the replicas interleaved
    assert rows(pg_url, "SELECT DISTINCT task_status, status_rank, task_status_msg FROM tasks") == [
        ("succeed", TaskStatus.SUCCEED.rank, "succeed")
    ]
    # each recorded transition moved its task forward: in commit (id) order, ranks only rise
    by_task: dict[str, list[int]] = {}
    for task_id, status in rows(pg_url, "SELECT task_id, task_status FROM transitions ORDER BY id"):
        by_task.setdefault(task_id, []).append(TaskStatus(status).rank)
    assert len(by_task) == 40
    assert all(ranks == sorted(set(ranks)) for ranks in by_task.values())
    # the new verdicts are exactly the transitions; the rest were answered stale
    assert verdicts.count(Verdict.NEW) == sum(len(r) for r in by_task.values())


async def test_a_late_lower_state_is_stale_and_a_repeated_one_duplicate(pg_url: str) -> None:
    async with replicas(pg_url) as (a, b):
        assert await a.submit(callback("t-1", "submitted")) is Verdict.NEW
        assert await b.submit(callback("t-1", "succeed", at_ms=5)) is Verdict.NEW
        assert await a.submit(callback("t-1", "processing", at_ms=9)) is Verdict.STALE
        assert await b.submit(callback("t-1", "submitted", at_ms=7)) is Verdict.DUPLICATE
    assert rows(pg_url, "SELECT task_status, first_seen_at, last_received_at FROM tasks") == [
        ("succeed", 1, 9)
    ]


async def test_a_forward_move_whose_transition_is_stored_already_is_undone(pg_url: str) -> None:
    # A task whose row went back below a state it has a transition for (as a hand edit or a
    # restore might leave it): the move to that state again must not be half-recorded.
    async with replicas(pg_url) as (a, _):
        await a.submit(callback("t-1", "succeed", at_ms=1))
        processing = TaskStatus.PROCESSING
        execute(
            pg_url,
            "UPDATE tasks SET task_status = %s, status_rank = %s",
            processing.value,
            processing.rank,
        )
        again = await a.submit(callback("t-1", "succeed", at_ms=2))
    assert again == Verdict.DUPLICATE  # the key decided: recorded already
    assert rows(pg_url, "SELECT task_status, last_received_at FROM tasks") == [("processing", 2)]
    assert rows(pg_url, "SELECT count(*) FROM transitions") == [(1,)]
    assert rows(pg_url, "SELECT count(*) FROM callbacks") == [(2,)]


async def test_registration_then_callbacks_across_replicas(pg_url: str) -> None:
    reg = Registration(
        "t-1", "ext-t-1", "images/generations", '{"prompt":"x"}', TaskStatus.SUBMITTED, 100, 2
    )
    async with replicas(pg_url) as (a, b):
        assert await a.submit(reg) is Verdict.NEW
        assert await b.submit(reg) is Verdict.DUPLICATE
        assert await b.submit(callback("t-1", "succeed", at_ms=3)) is Verdict.NEW
    assert rows(pg_url, "SELECT task_status, source FROM transitions ORDER BY id") == [
        ("submitted", "registration"),
        ("succeed", "callback"),
    ]
    assert rows(pg_url, "SELECT route, request_json, created_at, task_status FROM tasks") == [
        ("images/generations", '{"prompt":"x"}', 100, "succeed")
    ]


async def test_an_operation_that_fails_undoes_only_its_own_writes(pg_url: str) -> None:
    heard: list[tuple[str, str]] = []
    async with replicas(pg_url, count=1) as (w,):
        await w.submit(callback("t-1", "submitted", ext="ext-a"))
        w.add_listener(lambda ts: heard.extend((t.task_id, "transition") for t in ts))
        w.add_callback_listener(lambda cs: heard.extend((c.task_id, "callback") for c in cs))
        outcomes = await asyncio.gather(
            w.submit(callback("t-2", "succeed")),
            w.submit(callback("t-3", "succeed", ext="ext-a")),  # ext-a is t-1's
            w.submit(callback("t-1", "succeed", ext="ext-b")),  # t-1 is ext-a's
            w.submit(callback("t-4", "succeed", task_status_msg="nul \x00 byte")),
            w.submit(callback("t-5", "succeed")),
            return_exceptions=True,
        )
        assert outcomes[0] is Verdict.NEW and outcomes[4] is Verdict.NEW
        assert isinstance(outcomes[1], TaskConflict) and isinstance(outcomes[2], TaskConflict)
        assert isinstance(outcomes[3], StoreUnavailable)  # Postgres text holds no NUL
        assert await w.submit(WriteProbe(42)) is None  # the batch's connection still works
        with pytest.raises(StoreUnavailable, match="IncrementalVacuum does not run on Postgres"):
            await w.submit(IncrementalVacuum(10))  # SQLite's alone
    assert rows(pg_url, "SELECT task_id, task_status FROM tasks ORDER BY task_id") == [
        ("t-1", "submitted"),
        ("t-2", "succeed"),
        ("t-5", "succeed"),
    ]
    assert rows(pg_url, "SELECT count(*) FROM callbacks") == [(3,)]
    # The listeners heard of what was committed only: t-4's transition went with its failure.
    assert sorted(heard) == [
        ("t-2", "callback"),
        ("t-2", "transition"),
        ("t-5", "callback"),
        ("t-5", "transition"),
    ]


async def test_commit_listeners_get_the_new_transitions_with_their_database_ids(
    pg_url: str,
) -> None:
    seen: list[TransitionRow] = []
    async with replicas(pg_url) as (a, b):
        a.add_listener(seen.extend)
        b.add_listener(seen.extend)
        await asyncio.gather(
            a.submit(callback("t-1", "succeed")), b.submit(callback("t-2", "failed"))
        )
    stored = rows(pg_url, "SELECT id, task_id, task_status FROM transitions ORDER BY id")
    assert sorted((t.id, t.task_id, t.task_status) for t in seen) == stored
