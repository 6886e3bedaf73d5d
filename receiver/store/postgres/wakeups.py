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
import psycopg.errors
import structlog

from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState
from receiver.store.deliveries import Claim, Claimed, Finish, Recover, Redeliver
from receiver.store.postgres.database import REPLICA_LOCKS, TAKE_REPLICA_LOCK, replica_in_use
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

    The connection also holds the replica's lock (``pg_advisory_lock`` on ``REPLICA_LOCKS``
    and the replica id, waited for at most ``REPLICA_LOCK_WAIT_S``) for as long as the
    replica runs: two replicas
    under one id would take each other's claims back at start and run a delivery twice at
    once, so the second one does not start (:meth:`start` raises).

    When the connection is lost it connects again (with backoff), takes the lock again, and
    then calls ``on_due(0)`` once: what was notified meanwhile is unknown, so the dispatcher
    looks now.

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

    async def start(self) -> None:
        """Connect, take the replica's lock, ``LISTEN``; then listen in the background.

        Raises:
            ReplicaInUse: a running replica holds this replica id.
            StoreUnavailable: the server cannot be reached.
        """
        try:
            conn = await self._connect()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"Postgres: {exc}") from None
        if conn is None:
            raise replica_in_use(self._replica.replica_id)
        self._task = asyncio.create_task(self._run(conn), name="kling-hooks-listener")

    async def close(self) -> None:
        """Stop listening and close the connection (which releases the replica's lock)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _connect(self) -> psycopg.AsyncConnection[Any] | None:
        """A connection that holds the replica's lock and listens; None (closed) when
        another session holds the lock."""
        conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        limit, take, unlimit = TAKE_REPLICA_LOCK
        try:
            await conn.execute(limit)
            try:
                await conn.execute(take, (REPLICA_LOCKS, self._replica.replica_id))
            except psycopg.errors.LockNotAvailable:
                await conn.close()
                return None
            await conn.execute(unlimit)
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self, conn: psycopg.AsyncConnection[Any]) -> None:
        delay_s = RECONNECT_MIN_S
        while True:
            try:
                async for note in conn.notifies():
                    self._received(note.payload)
            except psycopg.Error as exc:
                log.warning("listen_connection_lost", error=str(exc))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            while True:  # connect again, with backoff
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                try:
                    got = await self._connect()
                except psycopg.Error as exc:
                    log.warning("listen_connect_failed", error=str(exc), retry_in_s=delay_s)
                    continue
                if got is None:  # it went to another process while we were away
                    log.error("replica_id_in_use", replica_id=self._replica.replica_id)
                    continue
                conn, delay_s = got, RECONNECT_MIN_S
                log.info("listen_reconnected")
                self._on_due(0)
                break

    def _received(self, payload: str) -> None:
        due, _, sender = payload.partition(" ")
        if sender == self._replica.replica_id or not due.isdigit():
            return
        self._on_due(int(due))
