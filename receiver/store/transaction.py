"""One group-commit transaction, and the protocol every write operation follows.

The writer (``receiver.writer``) opens a :class:`Transaction` for each batch of queued
operations, runs each operation's :meth:`WriteOp.run` against it, and commits once. Two kinds
of operation follow the one protocol:

* task operations (a callback, a registration: ``receiver.transitions``) name the task rows
  they touch in ``task_keys``; the transaction loads those rows once for the whole batch, the
  operations change them in memory, and :meth:`Transaction.commit` writes them in bulk;
* every other operation (the outbox's: ``receiver.store.deliveries``) writes at once through
  ``tx.conn``; :meth:`Transaction.run` runs each inside a savepoint of its own, so that one
  that fails undoes only its own writes, never the callbacks committed beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import aiosqlite

from receiver.store.batches import Router, load_batch, write_batch
from receiver.transitions import Batch

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class WriteOp(Protocol[T_co]):
    """An operation the writer runs inside its group-commit transaction."""

    @property
    def task_keys(self) -> tuple[str, str] | None:
        """``(task_id, external_task_id)`` of the task it changes, or None."""
        ...

    async def run(self, tx: Transaction) -> T_co:
        """Do the operation's work in ``tx``; what it returns reaches its caller once the
        transaction has committed, and what it raises reaches that caller only."""
        ...


@runtime_checkable
class ConnectionOp(Protocol[T_co]):
    """An operation the writer runs alone on its connection, outside any transaction, after
    committing what was queued before it; what was queued after it waits until it ends."""

    async def run_alone(self, conn: aiosqlite.Connection) -> T_co:
        """Do the work on the writer's connection (autocommit mode, no transaction open)."""
        ...


class Transaction:
    """An open ``BEGIN IMMEDIATE`` transaction on the writer's connection.

    Attributes:
        conn: The connection (operations that write at once use it in :meth:`savepoint`).
        batch: The task rows the batch's operations named, and what they changed.
    """

    def __init__(self, conn: aiosqlite.Connection, batch: Batch, router: Router) -> None:
        self.conn = conn
        self.batch = batch
        self._router = router

    @classmethod
    async def begin(
        cls, conn: aiosqlite.Connection, ops: Sequence[WriteOp[object]], router: Router
    ) -> Transaction:
        """Begin, and load the task rows that ``ops`` name.

        Args:
            router: Names the plugins that want a new transition (one outbox row each).
        """
        await conn.execute("BEGIN IMMEDIATE")
        try:
            keys = [k for op in ops if (k := op.task_keys) is not None]
            return cls(conn, await load_batch(conn, keys), router)
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def run(self, op: WriteOp[T]) -> T:
        """Run one operation of the batch; what it raises is raised again for it alone.

        A task operation only changes :attr:`batch` (in memory, checked before any change); any
        other runs in a savepoint, so that its writes are undone if it raises.
        """
        if op.task_keys is not None:
            return await op.run(self)
        async with self._savepoint():
            return await op.run(self)

    @contextlib.asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[None]:
        await self.conn.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            await self.conn.execute("ROLLBACK TO op")
            await self.conn.execute("RELEASE op")
            raise
        await self.conn.execute("RELEASE op")

    async def commit(self) -> None:
        """Write the batch's changed rows and its outbox rows, then COMMIT."""
        await write_batch(self.conn, self.batch, self._router)
        await self.conn.execute("COMMIT")

    async def rollback(self) -> None:
        """ROLLBACK, ignoring a connection that is already broken."""
        with contextlib.suppress(Exception):
            await self.conn.execute("ROLLBACK")
