"""The outbox on Postgres: two replicas (each a :class:`Writer` with its own thread,
connection and :class:`Replica`) claiming, finishing, recovering and replaying deliveries of
one real database (``receiver.store.postgres.deliveries``)."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest

from receiver.errors import DeliveryNotFound, DeliveryRunning, PluginNotLoaded
from receiver.models import DeliveryState, SavedFile
from receiver.store.deliveries import Claim, Finish, Job, Outcome, Recover, Redeliver
from receiver.store.postgres import Replica
from receiver.writer import Writer
from tests.test_pg_writes import callback, rows, started_writers

SLACK = {"slack": 3}  # attempts allowed, by plugin (Recover's argument)


def _slack_only(task_status: str, route: str | None) -> list[str]:
    return ["slack"]


def replicas(
    url: str, *names: str, lease_ms: int = 1_000
) -> contextlib.AbstractAsyncContextManager[list[Writer]]:
    """A started writer per name, each claiming as ``Replica(name, lease_ms)``."""
    return started_writers(url, [Replica(n, lease_ms) for n in names], _slack_only)


async def _tasks(w: Writer, count: int) -> None:
    """``count`` succeeded tasks, one due slack delivery each (due at 1 ms)."""
    await asyncio.gather(*(w.submit(callback(f"t-{n}", "succeed")) for n in range(count)))


async def _claim_one(w: Writer, now_ms: int) -> Job:
    (job,) = (await w.submit(Claim({"slack": 1}, now_ms))).jobs
    return job


def _state(url: str, delivery_id: int) -> tuple[object, ...]:
    (row,) = rows(
        url,
        "SELECT state, attempts, next_attempt_at, claimed_by, lease_expires_at, last_error"
        " FROM deliveries WHERE id = %s",
        delivery_id,
    )
    return row


async def test_a_claim_skips_the_rows_another_replicas_open_batch_has_locked(
    pg_url: str,
) -> None:
    async with replicas(pg_url, "a") as (a,):
        await _tasks(a, 4)
        with psycopg.connect(pg_url) as other:  # another replica's batch, still open
            locked = [
                r[0]
                for r in other.execute(
                    "SELECT id FROM deliveries ORDER BY id LIMIT 2 FOR UPDATE"
                ).fetchall()
            ]
            claimed = await asyncio.wait_for(a.submit(Claim({"slack": 4}, 10)), 10)
            other.rollback()
    ids = [j.event.delivery_id for j in claimed.jobs]
    assert len(ids) == 2 and not set(ids) & set(locked)  # skipped, not waited for
    assert claimed.next_due_at == 1  # the locked ones are still due


async def test_two_replicas_claiming_at_once_never_get_the_same_delivery(pg_url: str) -> None:
    async with replicas(pg_url, "a", "b") as (a, b):
        await _tasks(a, 60)
        got: dict[str, list[int]] = {"a": [], "b": []}
        for _ in range(20):
            claims = await asyncio.gather(
                *(w.submit(Claim({"slack": 2}, 10)) for w in (a, b, a, b))
            )
            for name, claimed in zip("abab", claims, strict=True):
                got[name] += [j.event.delivery_id for j in claimed.jobs]
    everything = got["a"] + got["b"]
    assert len(everything) == len(set(everything)) == 60
    assert got["a"] and got["b"]
    # each claim is leased to the replica that got it, the attempt counted once
    stored = rows(pg_url, "SELECT id, claimed_by, attempts, lease_expires_at FROM deliveries")
    assert {(i, name) for i, name, _, _ in stored} == {
        (i, name) for name, ids in got.items() for i in ids
    }
    assert {(n, lease) for _, _, n, lease in stored} == {(1, 10 + 1_000)}


async def test_an_expired_lease_is_recovered_and_finished_by_another_replica(
    pg_url: str,
) -> None:
    late_file = SavedFile("https://x/1.png", "/a/1.png", 3, "ab")
    async with replicas(pg_url, "a", "b") as (a, b):
        await _tasks(a, 1)
        first = await _claim_one(a, 100)  # leased to a until 1100
        assert await b.submit(Recover(1_099, SLACK)) == 0  # the lease holds
        assert (await b.submit(Claim({"slack": 1}, 1_099))).jobs == []  # running: not due
        assert await b.submit(Recover(1_100, SLACK)) == 1
        assert _state(pg_url, first.event.delivery_id)[:4] == ("failed", 1, 1_100, None)
        second = await _claim_one(b, 1_200)
        assert (second.event.delivery_id, second.event.attempt) == (first.event.delivery_id, 2)
        done = Outcome(DeliveryState.DONE)
        assert await b.submit(Finish(second.event.delivery_id, "t-0", done, 1_300)) is True
        # a's attempt ends at last: its outcome and its files are not b's delivery's
        late = Outcome(DeliveryState.FAILED, 9_999, "late", files=(late_file,))
        assert await a.submit(Finish(first.event.delivery_id, "t-0", late, 1_400)) is False
    assert _state(pg_url, first.event.delivery_id) == ("done", 2, None, None, None, None)
    assert rows(pg_url, "SELECT count(*) FROM files") == [(0,)]


async def test_finish_stores_the_files_and_a_later_save_of_the_same_url_replaces_it(
    pg_url: str,
) -> None:
    one = SavedFile("https://x/1.png", "/files/1.png", 10, "aa", "image/png")
    two = SavedFile("https://x/2.mp4", "/files/2.mp4", 20, "bb")
    async with replicas(pg_url, "a") as (a,):
        await _tasks(a, 1)
        job = await _claim_one(a, 10)
        await a.submit(
            Finish(job.event.delivery_id, "t-0", Outcome(DeliveryState.DONE, files=(one, two)), 20)
        )
        assert await a.submit(Redeliver(30, delivery_id=job.event.delivery_id)) == 1
        again = await _claim_one(a, 40)
        assert again.event.saved_files == (one, two)  # the next attempt sees them
        moved = SavedFile(one.url, "/elsewhere/1.png", 11, "cc")
        await a.submit(
            Finish(again.event.delivery_id, "t-0", Outcome(DeliveryState.DONE, files=(moved,)), 50)
        )
    assert rows(
        pg_url,
        "SELECT task_id, delivery_id, url, path, bytes, sha256, saved_at FROM files ORDER BY url",
    ) == [
        ("t-0", job.event.delivery_id, one.url, "/elsewhere/1.png", 11, "cc", 50),
        ("t-0", job.event.delivery_id, two.url, two.path, 20, "bb", 20),
    ]


async def test_redeliver_one_or_by_filter_as_on_sqlite(pg_url: str) -> None:
    async with replicas(pg_url, "a", "b") as (a, b):
        await _tasks(a, 4)
        jobs = (await a.submit(Claim({"slack": 4}, 10))).jobs
        d = [j.event.delivery_id for j in jobs]
        await a.submit(Finish(d[0], "t-0", Outcome(DeliveryState.DONE), 20))
        await a.submit(Finish(d[1], "t-1", Outcome(DeliveryState.DEAD, last_error="no"), 20))
        await a.submit(Finish(d[2], "t-2", Outcome(DeliveryState.DONE), 20))  # d[3] runs
        with pytest.raises(DeliveryNotFound):
            await b.submit(Redeliver(30, delivery_id=9_999))
        with pytest.raises(DeliveryRunning):
            await b.submit(Redeliver(30, delivery_id=d[3]))
        with pytest.raises(PluginNotLoaded):
            await b.submit(Redeliver(30, delivery_id=d[0], loaded=frozenset({"downloader"})))
        assert await b.submit(Redeliver(30, delivery_id=d[1])) == 1
        assert _state(pg_url, d[1])[:3] == ("pending", 0, 30)
        assert await b.submit(Redeliver(40, state=DeliveryState.DONE, plugin="nope")) == 0
        assert await b.submit(Redeliver(40, since_ms=2)) == 0  # every row was created at 1
        assert await b.submit(Redeliver(40, state=DeliveryState.DONE, since_ms=1)) == 2
        assert await b.submit(Redeliver(50, loaded=frozenset({"slack"}))) == 3  # not d[3]
    assert rows(pg_url, "SELECT id, state, next_attempt_at FROM deliveries ORDER BY id") == [
        (d[0], "pending", 50),
        (d[1], "pending", 50),
        (d[2], "pending", 50),
        (d[3], "running", None),
    ]


async def test_the_last_attempts_expired_lease_makes_the_delivery_dead(pg_url: str) -> None:
    async with replicas(pg_url, "a", "b") as (a, b):
        await _tasks(a, 1)
        job = await _claim_one(a, 100)
        assert await b.submit(Recover(1_100, {"slack": 1})) == 1
    state, attempts, due, claimed_by, lease, error = _state(pg_url, job.event.delivery_id)
    assert (state, attempts, due, claimed_by, lease) == ("dead", 1, None, None, None)
    assert isinstance(error, str) and error.endswith("(its last attempt)")


async def test_a_replica_recovers_its_own_claims_at_start_before_their_lease_ends(
    pg_url: str,
) -> None:
    async with replicas(pg_url, "a", lease_ms=60_000) as (a,):
        await _tasks(a, 2)
        jobs = (await a.submit(Claim({"slack": 2}, 100))).jobs
    # "a" restarts (same replica_id); "b" is another replica: a's leases hold for it
    async with replicas(pg_url, "b", "a") as (b, a_again):
        assert await b.submit(Recover(200, SLACK)) == 0
        assert await a_again.submit(Recover(200, SLACK)) == 2
    for j in jobs:
        assert _state(pg_url, j.event.delivery_id)[:4] == ("failed", 1, 200, None)
