"""Leases on Postgres while the replicas keep running: a Finish is fenced by its attempt, and
the periodic sweep (``ExpireLeases``) releases expired leases, reported by
``Claimed.next_due_at`` (``receiver.store.postgres.deliveries``). SQLite, with no leases,
keeps its Finish as it was."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import structlog.testing

from receiver.dispatcher import Dispatcher
from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState, SavedFile
from receiver.plugins import PluginSettings
from receiver.plugins.registry import LoadedPlugin
from receiver.store.deliveries import Claim, Finish, Outcome
from receiver.store.postgres import ExpireLeases
from receiver.writer import Writer
from tests.conftest import RecordingPlugin
from tests.test_pg_deliveries import SLACK, _claim_one, _slack_only, _state, _tasks, replicas
from tests.test_pg_writes import callback, rows


async def test_a_late_finish_of_an_earlier_attempt_by_the_same_replica_is_ignored(
    pg_url: str,
) -> None:
    late_file = SavedFile("https://x/1.png", "/a/1.png", 3, "ab")
    async with replicas(pg_url, "a") as (a,):
        await _tasks(a, 1)
        first = await _claim_one(a, 100)  # attempt 1, leased to a until 1100
        assert await a.submit(ExpireLeases(1_100, SLACK)) == 1
        second = await _claim_one(a, 1_200)  # attempt 2, a's again
        d = first.event.delivery_id
        assert (second.event.delivery_id, first.event.attempt, second.event.attempt) == (d, 1, 2)
        # attempt 1 ends at last, on the replica that holds attempt 2's claim: ignored
        late = Outcome(DeliveryState.FAILED, 9_999, "late", files=(late_file,))
        assert await a.submit(Finish(d, "t-0", late, 1_300, attempt=1)) is False
        assert _state(pg_url, d)[:5] == ("running", 2, None, "a", 1_200 + 1_000)
        done = Finish(d, "t-0", Outcome(DeliveryState.DONE), 1_400, attempt=2)
        assert await a.submit(done) is True
    assert _state(pg_url, d) == ("done", 2, None, None, None, None)
    assert rows(pg_url, "SELECT count(*) FROM files") == [(0,)]


async def test_the_dispatcher_fences_its_finish_by_the_events_attempt(pg_url: str) -> None:
    now = [100]
    gate = asyncio.Event()
    plugin = RecordingPlugin(PluginSettings(retry_schedule_s=[1, 1]), name="slack", gate=gate)
    recorded: list[object] = []
    async with replicas(pg_url, "a") as (a,):
        dispatcher = Dispatcher(a, [LoadedPlugin(plugin, "test")], clock_ms=lambda: now[0])
        dispatcher.add_listener(lambda job, outcome: recorded.append(outcome))
        await dispatcher.start()
        try:
            await _tasks(a, 1)
            dispatcher.wake()
            (event,) = await plugin.wait_for(1)  # attempt 1 runs, leased until 1100
            assert await a.submit(ExpireLeases(1_100, SLACK)) == 1
            again = await _claim_one(a, 1_200)  # attempt 2, claimed by a outside the dispatcher
            assert (event.attempt, again.event.attempt) == (1, 2)
            now[0] = 1_300
            gate.set()  # attempt 1 returns: the dispatcher records done for attempt 1
            with structlog.testing.capture_logs() as logged:
                await dispatcher.close()  # waits for the attempt and its Finish
        finally:
            await dispatcher.close()
    assert _state(pg_url, event.delivery_id)[:4] == ("running", 2, None, "a")
    ignored = [e for e in logged if e["event"] == "delivery_outcome_ignored"]
    assert ignored == [
        {"event": "delivery_outcome_ignored", "log_level": "warning"}
        | {"delivery_id": event.delivery_id, "attempt": 1}
    ]
    assert recorded == []  # the listeners hear only of outcomes that were stored


async def test_an_expired_lease_is_swept_while_its_replica_still_runs(pg_url: str) -> None:
    async with replicas(pg_url, "a", "b") as (a, b):
        await _tasks(a, 3)
        early = await _claim_one(a, 100)  # leased until 1100
        later = await _claim_one(a, 500)  # leased until 1500
        third = await _claim_one(a, 600)  # leased until 1600
        # nothing is due: every row runs, and a knows when the first lease expires
        told = await a.submit(Claim({"slack": 1}, 700))
        assert (told.jobs, told.next_due_at) == ([], 1_100)
        assert await a.submit(ExpireLeases(1_099, SLACK)) == 0  # every lease holds
        # a's own claims whose lease holds stay a's (start-up Recover would take them back)
        assert await a.submit(ExpireLeases(1_100, SLACK)) == 1
        assert _state(pg_url, early.event.delivery_id)[:5] == ("failed", 1, 1_100, None, None)
        assert _state(pg_url, later.event.delivery_id)[:5] == ("running", 1, None, "a", 1_500)
        assert _state(pg_url, third.event.delivery_id)[:5] == ("running", 1, None, "a", 1_600)
        # b, another replica, picks the released delivery up (its attempt counted)
        taken = await _claim_one(b, 1_100)
        assert (taken.event.delivery_id, taken.event.attempt) == (early.event.delivery_id, 2)
        # an expired lease not yet swept is not reported (a dispatcher would look at once for
        # ever); the next one still to expire is
        assert (await b.submit(Claim({"slack": 1}, 1_550))).next_due_at == 1_600
        # the sweep leaves b's own claim (lease until 2100) and a's third (until 1600) alone
        assert await b.submit(ExpireLeases(1_550, {"slack": 1})) == 1  # its last attempt
        assert _state(pg_url, taken.event.delivery_id)[:4] == ("running", 2, None, "b")
        assert _state(pg_url, third.event.delivery_id)[:4] == ("running", 1, None, "a")
    state, attempts, due, claimed_by, lease, error = _state(pg_url, later.event.delivery_id)
    assert (state, attempts, due, claimed_by, lease) == ("dead", 1, None, None, None)
    assert isinstance(error, str) and error.startswith("lease expired")
    assert error.endswith("(its last attempt)")


async def test_sqlite_ignores_the_finishs_attempt_and_has_no_sweep(tmp_path: Path) -> None:
    db = tmp_path / "kling-hooks.db"
    writer = await Writer.open(db, router=_slack_only)
    writer.start()
    try:
        await writer.submit(callback("t-0", "succeed"))
        job = await _claim_one(writer, 10)
        with pytest.raises(StoreUnavailable):
            await writer.submit(ExpireLeases(20, SLACK))
        done = Outcome(DeliveryState.DONE)
        await writer.submit(Finish(job.event.delivery_id, "t-0", done, 30, attempt=7))
    finally:
        await writer.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT state, attempts FROM deliveries").fetchall() == [("done", 1)]
