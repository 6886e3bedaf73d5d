"""The single writer: one connection, one thread, group commit.

Every request that changes state (a callback, a registration, a delivery's claim or outcome)
submits a :class:`~receiver.store.WriteOp` and awaits it. What one turn of the event loop
submitted is handed to the writer's own thread as one list, at the end of that turn. The
thread owns a plain ``sqlite3`` connection; it takes everything handed over so far (no fixed
wait window: a lone request is committed at once), runs the whole batch as one transaction
(begin, load, apply, write, commit) in one call, hands the outcome back to the event loop,
and starts on what arrived meanwhile at once. The loop resolves each request's future only
after the commit. So a batch is what arrived during the last commit; there is one thread hop
per batch, not one per statement, and the next commit never waits for the loop to deliver the
last one's answers (bench/README.md has the figures). If the commit fails, every request of
the batch gets :class:`~receiver.errors.StoreUnavailable` and nothing of it was recorded, so
nothing is acknowledged that is not on disk. DESIGN.md gives the measurements behind group
commit. A :class:`~receiver.store.ConnectionOp` (``VACUUM``) ends the batch before it and
runs alone.

A ``sqlite3.Error`` never reaches a caller raw: whether the commit failed, one operation's own
statement failed (its savepoint is undone), or a connection op failed (``VACUUM`` on a full
disk), the caller gets :class:`~receiver.errors.StoreUnavailable` (the HTTP edge answers 503
with ``Retry-After``), and the writer goes on with the next operation.

The writer remembers whether its last commit succeeded; :meth:`Writer.writable` is what
``GET /readyz`` asks. While callbacks keep coming, their own commits are the evidence: no
probe runs. Only when the last commit failed and the writer has then tried none for
``probe_interval_s`` does it run one small write probe (:class:`~receiver.store.WriteProbe`),
shared by everyone asking: an unauthenticated readiness check cannot become a stream of
writes (one a second at most, and none while the database is healthy), and a receiver nobody
sends callbacks to still turns ready once the disk can be written again. (A probe is one page;
on a nearly full disk it can succeed where a batch of callbacks would not. That is why, under
load, the callbacks' commits decide.)
"""

from __future__ import annotations

import asyncio
import collections
import queue
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog

from receiver import store
from receiver.errors import StoreUnavailable
from receiver.pending import Pending, for_caller
from receiver.store import ConnectionOp, Router, Transaction, WriteOp, WriteProbe
from receiver.store.transaction import Begin, CommittedBatch
from receiver.transitions import CallbackRow, TransitionRow

if TYPE_CHECKING:  # psycopg is loaded for Postgres only
    from receiver.store.postgres import Replica, WriterConnection

log = structlog.get_logger("kling_hooks.writer")

T = TypeVar("T")
C = TypeVar("C")
CommitListener = Callable[[list[TransitionRow]], None]
CallbackListener = Callable[[list[CallbackRow]], None]  # every raw callback a commit stored


def _log_alone_failed(exc: Exception, op: str) -> None:
    log.error("connection_op_failed", error=str(exc), op=op)


def _no_plugins(task_status: str, route: str | None) -> list[str]:
    return []


async def _on_own_thread(connect: Callable[[], C]) -> tuple[C, ThreadPoolExecutor]:
    """``connect()`` run on a new one-thread executor, which then owns the connection."""
    thread = ThreadPoolExecutor(1, thread_name_prefix="kling-hooks-writer")
    try:
        return await asyncio.get_running_loop().run_in_executor(thread, connect), thread
    except BaseException:
        thread.shutdown(wait=False)
        raise


class Writer:
    """Owns the write connection and commits queued operations in groups.

    Build it with :meth:`open`.

    Args:
        conn: A migrated connection (:func:`receiver.store.connect_writer`; Postgres's, with
            ``begin=PgTransaction.opener(replica)``), opened on ``thread``'s one thread.
        thread: A one-thread executor that owns ``conn``; the writer shuts it down.
        router: Names the plugins that want a new transition; one outbox row is written for
            each, in the transition's transaction. Default: no plugins.
        max_batch: Most operations in one transaction.
        probe_interval_s: Least time between two write probes of :meth:`writable`, seconds.
        clock_s: A monotonic clock, seconds (when the last probe ran).
        begin: Opens a batch's transaction on ``conn``: SQLite's by default.
    """

    def __init__(
        self,
        conn: sqlite3.Connection | WriterConnection,
        thread: ThreadPoolExecutor,
        *,
        begin: Begin = Transaction.begin,
        router: Router = _no_plugins,
        max_batch: int = 256,
        probe_interval_s: float = 1.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._begin = begin
        self._thread = thread
        self._router = router
        self._max_batch = max_batch
        self._probe_interval_s = probe_interval_s
        self._clock_s = clock_s
        self._last_commit_ok = True
        self._probe: asyncio.Future[bool] | None = None
        self._last_attempt_s = clock_s()
        # Filled on the event loop, emptied on the writer's thread (which blocks on it when
        # there is nothing to do: no polling); None asks the thread to stop.
        self._inbox: queue.SimpleQueue[list[Pending] | None] = queue.SimpleQueue()
        # What this turn of the event loop submitted: handed over as one list at its end.
        self._outgoing: list[Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[None] | None = None
        self._listeners: list[CommitListener] = []
        self._callback_listeners: list[CallbackListener] = []
        self._stopping = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        router: Router = _no_plugins,
        probe_interval_s: float = 1.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> Writer:
        """Apply migrations to ``path``, open the writer's connection on its own thread, and
        return a writer (not yet started). Arguments as the class's.

        Raises:
            SchemaTooNew, sqlite3.Error: from the migrations or the connection.
        """
        migrating = await store.connect(path, busy_timeout_ms=busy_timeout_ms)
        try:
            await store.migrate(migrating)
        finally:
            await migrating.close()
        conn, thread = await _on_own_thread(
            lambda: store.connect_writer(path, busy_timeout_ms=busy_timeout_ms)
        )
        return cls(conn, thread, router=router, probe_interval_s=probe_interval_s, clock_s=clock_s)

    @classmethod
    async def open_postgres(
        cls,
        url: str,
        *,
        replica: Replica | None = None,
        router: Router = _no_plugins,
        probe_interval_s: float = 1.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> Writer:
        """Connect to the Postgres database ``url`` on the writer's own thread, apply its
        migrations (under their advisory lock: replicas starting together migrate once), and
        return a writer (not yet started) whose batches, ``PgTransaction``, claim deliveries
        as ``replica`` (default: ``Replica()``, ``receiver.store.postgres``). Others as above.

        Raises:
            SchemaTooNew, psycopg.Error: from the migrations or the connection.
        """
        from receiver.store import postgres  # psycopg is loaded for Postgres only

        conn, thread = await _on_own_thread(lambda: postgres.connect_writer(url))
        return cls(
            conn,
            thread,
            begin=postgres.PgTransaction.opener(replica or postgres.Replica()),
            router=router,
            probe_interval_s=probe_interval_s,
            clock_s=clock_s,
        )

    @property
    def running(self) -> bool:
        """Whether the writer task runs (operations can be submitted)."""
        return self._task is not None and not self._task.done()

    @property
    def stopping(self) -> bool:
        """Whether a stop has begun (:meth:`request_stop`, or :meth:`close`). The writer still
        commits what it is given until it is closed; work made of many operations (a prune)
        ends at its next pause, so that the receiver's stop does not wait for all of it."""
        return self._stopping

    def request_stop(self) -> None:
        """Say that the receiver is stopping (the server calls it when a stop begins, before
        it waits for the requests in progress): :attr:`stopping` becomes True. Idempotent."""
        self._stopping = True

    @property
    def last_commit_ok(self) -> bool:
        """Whether the last transaction committed (True before the first one)."""
        return self._last_commit_ok

    async def writable(self) -> bool:
        """Whether the database takes writes now: True while the last commit succeeded.
        After a failed one: False, unless no commit was tried for ``probe_interval_s``; then
        one write probe runs (callers meanwhile share it) and its outcome is the answer.

        Returns:
            False when the last commit failed and nothing committed since (or the writer is
            not running); never raises.
        """
        if self._last_commit_ok:
            return self.running
        if self._probe is None or self._probe.done():
            now_s = self._clock_s()
            if now_s - self._last_attempt_s < self._probe_interval_s:
                return False
            self._probe = asyncio.ensure_future(self._run_probe(int(now_s * 1000)))
        # shielded: a readiness request that goes away does not cancel the shared probe
        return await asyncio.shield(self._probe)

    async def _run_probe(self, at_ms: int) -> bool:
        try:
            await self.submit(WriteProbe(at_ms))
        except StoreUnavailable:
            return False
        return True

    def add_listener(self, listener: CommitListener) -> None:
        """Call ``listener(new_transitions)`` after every commit that recorded transitions.

        Listeners run on the event loop right after the commit; they must not block. This is
        the in-process signal the dispatcher (and the demo) waits on; nothing polls.
        """
        self._listeners.append(listener)

    def add_callback_listener(self, listener: CallbackListener) -> None:
        """Call ``listener(callbacks)`` after every commit that stored raw callbacks (new,
        duplicate or stale: a duplicate changes a task's callback counts, and no transition),
        on the event loop, as :meth:`add_listener`'s."""
        self._callback_listeners.append(listener)

    def start(self) -> None:
        """Start the writer's thread; its results come back to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.run_in_executor(self._thread, self._serve)

    async def close(self) -> None:
        """Commit everything already queued, stop, and close the connection."""
        self._stopping = True
        if self._task is not None:
            self._hand_over()
            self._inbox.put(None)
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._thread, self._conn.close)
        self._thread.shutdown(wait=False)

    async def submit(self, op: WriteOp[T] | ConnectionOp[T]) -> T:
        """Queue one operation and wait until its transaction has committed (a
        :class:`~receiver.store.ConnectionOp`: until it has run, alone).

        Returns:
            What the operation returned (a :class:`~receiver.models.Verdict` for a callback
            or a registration).

        Raises:
            StoreUnavailable: the transaction did not commit (nothing was stored), the
                operation's own SQL failed (a ``sqlite3.Error``; its changes were undone), or
                the writer is not running.
            Whatever else the operation raised, for it alone (TaskConflict,
                DeliveryNotFound...).
        """
        if not self.running:
            raise StoreUnavailable("the writer is not running")
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        if not self._outgoing:  # the first of this turn: hand them all over after it
            self._loop.call_soon(self._hand_over)
        self._outgoing.append(Pending(op, future))
        return await future

    def _hand_over(self) -> None:
        """Give the writer's thread what was submitted since the last hand-over, as one list
        (called once per turn of the event loop that submitted anything: the requests that
        the loop handled together reach the thread together)."""
        if self._outgoing:
            self._inbox.put(self._outgoing)
            self._outgoing = []

    def _serve(self) -> None:
        """The writer's thread: take everything handed over, run it as one transaction (at
        most ``max_batch`` operations), hand the outcome back to the event loop, and start on
        what came meanwhile at once (the next transaction never waits for the loop to deliver
        the last one's answers). A ConnectionOp ends the batch before it and runs alone."""
        backlog: collections.deque[Pending] = collections.deque()
        stopping = False
        while backlog or not stopping:
            if not backlog:
                got = self._inbox.get()  # blocks: nothing to do
                if got is None:
                    break
                backlog.extend(got)
            while not stopping:  # and whatever else is there
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    backlog.extend(more)
            if backlog[0].alone:
                self._run_alone(backlog.popleft())
                continue
            pending: list[Pending] = []
            while backlog and not backlog[0].alone and len(pending) < self._max_batch:
                pending.append(backlog.popleft())
            self._commit(pending)

    def _answer(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the writer's thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback, *args)

    def _run_alone(self, p: Pending) -> None:
        op = cast(ConnectionOp[Any], p.op)
        try:
            p.result = op.run_alone(cast(sqlite3.Connection, self._conn))
        except Exception as exc:
            p.error = for_caller(exc)
            self._answer(_log_alone_failed, exc, type(op).__name__)
        self._answer(p.resolve)

    def _commit(self, pending: list[Pending]) -> None:
        self._last_attempt_s = self._clock_s()
        # A batch holds no ConnectionOp (_serve ends it before one); zip checks that.
        ops = [cast(WriteOp[Any], p.op) for p in pending if not p.alone]
        try:
            outcomes, batch = self._transaction(ops)
        except Exception as exc:
            self._answer(self._failed, pending, exc)
            return
        for p, (result, error) in zip(pending, outcomes, strict=True):
            p.result, p.error = result, error
        self._answer(self._committed, pending, batch)

    def _committed(self, pending: list[Pending], batch: CommittedBatch) -> None:
        """On the event loop: a batch committed; answer its callers, then the listeners."""
        self._last_commit_ok = True
        for p in pending:
            p.resolve()
        self._notify(self._listeners, batch.transitions)
        self._notify(self._callback_listeners, batch.callbacks)

    def _failed(self, pending: list[Pending], exc: Exception) -> None:
        """On the event loop: a batch did not commit; nothing of it was stored."""
        self._last_commit_ok = False
        log.error("commit_failed", error=str(exc), operations=len(pending))
        failure = StoreUnavailable(f"database could not commit: {exc}")
        for p in pending:
            p.result, p.error = None, failure
            p.resolve()

    def _transaction(
        self, ops: Sequence[WriteOp[Any]]
    ) -> tuple[list[tuple[Any, Exception | None]], CommittedBatch]:
        """One batch's whole transaction, on the writer's thread: ``(result, error)`` of each
        operation in order, and the batch (its new transitions and raw callbacks). Raises
        when the batch did not commit (it was rolled back)."""
        tx = self._begin(self._conn, ops, self._router)
        outcomes: list[tuple[Any, Exception | None]] = []
        try:
            for op in ops:
                try:
                    outcomes.append((tx.run(op), None))
                except Exception as exc:  # this operation's own failure
                    outcomes.append((None, for_caller(exc)))
            tx.commit()
        except BaseException:
            tx.rollback()
            raise
        return outcomes, tx.batch

    @staticmethod
    def _notify(listeners: Sequence[Callable[[list[Any]], None]], rows: list[Any]) -> None:
        if not rows:
            return
        for listener in listeners:
            try:
                listener(rows)
            except Exception:
                log.exception("commit_listener_failed")
