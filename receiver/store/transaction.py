"""One group-commit transaction, and the protocol every write operation follows.

The writer (``receiver.writer``) opens a :class:`Transaction` for each batch of queued
operations, runs each operation's :meth:`WriteOp.run` against it, and commits once, all in one
call on the writer's own thread (one thread hop per batch; the operations are plain functions
on a ``sqlite3`` connection, and must not touch the event loop). Two kinds of operation follow
the one protocol:

* task operations (a callback, a registration: ``receiver.transitions``) name the task rows
  they touch in ``task_keys``; the transaction loads those rows once for the whole batch, the
  operations change them in memory, and :meth:`Transaction.commit` writes them in bulk;
* every other operation (the outbox's: ``receiver.store.deliveries``) writes at once through
  ``tx.conn``; :meth:`Transaction.run` runs each inside a savepoint of its own, so that one
  that fails undoes only its own writes, never the callbacks committed beside it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from receiver.store.batches import Router, load_batch, write_batch
from receiver.transitions import Batch, CallbackRow, TransitionRow

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class WriteOp(Protocol[T_co]):
    """An operation the writer runs inside its group-commit transaction."""

    @property
    def task_keys(self) -> tuple[str, str] | None:
        """``(task_id, external_task_id)`` of the task it changes, or None."""
        ...

    def run(self, tx: Transaction) -> T_co:
        """Do the operation's work in ``tx`` (on the writer's thread); what it returns reaches
        its caller once the transaction has committed, and what it raises reaches that caller
        only."""
        ...


@runtime_checkable
class ConnectionOp(Protocol[T_co]):
    """An operation the writer runs alone on its connection, outside any transaction, after
    committing what was queued before it; what was queued after it waits until it ends."""

    def run_alone(self, conn: sqlite3.Connection) -> T_co:
        """Do the work on the writer's connection, on its thread (autocommit mode, no
        transaction open)."""
        ...


class CommittedBatch(Protocol):
    """What the writer reads of a batch once its operations ran: its new transitions and
    the raw callbacks it stored (for the commit listeners)."""

    @property
    def transitions(self) -> list[TransitionRow]: ...

    @property
    def callbacks(self) -> list[CallbackRow]: ...


class OpenTransaction(Protocol):
    """One batch's transaction, as a backend opens it (:class:`~receiver.store.Transaction`
    for SQLite, :class:`~receiver.store.postgres.PgTransaction`)."""

    @property
    def batch(self) -> CommittedBatch:
        """``batch.transitions`` and ``batch.callbacks``, once the operations ran."""
        ...

    def run(self, op: WriteOp[T]) -> T:
        """Run one operation; what it raises is for it alone."""
        ...

    def commit(self) -> None:
        """Write what is left and commit; raises when the batch did not commit."""
        ...

    def rollback(self) -> None:
        """Undo the batch; never raises."""
        ...


#: ``begin(conn, ops, router)``: open one batch's transaction on the writer's connection
#: (:meth:`Transaction.begin`, ``PgTransaction.begin``).
Begin = Callable[[Any, Sequence[WriteOp[object]], Router], OpenTransaction]


class Transaction:
    """An open ``BEGIN IMMEDIATE`` transaction on the writer's connection (used on the
    writer's thread only).

    Attributes:
        conn: The connection (operations that write at once use it in :meth:`run`).
        batch: The task rows the batch's operations named, and what they changed.
    """

    def __init__(self, conn: sqlite3.Connection, batch: Batch, router: Router) -> None:
        self.conn = conn
        self.batch = batch
        self._router = router

    @classmethod
    def begin(
        cls, conn: sqlite3.Connection, ops: Sequence[WriteOp[object]], router: Router
    ) -> Transaction:
        """Begin, and load the task rows that ``ops`` name.

        Args:
            router: Names the plugins that want a new transition (one outbox row each).
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            keys = [k for op in ops if (k := op.task_keys) is not None]
            return cls(conn, load_batch(conn, keys), router)
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def run(self, op: WriteOp[T]) -> T:
        """Run one operation of the batch; what it raises is raised again for it alone.

        A task operation only changes :attr:`batch` (in memory, checked before any change); so
        does an operation whose ``one_statement`` is true (SQLite undoes a failing statement by
        itself); any other runs in a savepoint, so that its writes are undone if it raises.
        """
        if op.task_keys is not None or getattr(op, "one_statement", False):
            return op.run(self)
        with self._savepoint():
            return op.run(self)

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        self.conn.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK TO op")
            self.conn.execute("RELEASE op")
            raise
        self.conn.execute("RELEASE op")

    def commit(self) -> None:
        """Write the batch's changed rows and its outbox rows, then COMMIT."""
        write_batch(self.conn, self.batch, self._router)
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """ROLLBACK, ignoring a connection that is already broken."""
        with contextlib.suppress(Exception):
            self.conn.execute("ROLLBACK")
