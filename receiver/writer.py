"""The single writer: one connection, one queue, group commit.

Every request that changes state (a callback, a registration) puts an operation on the queue
and awaits it. The writer takes everything queued at that moment (no fixed wait window: a
lone request is committed at once), applies the whole batch in one transaction, commits, and
only then resolves each request's future. If the commit fails, every request of the batch
gets :class:`~receiver.store.StoreUnavailable` and nothing of it was recorded, so nothing is
acknowledged that is not on disk. See the design notes for the measurements behind this.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from receiver import outbox, store
from receiver.outbox import OutboxOp, Router
from receiver.store import StoreUnavailable
from receiver.transitions import (
    Batch,
    IncomingCallback,
    Registration,
    TransitionRow,
    Verdict,
)

log = structlog.get_logger("kling_hooks.writer")

T = TypeVar("T")
Operation = IncomingCallback | Registration
CommitListener = Callable[[list[TransitionRow]], None]


def _no_plugins(task_status: str, route: str | None) -> list[str]:
    return []


@dataclass
class _Pending:
    op: Operation | OutboxOp[Any]
    future: asyncio.Future[Any]


class Writer:
    """Owns the write connection and commits queued operations in groups.

    Args:
        conn: A connection from :func:`receiver.store.connect`, migrated.
        router: Names the plugins that want a new transition; one outbox row is written for
            each, in the transition's transaction. Default: no plugins.
        max_batch: Most operations in one transaction.
    """

    def __init__(
        self, conn: aiosqlite.Connection, *, router: Router = _no_plugins, max_batch: int = 256
    ) -> None:
        self._conn = conn
        self._router = router
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[CommitListener] = []

    @classmethod
    async def open(
        cls, path: Path, *, busy_timeout_ms: int = 5000, router: Router = _no_plugins
    ) -> Writer:
        """Connect to ``path``, apply migrations, and return a writer (not yet started)."""
        conn = await store.connect(path, busy_timeout_ms=busy_timeout_ms)
        await store.migrate(conn)
        return cls(conn, router=router)

    @property
    def connection(self) -> aiosqlite.Connection:
        """The write connection (for start-up work such as reading ``meta``)."""
        return self._conn

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add_listener(self, listener: CommitListener) -> None:
        """Call ``listener(new_transitions)`` after every commit that recorded transitions.

        Listeners run on the event loop right after the commit; they must not block. This is
        the in-process signal the dispatcher (and the demo) waits on; nothing polls.
        """
        self._listeners.append(listener)

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        self._task = asyncio.create_task(self._run(), name="kling-hooks-writer")

    async def close(self) -> None:
        """Commit everything already queued, stop, and close the connection."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
        await self._conn.close()

    async def submit(self, op: Operation) -> Verdict:
        """Queue one operation and wait until its transaction has committed.

        Returns:
            The verdict of the operation.

        Raises:
            TaskConflict: the operation names two different tasks (nothing was stored).
            StoreUnavailable: the transaction did not commit (nothing was stored), or the
                writer is not running.
        """
        verdict: Verdict = await self._enqueue(op)
        return verdict

    async def execute(self, op: OutboxOp[T]) -> T:
        """Run an outbox operation in the next transaction; return its result once committed.

        Raises:
            StoreUnavailable: the transaction did not commit, or the writer is not running.
            Whatever ``op.run`` raises for that operation alone (e.g. DeliveryNotFound).
        """
        result: T = await self._enqueue(op)
        return result

    async def _enqueue(self, op: Operation | OutboxOp[Any]) -> Any:
        if not self.running:
            raise StoreUnavailable("the writer is not running")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            pending = [first]
            while len(pending) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                pending.append(item)
            await self._commit(pending)

    async def _commit(self, pending: list[_Pending]) -> None:
        results: list[Any] = []
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                batch = await self._load(pending)
                for p in pending:
                    if isinstance(p.op, OutboxOp):
                        results.append(await self._run_op(p.op))
                        continue
                    try:
                        results.append(_apply(batch, p.op))
                    except Exception as exc:  # TaskConflict: this operation only
                        results.append(exc)
                await store.write_batch(self._conn, batch)
                await outbox.insert_deliveries(
                    self._conn, batch.transitions, batch.tasks, self._router
                )
                await self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            log.error("commit_failed", error=str(exc), operations=len(pending))
            failure = StoreUnavailable(f"database could not commit: {exc}")
            for p in pending:
                if not p.future.done():
                    p.future.set_exception(failure)
            return
        for p, result in zip(pending, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
        if batch.transitions:
            for listener in self._listeners:
                try:
                    listener(batch.transitions)
                except Exception:
                    log.exception("commit_listener_failed")

    async def _run_op(self, op: OutboxOp[Any]) -> Any:
        """Run one outbox operation inside a savepoint: whatever it raises (a plugin's bad
        value, DeliveryNotFound) undoes its own writes and reaches its caller only, never the
        callbacks committed in the same transaction."""
        await self._conn.execute("SAVEPOINT outbox_op")
        try:
            result = await op.run(self._conn)
        except Exception as exc:
            await self._conn.execute("ROLLBACK TO outbox_op")
            await self._conn.execute("RELEASE outbox_op")
            return exc
        await self._conn.execute("RELEASE outbox_op")
        return result

    async def _load(self, pending: list[_Pending]) -> Batch:
        ops = [p.op for p in pending if not isinstance(p.op, OutboxOp)]
        task_ids = {
            op.task.task_id if isinstance(op, IncomingCallback) else op.task_id for op in ops
        }
        external_ids = {op.external_task_id for op in ops}
        return await store.load_batch(self._conn, task_ids, external_ids)


def _apply(batch: Batch, op: Operation | OutboxOp[Any]) -> Verdict:
    assert not isinstance(op, OutboxOp)
    if isinstance(op, IncomingCallback):
        return batch.apply_callback(op)
    return batch.apply_registration(op)
