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
  a receiver starts while Postgres is down, and its reads fail until it is up.

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
    """

    def __init__(self, pool: AsyncConnectionPool[PgAsyncConnection]) -> None:
        self._pool = pool
        self.size = pool.max_size

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
        pool = AsyncConnectionPool(
            url,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s))},
            min_size=size,
            max_size=size,
            timeout=timeout_s,
            check=AsyncConnectionPool.check_connection,
            name="kling-hooks-reads",
            open=False,
        )
        await pool.open(wait=False)
        return cls(pool)

    async def run(self, read: Callable[[PgAsyncConnection], Awaitable[T]]) -> T:
        """``await read(conn)`` on a connection of the pool; its result.

        Raises:
            StoreUnavailable: no connection within ``timeout_s`` (the server is unreachable,
                or every connection stayed busy), a ``psycopg.Error`` from ``read``, or the
                pool is closed.
        """
        try:
            async with self._pool.connection() as conn:
                return await read(conn)
        except PoolTimeout as exc:
            raise StoreUnavailable(
                f"no Postgres read connection within {self._pool.timeout} s: {exc}"
            ) from exc
        except psycopg.Error as exc:  # PoolClosed is one too
            raise StoreUnavailable(str(exc)) from exc

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
