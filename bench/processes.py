"""The benchmarks' server processes: start ``kling-hooks serve`` (or any server), wait until
it is ready, read its CPU time and memory from ``/proc``, stop it, and count what it stored.

Every benchmark server is a real process on 127.0.0.1, started from this interpreter's
virtualenv (so ``pip install .`` first: the installed ``kling-hooks``, not the work tree, is
what runs).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from bench.workload import API_TOKEN, SECRET

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
#: How often readiness is polled, seconds (the resolution of a start-up time).
READY_POLL_S = 0.005


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command() -> list[str]:
    """``kling-hooks`` next to this interpreter, else ``python -m receiver.cli``."""
    script = Path(sys.executable).with_name("kling-hooks")
    return [str(script)] if script.exists() else [sys.executable, "-m", "receiver.cli"]


def receiver_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``KLING_*`` variable, plus the benchmark
    receiver's: :data:`~bench.workload.SECRET`, :data:`~bench.workload.API_TOKEN`, JSON logs
    at level ``warning`` (per-request and per-delivery log lines off), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    env.update(
        KLING_HOOKS_SECRET=SECRET,
        KLING_HOOKS_API_TOKEN=API_TOKEN,
        KLING_HOOKS_LOG_LEVEL="warning",
        KLING_HOOKS_LOG_FORMAT="json",
    )
    env.update(extra or {})
    return env


def serve_command(
    port: int,
    *,
    db: Path | None,
    config: Path | None = None,
    plugins_dir: Path | None = None,
    fd: int | None = None,
) -> list[str]:
    """The ``kling-hooks serve`` command line on 127.0.0.1:``port``, or, given ``fd``, on
    that inherited listening socket (``serve --fd``; ``port`` is then ignored); ``db`` None
    for a receiver on Postgres (``--db`` would win over its ``KLING_HOOKS_DATABASE_URL``)."""
    where = ["--fd", str(fd)] if fd is not None else ["--host", "127.0.0.1", "--port", str(port)]
    command = [*server_command(), "serve", *where]
    if db is not None:
        command += ["--db", str(db)]
    if config is not None:
        command += ["--config", str(config)]
    if plugins_dir is not None:
        command += ["--plugins-dir", str(plugins_dir)]
    return command


def start_server(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``command`` with stdout and stderr into ``log_path`` (default env:
    :func:`receiver_env`), handing it the file descriptors ``pass_fds``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            env=dict(env if env is not None else receiver_env()),
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
        )


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = READY_TIMEOUT_S
) -> float:
    """Poll ``url`` every :data:`READY_POLL_S` until it answers 200.

    Returns:
        Seconds from now until the 200 arrived.

    Raises:
        RuntimeError: the process exited first, or no 200 within ``timeout_s``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args!r} exited with {proc.returncode}:\n{tail(log_path)}"
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return time.monotonic() - started
            time.sleep(READY_POLL_S)
    raise RuntimeError(f"{url} not ready after {timeout_s} s:\n{tail(log_path)}")


def wait_logged(
    text: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = READY_TIMEOUT_S
) -> float:
    """Wait until ``log_path`` holds ``text`` (a server on a shared socket, which no URL
    reaches alone, says it serves: ``receiver_started``).

    Returns:
        Seconds from now until it did.

    Raises:
        RuntimeError: the process exited first, or ``text`` was not logged within ``timeout_s``.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if text in tail(log_path, chars=1 << 20):
            return time.monotonic() - started
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log_path)}")
        time.sleep(READY_POLL_S)
    raise RuntimeError(f"{text!r} not logged after {timeout_s} s:\n{tail(log_path)}")


def tail(log_path: Path, chars: int = 2000) -> str:
    """The last ``chars`` characters of a log file ('' if it is missing)."""
    with contextlib.suppress(OSError):
        return log_path.read_text(errors="replace")[-chars:]
    return ""


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return proc.returncode


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid``, in KiB, from /proc/<pid>/status
    (empty when the process is gone)."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_with_children_s(pid: int) -> float:
    """:func:`cpu_s` plus the CPU seconds of ``pid``'s children that have ended and been
    waited for (a server that runs a command per request)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` has open now (0 when it is gone)."""
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def stored_counts(db: Path) -> tuple[int, int]:
    """Rows in ``transitions`` and in ``callbacks`` (read-only; after the server stopped)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        transitions = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
        callbacks = conn.execute("SELECT COUNT(*) FROM callbacks").fetchone()[0]
    return int(transitions), int(callbacks)


def outbox(db: Path) -> tuple[int, int]:
    """``(deliveries, of which done)`` in ``db`` (read-only; WAL lets it read while the
    receiver writes)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        total, done = conn.execute(
            "SELECT count(*), coalesce(sum(state = 'done'), 0) FROM deliveries"
        ).fetchone()
    return int(total), int(done)
