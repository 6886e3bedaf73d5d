"""The status API's read connections on Postgres: a ``psycopg_pool.AsyncConnectionPool`` of
async connections, so that a read runs on the event loop with no thread hop (psycopg's async
connections wait on the socket, not on a thread).

What a read meets when the database is away:

* every read is :meth:`PgReadPool.run`: a psycopg error inside it, and a pool that has no
  connection to give within ``timeout_s`` (the server is down, or every connection is busy),
  become :class:`~receiver.errors.StoreUnavailable`. Nothing of psycopg leaks to the caller,
  and no request waits longer than ``timeout_s`` for a connection;
* a connection is checked (``AsyncConnectionPool.check_connection``, one empty round trip)
  before it is handed out, so one the server dropped (a restart) is replaced, not used;
* the pool reconnects by itself, in the background, with backoff: when the server is back,
  reads succeed again without a restart. Opening the pool never waits for the server either:
  a receiver starts while Postgres is down, and its reads fail until it is up. The backoff
  doubles (1 s, 2 s, 4 s...), so after a long outage the pool might wait about as long again
  before its next attempt: a read that finds no connection within ``timeout_s``, while fewer
  than ``size`` reads hold one (the pool has lost connections, not lent them all), tries one
  connection of its own, and when that connects (the server is back) it is served on it, and
  a new pool, connecting at once, replaces the one that was backing off.

Every connection is in autocommit mode: each statement reads what was committed when it began
(READ COMMITTED), as the SQLite read connections do; a read that needs one snapshot for
several statements sends them in one ``REPEATABLE READ`` transaction
(:meth:`PgReadPool.snapshot`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from receiver.errors import StoreUnavailable

T = TypeVar("T")

#: An async connection of the pool; its rows are tuples.
PgAsyncConnection = psycopg.AsyncConnection[TupleRow]

#: A statement and its arguments (a sequence for ``%s`` marks, a mapping for ``%(name)s``).
Query = tuple[str, Sequence[Any] | Mapping[str, Any]]

#: Read connections of a receiver, unless its setting says otherwise.
DEFAULT_SIZE = 4
#: The longest a read waits for a connection, seconds, before it is ``StoreUnavailable``.
DEFAULT_TIMEOUT_S = 3.0


class PgReadPool:
    """``size`` read connections to one Postgres database (open with :meth:`open`).

    Args:
        pool: An opened ``AsyncConnectionPool`` (what :meth:`open` makes).
        url: Its database's URL.
    """

    def __init__(self, pool: AsyncConnectionPool[PgAsyncConnection], url: str) -> None:
        self._pool = pool
        self._url = url
        self.size = pool.max_size
        self._renewed: set[AsyncConnectionPool[PgAsyncConnection]] = set()
        self._busy = 0  # reads holding a connection of the pool now

    @classmethod
    async def open(
        cls, url: str, *, size: int = DEFAULT_SIZE, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> PgReadPool:
        """A pool of ``size`` connections to ``url``, opening in the background (this does
        not wait for the server, nor fail when it is down).

        Args:
            url: A ``postgresql://`` URL.
            size: Connections, at least 1 (kept open, and the most at once).
            timeout_s: How long a read waits for a connection, seconds; also each connection
                attempt's ``connect_timeout`` (whole seconds, at least 1).

        Raises:
            ValueError: ``size`` is below 1, or ``timeout_s`` is not positive.
        """
        if size < 1:
            raise ValueError(f"size={size} is below 1 (Postgres read connections)")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} is not positive (Postgres reads)")
        pool = _new_pool(url, size, timeout_s)
        await pool.open(wait=False)
        return cls(pool, url)

    async def run(self, read: Callable[[PgAsyncConnection], Awaitable[T]]) -> T:
        """``await read(conn)`` on a connection of the pool; its result.

        Raises:
            StoreUnavailable: no connection within ``timeout_s`` (the server is unreachable,
                or every connection stayed busy), a ``psycopg.Error`` from ``read``, or the
                pool is closed.
        """
        pool = self._pool
        try:
            async with pool.connection() as conn:
                self._busy += 1
                try:
                    return await read(conn)
                finally:
                    self._busy -= 1
        except PoolTimeout as exc:
            if self._busy >= pool.max_size:  # every connection is at work: no outage
                raise StoreUnavailable(
                    f"no Postgres read connection within {pool.timeout} s: {exc}"
                ) from exc
            late = exc
        except psycopg.Error as exc:  # PoolClosed is one too
            raise StoreUnavailable(str(exc)) from exc
        return await self._run_alone(pool, read, late)

    async def _run_alone(
        self,
        pool: AsyncConnectionPool[PgAsyncConnection],
        read: Callable[[PgAsyncConnection], Awaitable[T]],
        late: PoolTimeout,
    ) -> T:
        """``pool`` gave no connection in time though some were not at work (so it has lost
        them: the server was away): ``read`` on a connection of its own. When that connects,
        the server is back while ``pool`` may be backing off: a new pool replaces it (once
        per pool, whatever the reads that find it so).

        Raises:
            StoreUnavailable: the connection failed too, or ``read`` did.
        """
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **_kwargs(pool.timeout))
        except psycopg.Error:
            raise StoreUnavailable(
                f"no Postgres read connection within {pool.timeout} s: {late}"
            ) from late
        try:
            async with conn:
                result = await read(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        if pool is self._pool and pool not in self._renewed:
            self._renewed.add(pool)
            fresh = _new_pool(self._url, pool.max_size, pool.timeout)
            await fresh.open(wait=False)
            self._pool = fresh
            await pool.close(timeout=0)
        return result

    async def snapshot(self, statements: Mapping[str, Query]) -> dict[str, list[dict[str, Any]]]:
        """Run every ``(sql, args)`` of ``statements`` in one ``REPEATABLE READ, READ ONLY``
        transaction (one committed snapshot: ``GET /tasks/{id}`` reads five tables), sent in
        one pipeline (``BEGIN``, the statements, ``COMMIT``: one round trip).

        Returns:
            Each statement's rows as ``{column: value}``, by the statement's name.

        Raises:
            StoreUnavailable: as :meth:`run`.
        """

        async def read(conn: PgAsyncConnection) -> dict[str, list[dict[str, Any]]]:
            async with conn.pipeline():
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursors = {}
                for name, (sql, args) in statements.items():
                    cursors[name] = cur = conn.cursor(row_factory=dict_row)
                    await cur.execute(sql, args)
                await conn.execute("COMMIT")
                return {name: await cur.fetchall() for name, cur in cursors.items()}

        return await self.run(read)

    async def close(self) -> None:
        """Close every connection (reads in flight finish first). Idempotent."""
        await self._pool.close()


def _kwargs(timeout_s: float) -> dict[str, Any]:
    """A read connection's options: autocommit, and ``connect_timeout`` (whole seconds)."""
    return {"autocommit": True, "connect_timeout": max(1, round(timeout_s))}


def _new_pool(url: str, size: int, timeout_s: float) -> AsyncConnectionPool[PgAsyncConnection]:
    """A pool of ``size`` autocommit connections to ``url``, checked before each use, not
    opened yet (arguments as :meth:`PgReadPool.open`'s)."""
    return AsyncConnectionPool(
        url,
        kwargs=_kwargs(timeout_s),
        min_size=size,
        max_size=size,
        timeout=timeout_s,
        check=AsyncConnectionPool.check_connection,
        name="kling-hooks-reads",
        open=False,
    )
