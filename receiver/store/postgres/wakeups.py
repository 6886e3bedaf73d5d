"""Waking the other replicas: ``LISTEN/NOTIFY`` on one channel, so that no replica polls.

A replica's dispatcher sleeps until the earliest moment it knows of when a delivery becomes
due (``Claimed.next_due_at``, the plugins' retries and the leases of running claims), and is
woken in-process by its own writer's commits. What another replica commits it learns from
a notification on :data:`CHANNEL`, sent inside the committing transaction (Postgres delivers
it at the commit, and never for a rollback):

* new outbox rows, a replay, or deliveries released from expired leases: due *now*;
* a claim: its lease's expiry (if that replica dies, another sweeps the lease then);
* a failed attempt: its retry's ``next_attempt_at`` (if that replica dies before it, another
  runs the retry).

The payload is ``"<due_ms> <replica_id>"``: :class:`Listener` hands ``due_ms`` to its
callback (the dispatcher's ``wake_at``), and drops its own replica's notifications (its own
writer woke it already). Postgres folds identical notifications of one transaction into one,
and every batch sends at most one, its earliest.

``NOTIFY`` serialises the commits of the transactions that send one (a lock held during
commit, "NOTIFY" in the PostgreSQL docs): one per group commit, not one per callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from receiver.models import DeliveryState
from receiver.store.deliveries import Claim, Claimed, Finish, Recover, Redeliver
from receiver.store.postgres.deliveries import ExpireLeases, Replica

log = structlog.get_logger("kling_hooks.postgres")

#: The channel every replica of one database listens on.
CHANNEL = "kling_hooks_deliveries"

#: After the listening connection is lost, seconds before connecting again (doubling up to
#: :data:`RECONNECT_MAX_S`).
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 10.0


def due_after(op: object, result: Any, replica: Replica) -> int | None:
    """When what ``op`` committed makes a delivery actionable for another replica, Unix ms
    (None: nothing it did concerns them). Task operations are counted by the transaction
    (their outbox rows), not here."""
    if isinstance(op, Claim) and isinstance(result, Claimed) and result.jobs:
        return op.now_ms + min(replica.lease_for(job.plugin) for job in result.jobs)
    if isinstance(op, Finish) and op.outcome.state is DeliveryState.FAILED:
        return op.outcome.next_attempt_at
    if isinstance(op, (Redeliver, Recover, ExpireLeases)) and result:
        return op.now_ms
    return None


def notify(conn: psycopg.Connection[Any], due_ms: int, replica: Replica) -> None:
    """Queue the batch's notification in its open transaction (sent at its commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{due_ms} {replica.replica_id}"))


class Listener:
    """Listens on :data:`CHANNEL` on a connection of its own, and calls ``on_due(due_ms)``
    for each notification of another replica.

    When the connection is lost it connects again (with backoff), and then calls
    ``on_due(0)`` once: what was notified meanwhile is unknown, so the dispatcher looks now.

    Args:
        url: The database's URL.
        replica: This replica (its own notifications are dropped).
        on_due: Called on the event loop with a due time, Unix ms; it must not block.
    """

    def __init__(self, url: str, replica: Replica, on_due: Callable[[int], None]) -> None:
        self._url = url
        self._replica = replica
        self._on_due = on_due
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self, *, timeout_s: float = 10.0) -> None:
        """Start listening; returns once ``LISTEN`` is in force (or after ``timeout_s``, the
        listener then going on trying in the background)."""
        self._task = asyncio.create_task(self._run(), name="kling-hooks-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout_s)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay_s = RECONNECT_MIN_S
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            except psycopg.Error as exc:
                log.warning("listen_connect_failed", error=str(exc), retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening.set()
                if not first:
                    log.info("listen_reconnected")
                    self._on_due(0)
                first, delay_s = False, RECONNECT_MIN_S
                async for note in conn.notifies():
                    self._received(note.payload)
            except psycopg.Error as exc:
                log.warning("listen_connection_lost", error=str(exc))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _received(self, payload: str) -> None:
        due, _, sender = payload.partition(" ")
        if sender == self._replica.replica_id or not due.isdigit():
            return
        self._on_due(int(due))
