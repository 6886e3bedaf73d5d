"""One group-commit transaction on Postgres, behind the writer's protocol
(``receiver.store.transaction``: :class:`~receiver.store.transaction.WriteOp`).

The writer (``receiver.writer``) runs a Postgres batch exactly as a SQLite one: on its own
thread, one call per batch, ``begin``, each operation's ``run``, one ``COMMIT``. The
difference is inside: task operations (callbacks, registrations) are decided by the database
at once (:class:`~receiver.store.postgres.records.Records`, this transaction's ``batch``),
not loaded and applied in memory, since other replicas write the same rows. Every operation
runs in a savepoint of its own, so that one that fails (a ``TaskConflict``, a value Postgres
cannot store) undoes only its own writes, never the batch it shares.

An operation whose SQL is SQLite's has Postgres statements only when it is listed in
:data:`POSTGRES_OPS`: the write probe, the outbox's claims, outcomes, recovery and replays
(``receiver.store.postgres.deliveries``, which lease each claim to the transaction's
:class:`~receiver.store.postgres.deliveries.Replica`), and retention's windows
(``receiver.store.postgres.retention``). Any other (SQLite's vacuum steps) fails alone with
``StoreUnavailable``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import psycopg

from receiver.errors import StoreUnavailable
from receiver.store.batches import Router
from receiver.store.postgres.database import WriterConnection
from receiver.store.postgres.deliveries import DELIVERY_OPS, Replica
from receiver.store.postgres.records import OP_SAVEPOINT, Records
from receiver.store.postgres.retention import prune_window
from receiver.store.postgres.wakeups import due_after, notify
from receiver.store.probe import PROBE_KEY, WriteProbe
from receiver.store.retention import PruneWindow
from receiver.store.transaction import Begin, WriteOp
from receiver.transitions import HasBatch

T = TypeVar("T")


def _probe(op: WriteProbe, conn: psycopg.Connection[Any], replica: Replica) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (PROBE_KEY, str(op.at_ms)),
    )


#: The first key of the task locks (``pg_advisory_xact_lock(int, int)``, a key space apart
#: from the migrations' one-bigint lock): the bytes of ``"khtk"``.
TASK_LOCKS = int.from_bytes(b"khtk", "big")

#: Operations with statements of their own on Postgres, by type: ``run(op, conn, replica)``.
POSTGRES_OPS: dict[type, Callable[[Any, psycopg.Connection[Any], Replica], Any]] = {
    WriteProbe: _probe,
    PruneWindow: prune_window,
    **DELIVERY_OPS,
}


class PgTransaction:
    """An open transaction on the writer's Postgres connection (the writer's thread only).

    Attributes:
        conn: The connection (autocommit mode; this class opens and ends the transaction).
        batch: Records the batch's callbacks and registrations; ``batch.transitions`` holds
            the new transitions once the operations ran.
        replica: Who claims the batch's deliveries, and for how long.
    """

    def __init__(self, conn: psycopg.Connection[Any], router: Router, replica: Replica) -> None:
        self.conn = conn
        self.batch = Records(conn, router)
        self.replica = replica
        self._due_at: int | None = None  # of the delivery operations; task ones: batch's

    @classmethod
    def opener(cls, replica: Replica) -> Begin:
        """``begin`` for the writer (``receiver.writer.Writer``'s ``begin``), with the
        batches' deliveries claimed as ``replica``."""
        return functools.partial(cls.begin, replica=replica)

    @classmethod
    def begin(
        cls,
        writer_conn: WriterConnection,
        ops: Sequence[WriteOp[object]],
        router: Router,
        *,
        replica: Replica,
    ) -> PgTransaction:
        """``BEGIN`` (READ COMMITTED: each statement sees what other replicas committed;
        the rank and the unique keys are compared under the row locks the writes take), then
        take the batch's task locks in one order.

        Two replicas' batches that touch the same tasks in different orders would otherwise
        deadlock on the tasks' rows and unique keys, and Postgres would fail one callback
        with it (Kling does not retry). So the batch first takes a transaction advisory lock
        per task it names (``pg_advisory_xact_lock(TASK_LOCKS, hashtext(task_id))``), in
        sorted task_id order, in one statement: every replica takes them in the same order,
        and a task's writes are serialised across replicas for the rest of the transaction.
        (Two task_ids with the same hash share a lock: they wait, no more.)

        A connection that was lost is replaced first (``WriterConnection.begin``), so the
        first batch after a server restart commits, rather than failing on the old one.

        Raises:
            StoreUnavailable: the server cannot be reached.
            psycopg.Error: ``BEGIN`` or the locks failed (the transaction is rolled back).
        """
        conn = writer_conn.begin()
        try:
            names = sorted({k[0] for op in ops if (k := op.task_keys) is not None})
            if names:
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(n))"
                    " FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i)",
                    (TASK_LOCKS, names),
                )
        except BaseException:
            cls(conn, router, replica).rollback()
            raise
        return cls(conn, router, replica)

    def run(self, op: WriteOp[T]) -> T:
        """Run one operation in a savepoint of its own; what it raises is raised again for
        it alone, its writes undone.

        Raises:
            StoreUnavailable: the operation has no Postgres statements yet.
        """
        self.conn.execute(f"SAVEPOINT {OP_SAVEPOINT}")
        # What the operation added to the batch's lists goes with its writes when it fails:
        # the commit listeners hear only of rows that were committed.
        kept = len(self.batch.transitions), len(self.batch.callbacks)
        kept_due = self.batch.outbox_due_at
        try:
            if op.task_keys is not None:
                result = cast(Callable[[HasBatch], T], op.run)(self)
            elif (own := POSTGRES_OPS.get(type(op))) is not None:
                result = own(op, self.conn, self.replica)
                if (due := due_after(op, result, self.replica)) is not None:
                    self._due_at = due if self._due_at is None else min(self._due_at, due)
            else:
                raise StoreUnavailable(f"{type(op).__name__} does not run on Postgres yet")
        except BaseException:
            del self.batch.transitions[kept[0] :], self.batch.callbacks[kept[1] :]
            self.batch.outbox_due_at = kept_due
            self.conn.execute(f"ROLLBACK TO {OP_SAVEPOINT}")
            self.conn.execute(f"RELEASE {OP_SAVEPOINT}")
            raise
        self.conn.execute(f"RELEASE {OP_SAVEPOINT}")
        return result

    def commit(self) -> None:
        """``COMMIT``, with the batch's one notification to the other replicas when it made
        a delivery actionable (``receiver.store.postgres.wakeups``); it returns once the
        server has flushed the WAL (``synchronous_commit = on``)."""
        due = [d for d in (self._due_at, self.batch.outbox_due_at) if d is not None]
        if due:
            notify(self.conn, min(due), self.replica)
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """``ROLLBACK``, ignoring a connection that is already broken."""
        try:
            self.conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
