"""A throwaway Postgres server for the tests, and a fresh database for each test.

``KLING_HOOKS_TEST_DATABASE_URL`` names a server to use (``.ci/run`` starts one and sets it:
``postgresql://postgres@127.0.0.1:PORT/postgres``, a role that may create databases). Unset,
the first test that needs Postgres starts one cluster for its pytest worker with Debian's
``initdb`` and ``pg_ctl`` (package ``postgresql``) in a temporary directory, as the
``postgres`` user when running as root, listening on 127.0.0.1 on a free port; it is stopped
when the worker ends. Each test gets a database of its own (``CREATE DATABASE``), dropped
after it.

Where there is no server and no ``initdb``, Postgres tests are skipped, except in CI
(``CI=true``), where they fail: no Postgres test is skipped in CI (issue 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

URL_VARIABLE = "KLING_HOOKS_TEST_DATABASE_URL"


def _pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with ``initdb`` (Debian's layout), else the
    folder of an ``initdb`` on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(command: list[str], *, check: bool = True) -> None:
    """Run a server command; its error output is in the exception when it fails."""
    subprocess.run(command, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def throwaway_cluster(bin_dir: Path) -> Iterator[str]:
    """Run a new cluster until the block ends; yields the URL of its ``postgres`` database.

    As root the cluster runs as the ``postgres`` user (Postgres refuses to run as root).
    ``fsync=off``: the cluster is thrown away, and the tests never cut its power.
    """
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="kling-hooks-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        _run([*initdb, "-A", "trust", "-E", "UTF8", "--no-sync"])
        port = _free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([*pg_ctl, "-l", str(folder / "log"), "-w", "-o", options, "start"])
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([*pg_ctl, "-m", "immediate", "stop"], check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a Postgres server's admin database (the environment's, or a throwaway
    cluster's); skips the test where there is none, or fails it in CI."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        message = f"no Postgres: set {URL_VARIABLE}, or install Debian's postgresql (initdb)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; in CI no Postgres test is skipped")
        pytest.skip(message)
    with throwaway_cluster(bin_dir) as url:
        yield url


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return _to_url(params)


def _to_url(params: dict[str, object]) -> str:
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{params['dbname']}"


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``admin_url``; yields its URL; drops it
    after (closing what is still connected to it)."""
    name = f"kh_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
        self.port = _free_port()
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
        for w in list(self._links):
            w.close()
        await self._server.wait_closed()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links -= {writer, up_writer}
