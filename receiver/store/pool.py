"""The status API's read connections: a few read-only SQLite connections, each owned by a
thread of its own, so that a request's whole read is one hop off the event loop.

aiosqlite sends every call (execute, each fetch, each cursor close) to the connection's
thread and back: a read of five statements was fifteen hops, and one connection served the
requests one statement at a time. Here a read is one plain function of a
``sqlite3.Connection`` (every statement it needs, plain values out), run by
:meth:`ReadPool.run` on whichever pool thread is free; ``size`` threads read at once (WAL
lets each see its own committed snapshot beside the writer), and SQLite releases the GIL
while it steps a statement.

The threads take reads from one queue and hand each result back with
``loop.call_soon_threadsafe``, as aiosqlite's own thread does: a hop costs about 3 µs of CPU
under load, against about 15 µs through ``loop.run_in_executor`` and a
``ThreadPoolExecutor`` (bench/README.md, "status_api.py").
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from receiver.errors import StoreUnavailable

T = TypeVar("T")

#: Read connections (and threads) of a receiver: two cores read while the loop serves.
DEFAULT_SIZE = 2

#: A read waiting for a thread: the loop to answer on, the future, the function.
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[sqlite3.Connection], Any]]


def connect_reader(path: Path, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """One read-only connection to ``path``: autocommit (each statement reads one committed
    snapshot), ``PRAGMA query_only``, temporary B-trees (a GROUP BY's, a sort's) in memory,
    rows as ``sqlite3.Row``; usable from any one thread at a time.

    Raises:
        sqlite3.Error: the file cannot be opened.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")  # the writer's mode: a no-op, or makes it
        conn.execute("PRAGMA query_only = 1")
        conn.execute("PRAGMA temp_store = MEMORY")
    except BaseException:
        conn.close()
        raise
    return conn


class ReadPool:
    """``size`` read-only connections to one database, each with a thread that uses it.

    Args:
        path: The SQLite file (it must exist; the writer makes it).
        size: Connections and threads, at least 1.
        busy_timeout_ms: How long a statement waits for another process's lock.

    Raises:
        ValueError: ``size`` is below 1.
        sqlite3.Error: a connection cannot be opened (none is left open then).
    """

    def __init__(
        self, path: Path, *, size: int = DEFAULT_SIZE, busy_timeout_ms: int = 5000
    ) -> None:
        if size < 1:
            raise ValueError(f"size={size} is below 1 (read connections)")
        self.size = size
        conns: list[sqlite3.Connection] = []
        try:
            for _ in range(size):
                conns.append(connect_reader(path, busy_timeout_ms=busy_timeout_ms))
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(
                target=self._serve, args=(conn,), name=f"kling-hooks-reader-{n}", daemon=True
            )
            for n, conn in enumerate(conns)
        ]
        for thread in self._threads:
            thread.start()
        self._closed = False

    async def run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read(conn)`` on a pool thread, with that thread's connection; its result.

        ``read`` should do all of one request's statements and return plain values (rows,
        text): it runs outside the event loop.

        Raises:
            StoreUnavailable: a ``sqlite3.Error`` from ``read``, or the pool is closed.
        """
        if self._closed:
            raise StoreUnavailable("the read connections are closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, read))
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _serve(self, conn: sqlite3.Connection) -> None:
        """A pool thread: run reads until the stop sentinel (None), then close ``conn``."""
        try:
            while (job := self._jobs.get()) is not None:
                loop, future, read = job
                try:
                    result = read(conn)
                except BaseException as exc:  # handed to the awaiting task, as aiosqlite does
                    _answer(loop, future.set_exception, future, exc)
                else:
                    _answer(loop, future.set_result, future, result)
        finally:
            conn.close()

    async def close(self) -> None:
        """Let the reads already queued finish, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._join)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()


def _answer(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    """Settle ``future`` with ``value`` on its loop, unless it was cancelled meanwhile."""

    def settle_if_waiting() -> None:
        if not future.done():
            settle(value)

    try:
        loop.call_soon_threadsafe(settle_if_waiting)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass
