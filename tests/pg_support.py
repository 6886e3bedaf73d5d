"""A throwaway Postgres server for the tests, and a fresh database for each test.

``KLING_HOOKS_TEST_DATABASE_URL`` names a server to use (``.ci/run`` starts one and sets it:
``postgresql://postgres@127.0.0.1:PORT/postgres``, a role that may create databases). Unset,
the first test that needs Postgres starts one cluster for its pytest worker
(:func:`bench.postgres.throwaway_cluster`, ``fsync=off``: Debian's ``initdb`` and ``pg_ctl`` in
a temporary directory, on 127.0.0.1); it is stopped when the worker ends. Each test gets a
database of its own (``CREATE DATABASE``), dropped after it.

Where there is no server and no ``initdb``, Postgres tests are skipped, except in CI
(``CI=true``), where they fail: no Postgres test is skipped in CI (issue 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bench.postgres import fresh_database, pg_bin, throwaway_cluster, with_database
from bench.processes import free_port

__all__ = ["URL_VARIABLE", "fresh_database", "server", "with_database"]

URL_VARIABLE = "KLING_HOOKS_TEST_DATABASE_URL"


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a Postgres server's admin database (the environment's, or a throwaway
    cluster's); skips the test where there is none, or fails it in CI."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    bin_dir = pg_bin()
    if bin_dir is None:
        message = f"no Postgres: set {URL_VARIABLE}, or install Debian's postgresql (initdb)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; in CI no Postgres test is skipped")
        pytest.skip(message)
    with throwaway_cluster(bin_dir) as url:
        yield url


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by index and by column name, as ``sqlite3.Row`` is."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def execute(url: str, sql: str, *args: Any) -> None:
    """Run one statement (``%s`` marks) on the database ``url``, and commit."""
    with psycopg.connect(url) as conn:
        conn.execute(sql, args or None)  # no arguments: a % in the SQL is a plain %


def rows(url: str, sql: str, *args: Any) -> list[Row]:
    """The rows of one query (``%s`` marks) on the database ``url``, as :class:`Row`."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(sql, args or None)  # no arguments: a % in the SQL is a plain %
        names = tuple(c.name for c in cur.description or ())
        out = []
        for values in cur.fetchall():
            row = Row(values)
            row._names = names
            out.append(row)
        return out


class Gate:
    """A TCP forwarder on 127.0.0.1 in front of the Postgres server of ``url``: while open it
    forwards each connection; :meth:`shut` stops listening and cuts every connection (the
    server is away, as when it restarts); :meth:`open` listens again on the same port."""

    def __init__(self, url: str) -> None:
        params = psycopg.conninfo.conninfo_to_dict(url)
        self._target = (str(params["host"]), int(params["port"] or 5432))
        self.port = free_port()
        self.url = url.replace(f":{self._target[1]}/", f":{self.port}/")
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._link, "127.0.0.1", self.port, reuse_address=True
        )

    async def shut(self) -> None:
        assert self._server is not None
        self._server.close()
        links, self._links = list(self._links), set()
        for w in links:
            w.close()
        for w in links:  # every socket closed before the gate says it is shut
            with contextlib.suppress(ConnectionError, OSError):
                await w.wait_closed()
        await self._server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._links.add(writer)  # closed by shut() even while the upstream connects
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            self._links.discard(writer)
            return
        self._links.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}
