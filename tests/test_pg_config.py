"""``KLING_HOOKS_DATABASE_URL``: a Postgres URL is checked at start-up; unset, SQLite is the
store as before."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from receiver.config import ConfigError, load_settings
from tests import pg_support
from tests.conftest import KLING_HOOKS, make_settings, postgres_url, start_receiver, task_body


def test_unset_database_url_keeps_sqlite_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLING_HOOKS_DATABASE_URL", raising=False)
    settings = load_settings()
    assert settings.kling_hooks_database_url is None
    assert settings.kling_hooks_db == Path("kling-hooks.db")


def test_postgres_url_is_read_as_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://hooks:pw@db.internal:5433/kling_hooks?sslmode=require"
    monkeypatch.setenv("KLING_HOOKS_DATABASE_URL", url)
    value = load_settings().kling_hooks_database_url
    assert isinstance(value, SecretStr) and value.get_secret_value() == url
    assert "pw" not in repr(load_settings())


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("mysql://hooks:pw@db/kling", "is not a postgresql:// URL"),
        ("sqlite:kling-hooks.db", "is not a postgresql:// URL"),
        ("postgresql://hooks:pw@db:five/kling", "has port 'five'"),
        ("postgresql://hooks:pw@db:5432", "names no database"),
        ("postgresql://db/kling?nosuchparam=1", "not a connection URL libpq can read"),
    ],
)
def test_bad_database_url_names_the_variable_and_masks_the_password(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    monkeypatch.setenv("KLING_HOOKS_DATABASE_URL", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("bad setting: KLING_HOOKS_DATABASE_URL: ")
    assert says in message
    assert ":pw@" not in message


async def serve_on(tmp_path: Path, url: str) -> tuple[int | None, str]:
    """``kling-hooks serve`` in ``tmp_path`` with ``KLING_HOOKS_DATABASE_URL=url`` (and no
    other ``KLING_`` variable): its exit code and stderr, once it ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env["KLING_HOOKS_DATABASE_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS), "serve", "--port", "0", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    return proc.returncode, err.decode()


async def test_serve_with_a_bad_database_url_stops_with_one_line(tmp_path: Path) -> None:
    code, err = await serve_on(tmp_path, "postgres://hooks:hunter2@db:5432")
    assert code == 2
    assert err.splitlines() == [
        "error: bad setting: KLING_HOOKS_DATABASE_URL: 'postgres://hooks:***@db:5432'"
        " names no database: end it with /DBNAME"
    ]
    assert not (tmp_path / "kling-hooks.db").exists()


async def test_serve_on_an_unreachable_postgres_stops_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, err = await serve_on(tmp_path, f"postgresql://hooks:hunter2@127.0.0.1:{port}/kh")
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("error: Postgres: connection failed: ")
    assert f'"127.0.0.1", port {port} failed: Connection refused' in line
    assert "hunter2" not in err
    assert not (tmp_path / "kling-hooks.db").exists()  # no SQLite file made instead


def test_a_sqlite_receiver_never_loads_psycopg() -> None:
    # psycopg and libpq cost about 9 MiB of RSS: only the Postgres backend imports them.
    code = (
        "import sys, receiver.app, receiver.cli, receiver.config, receiver.writer\n"
        "receiver.config.Settings(kling_hooks_database_url=None)\n"
        "sys.exit('psycopg' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_db_on_the_command_line_wins_over_the_database_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # nothing listens there: Postgres is not asked
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env["KLING_HOOKS_DATABASE_URL"] = f"postgresql://hooks@127.0.0.1:{port}/kh"
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS), "token", "--db", str(tmp_path / "given.db"), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().startswith(f"error: no database at {tmp_path / 'given.db'}")


@pytest.mark.both_backends
async def test_the_postgres_run_of_a_both_backends_test_is_on_postgres(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The guard of the mechanism itself: a [postgres] run whose receiver quietly ran on
    # SQLite would pass every both_backends test twice and prove nothing. Like those tests,
    # this one does not ask for the backend fixture: it reads which run it is from its id.
    backend = request.node.callspec.params["backend"]
    async with start_receiver(make_settings(tmp_path)) as r:
        assert (await r.post_callback("ext-g", task_body("9001", "submitted", "ext-g"))).is_success
    url = postgres_url()
    assert (backend, url is not None) in {("sqlite", False), ("postgres", True)}
    assert (tmp_path / "kling-hooks.db").exists() is (backend == "sqlite")
    if url is not None:
        assert pg_support.rows(url, "SELECT task_id FROM tasks") == [("9001",)]
