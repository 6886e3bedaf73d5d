"""The processes of a harness run: each server under test, and the sink, started on a free
loopback port, waited for, measured from ``/proc`` and stopped with SIGTERM.

:func:`receiver` runs ``kling-hooks serve`` on a database of its own (or a given one), with a
config file holding the plugin tables and, for the fan-out figures, copies of the no-op
plugin in a ``--plugins-dir``. Every callback answer counted into its :class:`Tally` is
checked against the database after the stop: the rows ``transitions`` gained must equal the
``new`` verdicts, the rows ``callbacks`` gained the 2xx answers (as ``bench/callbacks.py``
checks; "gained": a given database, such as the status API's, has rows before the start); a
mismatch is a lossy run, appended to ``problems``. On Postgres (``database_url``) the same
counts are read with psycopg, and ``replicas`` serves may share the database and one socket.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import ceiling, postgres, processes
from bench.perf import noop_plugin, peer, sink
from bench.suites.serve_process import shared_socket
from bench.workload import API_TOKEN

MIB = 1024 * 1024
#: The status API's bearer header, as wrk's ``-H`` takes it.
AUTH_HEADER = f"Authorization: Bearer {API_TOKEN}"


@dataclass
class Running:
    """A server process that answered its readiness URL.

    Attributes:
        name: What it is (``ingest-c64``...), also its log file's stem.
        proc: The process.
        url: ``http://127.0.0.1:PORT``.
        log: Its stdout and stderr.
        ready_s: Seconds from just before the process was started until the readiness URL
            answered 200 (resolution :data:`bench.processes.READY_POLL_S`).
    """

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        """Resident memory now (``VmRSS``), MiB."""
        return processes.memory_kib(self.pid).get("VmRSS", 0) / 1024

    def hwm_mib(self) -> float:
        """Peak resident memory so far (``VmHWM``), MiB."""
        return processes.memory_kib(self.pid).get("VmHWM", 0) / 1024

    def cpu_s(self) -> float:
        """CPU seconds used so far, all threads."""
        return processes.cpu_s(self.pid)


@contextlib.contextmanager
def running(
    name: str,
    command: Sequence[str],
    workdir: Path,
    port: int,
    *,
    ready_path: str = "/readyz",
    env: Mapping[str, str] | None = None,
) -> Iterator[Running]:
    """Start ``command`` (listening on ``port``), wait until ``ready_path`` answers 200, yield
    it, stop it (SIGTERM) when the block ends.

    Raises:
        RuntimeError: it exited before it was ready, or was not ready in time.
    """
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"{name}.log"
    started = time.monotonic()
    proc = processes.start_server(command, log, env)
    try:
        processes.wait_ready(url + ready_path, proc, log)
        yield Running(name, proc, url, log, time.monotonic() - started)
    finally:
        processes.stop_server(proc)


@dataclass
class Tally:
    """Callback answers sent to one receiver: ``new`` verdicts and 2xx answers."""

    new: int = 0
    ok: int = 0

    def add(self, new: int, ok: int) -> None:
        self.new += new
        self.ok += ok


@dataclass
class Receiver(Running):
    """A running ``kling-hooks serve`` (or several replicas of it on one Postgres database
    and one listening socket): its database, its no-op plugins' start files, and the
    :class:`Tally` its loss check compares with the database.

    Attributes:
        db: The SQLite database (unused on Postgres).
        database_url: The Postgres database, or None (SQLite).
        starts_files: Each no-op plugin's start file, by plugin (``noop@2``: replica 2's).
        others: The replicas after the first (``proc``), on the same socket.
    """

    db: Path = Path()
    database_url: str | None = None
    starts_files: dict[str, Path] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cpu_s(self) -> float:
        """CPU seconds used so far, all threads of every replica."""
        return super().cpu_s() + sum(processes.cpu_s(p.pid) for p in self.others)

    def hwm_mib(self) -> float:
        """Peak resident memory so far (``VmHWM``) of the largest replica, MiB."""
        found = [processes.memory_kib(p.pid).get("VmHWM", 0) for p in [self.proc, *self.others]]
        return max(found) / 1024

    def deliveries(self) -> tuple[int, int]:
        """``(deliveries, of which done)`` in the database now (SQLite read-only, in WAL
        mode, while the receiver writes; or Postgres)."""
        if self.database_url is not None:
            return postgres.outbox(self.database_url)
        return processes.outbox(self.db)

    def states(self) -> dict[str, int]:
        """Deliveries by state (:func:`delivery_states`)."""
        if self.database_url is not None:
            return postgres.delivery_states(self.database_url)
        return delivery_states(self.db)


def stored_counts(db: Path, database_url: str | None) -> tuple[int, int]:
    """Rows in ``transitions`` and ``callbacks`` of the Postgres database ``database_url``,
    else of the SQLite file ``db`` (0, 0 for a database not made yet)."""
    if database_url is not None:
        return postgres.stored_counts(database_url)
    return processes.stored_counts(db) if db.exists() else (0, 0)


def pg_env(database_url: str, replica_id: str) -> dict[str, str]:
    """The environment of a receiver on Postgres: :func:`bench.processes.receiver_env` with
    ``KLING_HOOKS_DATABASE_URL``, ``KLING_HOOKS_REPLICA_ID`` and log level ``info`` (the
    level that logs ``receiver_started``; nothing is logged per callback or delivery below
    ``debug``)."""
    return processes.receiver_env(
        {
            "KLING_HOOKS_DATABASE_URL": database_url,
            "KLING_HOOKS_REPLICA_ID": replica_id,
            "KLING_HOOKS_LOG_LEVEL": "info",
        }
    )


def _start_replicas(
    stack: contextlib.ExitStack,
    name: str,
    workdir: Path,
    database_url: str,
    replicas: int,
    plugins_dir: Path | None,
    tables: tuple[str, Sequence[str], str],
) -> Receiver:
    """Start ``replicas`` serves on one shared socket (see :func:`receiver`), each stopped
    (SIGTERM) when ``stack`` closes, the socket closed after them."""
    sock = stack.enter_context(shared_socket())
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    starts: dict[str, Path] = {}
    log = workdir / f"{name}.log"
    logs = []
    for k in range(1, replicas + 1):  # all started at once: none has a head start
        own = name if k == 1 else f"{name}-r{k}"
        config, found = _config(workdir, own, *tables)
        starts.update({(p if k == 1 else f"{p}@{k}"): path for p, path in found.items()})
        command = processes.serve_command(
            0, db=None, config=config, plugins_dir=plugins_dir, fd=sock.fileno()
        )
        logs.append(workdir / f"{own}.log")
        env = pg_env(database_url, f"{name}-{k}")
        proc = processes.start_server(command, logs[-1], env, pass_fds=(sock.fileno(),))
        stack.callback(processes.stop_server, proc)
        procs.append(proc)
    for proc, own_log in zip(procs, logs, strict=True):
        processes.wait_logged("receiver_started", proc, own_log)
    processes.wait_ready(url + "/readyz", procs[0], logs[0])
    ready_s = time.monotonic() - started
    return Receiver(
        name,
        procs[0],
        url,
        log,
        ready_s,
        database_url=database_url,
        starts_files=starts,
        others=procs[1:],
    )


def delivery_states(db: Path) -> dict[str, int]:
    """Deliveries in ``db`` by state (``{"done": n, "dead": n, ...}``)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def wait_deliveries(rx: Receiver, expected: int, timeout_s: float) -> float:
    """Wait until ``rx`` has ``expected`` deliveries, all ``done``; returns the seconds waited.

    Raises:
        TimeoutError: not within ``timeout_s``; the message gives the counts.
    """
    started = time.monotonic()
    while True:
        total, done = rx.deliveries()
        if total >= expected and done == total:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(
                f"{rx.name}: {done} of {total} deliveries done ({expected} expected) "
                f"after {timeout_s:.0f} s"
            )
        time.sleep(0.05)


def _config(
    workdir: Path, name: str, plugins_toml: str, noop: Sequence[str], noop_toml: str
) -> tuple[Path, dict[str, Path]]:
    """``workdir/name.toml`` with ``plugins_toml`` and a table per no-op plugin (each
    writing its starts to ``workdir/name-NOOP.tsv``); returns it and the start files."""
    tables = [plugins_toml]
    starts: dict[str, Path] = {}
    for plugin in noop:
        starts[plugin] = workdir / f"{name}-{plugin}.tsv"
        tables.append(
            f'[plugins.{plugin}]\nstarts_file = "{starts[plugin]}"\n'
            f"concurrency = {noop_plugin.CONCURRENCY}\n{noop_toml}"
        )
    config = workdir / f"{name}.toml"
    config.write_text("\n".join(tables))
    return config, starts


@contextlib.contextmanager
def receiver(
    name: str,
    workdir: Path,
    problems: list[str],
    *,
    plugins_toml: str = "",
    noop: Sequence[str] = (),
    noop_toml: str = "",
    db: Path | None = None,
    database_url: str | None = None,
    replicas: int = 1,
) -> Iterator[Receiver]:
    """``kling-hooks serve`` as :func:`running` does it, plus the loss check (module
    docstring) after the stop when the block ended without an exception.

    Args:
        name: The run's name; its files are ``workdir/name.*``.
        plugins_toml: ``[plugins.NAME]`` tables for the config file.
        noop: Names under which :mod:`bench.perf.noop_plugin` is enabled (each writes its
            start times to ``workdir/name-NOOP.tsv``, after the stop).
        noop_toml: More keys for each no-op plugin's table (``refuse_start = true``).
        db: The database (default: a new ``workdir/name.db``).
        database_url: A Postgres database instead (``KLING_HOOKS_DATABASE_URL``).
        replicas: Postgres only: this many ``serve`` processes (``KLING_HOOKS_REPLICA_ID``
            ``name-1``...), each with its own config file (``name-r2.toml``: its own start
            files), sharing one listening socket (``serve --fd``: the kernel hands each new
            connection to one of them), all started at once; ready when each one logged
            ``receiver_started`` and ``/readyz`` answers 200.
    """
    if replicas > 1 and database_url is None:
        raise ValueError(f"replicas={replicas}: several replicas need a Postgres database")
    db = db or workdir / f"{name}.db"
    plugins_dir = None
    if noop:
        plugins_dir = workdir / f"{name}-plugins"
        plugins_dir.mkdir(exist_ok=True)
        for plugin in noop:
            shutil.copy(noop_plugin.__file__, plugins_dir / f"{plugin}.py")
    before = stored_counts(db, database_url)
    with contextlib.ExitStack() as stack:
        tables = (plugins_toml, noop, noop_toml)
        if replicas > 1:
            assert database_url is not None
            rx = _start_replicas(stack, name, workdir, database_url, replicas, plugins_dir, tables)
        else:
            config, starts = _config(workdir, name, *tables)
            port = processes.free_port()
            on_file = db if database_url is None else None
            command = processes.serve_command(
                port, db=on_file, config=config, plugins_dir=plugins_dir
            )
            env = None if database_url is None else pg_env(database_url, f"{name}-1")
            run = stack.enter_context(running(name, command, workdir, port, env=env))
            rx = Receiver(**vars(run), db=db, database_url=database_url, starts_files=starts)
        yield rx
    after = stored_counts(db, database_url)
    gained = (after[0] - before[0], after[1] - before[1])
    wanted = (rx.tally.new, rx.tally.ok)
    if gained != wanted:
        problems.append(
            f"{name}: LOSSY: transitions/callbacks rows gained {gained[0]}/{gained[1]}, "
            f"new verdicts/2xx answers {wanted[0]}/{wanted[1]}"
        )


def ceiling_server(workdir: Path, docs: Path | None = None) -> AbstractContextManager[Running]:
    """The ceiling app (``bench/ceiling.py``), with the status documents ``docs``."""
    port = processes.free_port()
    return running("ceiling", ceiling.command(port, docs), workdir, port)


def peer_server(name: str, workdir: Path) -> AbstractContextManager[Running]:
    """The peer (:mod:`bench.perf.peer`), configured in ``workdir/name``; ready on ``GET /``."""
    port = processes.free_port()
    hooks = peer.write_config(workdir / name)
    return running(name, peer.command(port, hooks), workdir, port, ready_path="/")


def sink_server(workdir: Path) -> AbstractContextManager[Running]:
    """The sink (``bench/perf/sink.py``)."""
    port = processes.free_port()
    command = [sys.executable, sink.__file__, "--port", str(port)]
    return running("sink", command, workdir, port)


def sink_counts(sink: Running) -> dict[str, int]:
    """The sink's request counts (``GET /counts``)."""
    counts: dict[str, int] = httpx.get(f"{sink.url}/counts", timeout=10).json()
    return counts
