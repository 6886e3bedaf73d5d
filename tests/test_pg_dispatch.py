"""The dispatcher across replicas on Postgres: woken by another replica's notification
(``LISTEN/NOTIFY``, ``receiver.store.postgres.wakeups``), and taking over a delivery whose
replica died once its lease has expired (the sweep, ``ExpireLeases``), with no polling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from receiver.dispatcher import Dispatcher
from receiver.plugins.registry import LoadedPlugin
from receiver.store.deliveries import Claim
from receiver.store.postgres import ExpireLeases, Replica
from receiver.store.postgres.wakeups import Listener
from receiver.writer import Writer
from submitter.protocol import now_ms
from tests.conftest import RecordingPlugin
from tests.test_pg_deliveries import replicas
from tests.test_pg_writes import callback, rows


@contextlib.asynccontextmanager
async def dispatching(
    url: str, writer: Writer, name: str, plugin: RecordingPlugin
) -> AsyncIterator[list[int]]:
    """A dispatcher on ``writer`` as replica ``name``, woken as the receiver wakes it on
    Postgres (its own writer's commits, the listener, the sweep); yields the due times it
    was notified of."""
    dispatcher = Dispatcher(
        writer, [LoadedPlugin(plugin, "test")], clock_ms=now_ms, sweep=ExpireLeases
    )
    writer.add_listener(lambda _transitions: dispatcher.wake())
    notified: list[int] = []

    def on_due(due_ms: int) -> None:
        notified.append(due_ms)
        dispatcher.wake_at(due_ms)

    listener = Listener(url, Replica(name), on_due)
    await listener.start()
    await dispatcher.start()
    try:
        yield notified
    finally:
        await dispatcher.close()
        await listener.close()


async def test_a_replica_delivers_what_another_replica_committed(pg_url: str) -> None:
    plugin = RecordingPlugin(name="slack")
    async with replicas(pg_url, "a", "b") as (a, b), dispatching(pg_url, b, "b", plugin) as got:
        before = now_ms()
        await a.submit(callback("t-1", "succeed", at_ms=before))
        (event,) = await plugin.wait_for(1)
        # b's own writer committed nothing: only a's notification could wake b
        assert (event.task_id, event.attempt) == ("t-1", 1)
        assert got and got[0] == before  # the outbox row's due time: at once


async def test_a_replica_ignores_its_own_notifications(pg_url: str) -> None:
    plugin = RecordingPlugin(name="slack")
    heard: list[int] = []
    at = now_ms()
    told = asyncio.Event()

    def on_due(due_ms: int) -> None:
        heard.append(due_ms)
        if due_ms == at:
            told.set()

    other = Listener(pg_url, Replica("other"), on_due)  # hears every replica but its own
    await other.start()
    try:
        async with replicas(pg_url, "b") as (b,), dispatching(pg_url, b, "b", plugin) as own:
            await b.submit(callback("t-1", "succeed", at_ms=at))
            await plugin.wait_for(1)  # woken by its own writer's commit
            await asyncio.wait_for(told.wait(), 10)  # b notified the new delivery
    finally:
        await other.close()
    assert own == []  # b's own listener dropped b's notifications


async def test_a_delivery_claimed_by_a_replica_that_died_is_completed_after_its_lease(
    pg_url: str,
) -> None:
    plugin = RecordingPlugin(name="slack")
    async with replicas(pg_url, "b") as (b,), dispatching(pg_url, b, "b", plugin):
        async with replicas(pg_url, "a", lease_ms=800) as (a,):
            # a stores a callback and claims its delivery in one commit, then dies with it
            # running (its writer closes; no outcome is ever recorded)
            start = now_ms()
            _, claimed = await asyncio.gather(
                a.submit(callback("t-1", "succeed", at_ms=start)),
                a.submit(Claim({"slack": 1}, start)),
            )
            (job,) = claimed.jobs
        (event,) = await plugin.wait_for(1, timeout_s=15)
        done_at = now_ms()
        assert (event.delivery_id, event.attempt) == (job.event.delivery_id, 2)
        assert done_at - start >= 800  # not before a's lease ran out
        await plugin.wait_for(1)
    (state,) = rows(pg_url, "SELECT state, attempts, claimed_by FROM deliveries")
    assert state == ("done", 2, None)
