"""The processes of a harness run: each server under test, and the sink, started on a free
loopback port, waited for, measured from ``/proc`` and stopped with SIGTERM.

:func:`receiver` runs ``kling-hooks serve`` on a database of its own (or a given one), with a
config file holding the plugin tables and, for the fan-out figures, copies of the no-op
plugin in a ``--plugins-dir``. Every callback answer counted into its :class:`Tally` is
checked against the database after the stop: the rows ``transitions`` gained must equal the
``new`` verdicts, the rows ``callbacks`` gained the 2xx answers (as ``bench/callbacks.py``
checks; "gained": a given database, such as the status API's, has rows before the start); a
mismatch is a lossy run, appended to ``problems``.
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

from bench import ceiling, processes
from bench.perf import noop_plugin, peer, sink
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
    """A running ``kling-hooks serve``: its database, its no-op plugins' start files, and
    the :class:`Tally` its loss check compares with the database."""

    db: Path = Path()
    starts_files: dict[str, Path] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    def deliveries(self) -> tuple[int, int]:
        """``(deliveries, of which done)`` in the database now (read-only; WAL lets it read
        while the receiver writes)."""
        return processes.outbox(self.db)


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
    """
    db = db or workdir / f"{name}.db"
    before = processes.stored_counts(db) if db.exists() else (0, 0)
    config = workdir / f"{name}.toml"
    tables = [plugins_toml]
    starts: dict[str, Path] = {}
    plugins_dir = None
    if noop:
        plugins_dir = workdir / f"{name}-plugins"
        plugins_dir.mkdir(exist_ok=True)
        for plugin in noop:
            shutil.copy(noop_plugin.__file__, plugins_dir / f"{plugin}.py")
            starts[plugin] = workdir / f"{name}-{plugin}.tsv"
            tables.append(
                f'[plugins.{plugin}]\nstarts_file = "{starts[plugin]}"\n'
                f"concurrency = {noop_plugin.CONCURRENCY}\n{noop_toml}"
            )
    config.write_text("\n".join(tables))
    port = processes.free_port()
    command = processes.serve_command(port, db=db, config=config, plugins_dir=plugins_dir)
    with running(name, command, workdir, port) as run:
        rx = Receiver(**vars(run), db=db, starts_files=starts)
        yield rx
    after = processes.stored_counts(db)
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
