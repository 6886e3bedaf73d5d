"""A Postgres server for the benchmarks and the tests: a throwaway cluster, a fresh database
on it, and the counts the harness's loss checks read.

:func:`throwaway_cluster` runs Debian's ``initdb`` and ``pg_ctl`` (package ``postgresql``)
in a temporary directory, as the ``postgres`` user when running as root, listening on
127.0.0.1 on a free port; ``tests/pg_support.py`` starts its clusters with it (``fsync=off``)
and so does ``bench/run.py --postgres`` (``fsync=on``: a benchmark's 200 must mean committed
and flushed, as in production).
"""

from __future__ import annotations

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

import psycopg


def pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with ``initdb`` (Debian's layout), else the
    folder of an ``initdb`` on PATH, else None."""
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
def throwaway_cluster(bin_dir: Path, *, fsync: bool = False) -> Iterator[str]:
    """Run a new cluster until the block ends; yields the URL of its ``postgres`` database.

    Args:
        bin_dir: Where ``initdb`` and ``pg_ctl`` are (:func:`pg_bin`).
        fsync: ``fsync`` and ``synchronous_commit`` on (a benchmark: every commit is flushed
            to disk before it is answered); off for the tests, whose cluster is thrown away
            and never loses power.

    As root the cluster runs as the ``postgres`` user (Postgres refuses to run as root).

    Raises:
        subprocess.CalledProcessError: ``initdb`` or ``pg_ctl start`` failed (its stderr).
    """
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="kling-hooks-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    durability = "-c fsync=on -c synchronous_commit=on" if fsync else "-c fsync=off"
    try:
        initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        _run([*initdb, "-A", "trust", "-E", "UTF8", "--no-sync"])
        port = _free_port()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 {durability}"
        _run([*pg_ctl, "-l", str(folder / "log"), "-w", "-o", options, "start"])
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([*pg_ctl, "-m", "immediate", "stop"], check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{name}"


def create_database(admin_url: str, prefix: str = "kh_test") -> str:
    """Create an empty database named ``{prefix}_{16 hex digits}`` on the server of
    ``admin_url`` (a role that may create databases); returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of ``url`` (closing what is still connected to it), if it exists."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str = "kh_test") -> Iterator[str]:
    """:func:`create_database`; yields its URL; drops it after."""
    url = create_database(admin_url, prefix)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


def _count(conn: psycopg.Connection[tuple[object, ...]], table: str) -> int:
    """Rows of ``table`` (a fixed name), 0 when it does not exist yet."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def stored_counts(url: str) -> tuple[int, int]:
    """Rows in ``transitions`` and in ``callbacks`` of the database ``url`` (0 and 0 before
    the receiver made its schema), as :func:`bench.processes.stored_counts` reads SQLite."""
    with psycopg.connect(url, autocommit=True) as conn:
        return _count(conn, "transitions"), _count(conn, "callbacks")


def delivery_states(url: str) -> dict[str, int]:
    """Deliveries of the database ``url`` by state (``{"done": n, ...}``; empty before the
    receiver made its schema)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if _count(conn, "deliveries") == 0:
            return {}
        rows = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def outbox(url: str) -> tuple[int, int]:
    """``(deliveries, of which done)`` in the database ``url`` now."""
    states = delivery_states(url)
    return sum(states.values()), states.get("done", 0)


def server_cpu_s(url: str) -> float:
    """CPU seconds the Postgres server of ``url`` has used so far: its postmaster's own and
    its ended children's (``/proc/PID/stat``), plus every live child's (the backends, the
    WAL writer, the checkpointer...). NaN when the server is not on this machine.

    The postmaster is the parent of the backend that answers this connection.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    backend = int(row[0]) if row else 0
    try:
        postmaster = int(_stat(backend)[1])
        total = sum(int(f) for f in _stat(postmaster)[11:15])
    except (OSError, IndexError, ValueError):
        return float("nan")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = _stat(int(entry))
                if int(fields[1]) == postmaster:
                    total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()
