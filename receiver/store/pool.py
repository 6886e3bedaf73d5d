"""The status API's read connections: a few read-only SQLite connections, each used by one
thread at a time, so that a request's whole read is one hop off the event loop.

aiosqlite sends every call (execute, each fetch, each cursor close) to the connection's
thread and back: a read of five statements was fifteen hops, and one connection served the
requests one statement at a time. Here a read is one plain function of a
``sqlite3.Connection`` (every statement it needs, rows out), run on a pool thread with
:meth:`ReadPool.run`; ``size`` threads read at once (WAL lets each see its own committed
snapshot beside the writer), and SQLite releases the GIL while it steps a statement.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from receiver.errors import StoreUnavailable

T = TypeVar("T")

#: Read connections (and threads) of a receiver: two cores read while the loop serves.
DEFAULT_SIZE = 2


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
    """``size`` read-only connections to one database and as many threads to use them.

    Args:
        path: The SQLite file (it must exist; the writer makes it).
        size: Connections and threads, at least 1.
        busy_timeout_ms: How long a statement waits for another process's lock.

    Raises:
        ValueError: ``size`` is below 1.
        sqlite3.Error: a connection cannot be opened (none is left open then).
    """

    def __init__(self, path: Path, *, size: int = DEFAULT_SIZE, busy_timeout_ms: int = 5000):
        if size < 1:
            raise ValueError(f"size={size} is below 1 (read connections)")
        self.size = size
        self._free: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        try:
            for _ in range(size):
                self._all.append(connect_reader(path, busy_timeout_ms=busy_timeout_ms))
        except BaseException:
            self._close_connections()
            raise
        for conn in self._all:
            self._free.put(conn)
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="kling-hooks-reader")
        self._closed = False

    async def run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read(conn)`` on a pool thread with a connection of its own; its result.

        ``read`` should do all of one request's statements and return plain values (rows,
        text): it runs outside the event loop.

        Raises:
            StoreUnavailable: a ``sqlite3.Error`` from ``read``, or the pool is closed.
        """
        if self._closed:
            raise StoreUnavailable("the read connections are closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._threads, self._with_connection, read
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _with_connection(self, read: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._free.get()  # never waits: as many connections as threads
        try:
            return read(conn)
        finally:
            self._free.put(conn)

    async def close(self) -> None:
        """Let the reads under way finish, then close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._threads.shutdown)
        self._close_connections()

    def _close_connections(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
