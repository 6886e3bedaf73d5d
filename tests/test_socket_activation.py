"""Socket activation: ``kling-hooks serve`` on a listening socket it inherits, restarted under
continuous load without refusing or losing a callback.

The test process plays the part of systemd's socket unit: it binds and listens on a loopback
socket and keeps it open for the whole test, while real ``kling-hooks serve`` subprocesses come
and go on it (``--fd N``, or fd 3 with ``LISTEN_FDS``/``LISTEN_PID`` as systemd sets them).
Senders post signed callbacks all the time, each on a new connection as Kling does. While no
process accepts (the first one stopping after SIGTERM, the next one starting), the kernel holds
the new connections in the socket's accept queue; the next process answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from receiver.serving import listen
from submitter.tokens import CallbackTokens
from tests.conftest import KLING_HOOKS, SECRET, Server, rows, serve, task_body

SENDERS = 8
#: Callbacks acknowledged by each process before the test moves on.
PER_PHASE = 40

# Becomes kling-hooks (exec keeps the pid) with the socket at fd 3 and LISTEN_FDS=1,
# LISTEN_PID=its own pid: what systemd does for a service started by a socket unit. A
# LISTEN_PID already in its environment is kept (sockets meant for another process).
SYSTEMD_LIKE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.setdefault("LISTEN_PID", str(os.getpid()))
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execv(sys.argv[2], sys.argv[2:])
"""

# A plugin whose module asks a child process, at import, which LISTEN_* variables it got.
ENV_PROBE = """
import json, os, subprocess, sys
from receiver.plugins import Plugin

child = subprocess.run(
    [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"],
    capture_output=True, text=True, check=True,
)
names = [n for n in json.loads(child.stdout) if n.startswith("LISTEN_")]
with open(os.environ["ENV_PROBE_OUT"], "a") as out:
    out.write(json.dumps(names) + "\\n")


class Probe(Plugin):
    name = "probe"
    version = "0.1"

    async def handle(self, event):
        return None


plugin = Probe
"""


@dataclass
class Load:
    """Senders posting callbacks to ``url`` until stopped, and what happened to each."""

    url: str
    phase: str = "first"
    acknowledged: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    started_in: dict[str, int] = field(default_factory=dict)  # requests begun per phase
    longest_wait_s: dict[str, float] = field(default_factory=dict)  # reported, not asserted
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def send(self, sender: int, stop: asyncio.Event) -> None:
        tokens = CallbackTokens([SECRET])
        # No keep-alive: every callback opens a new connection, like Kling's.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
            n = 0
            while not stop.is_set():
                ext = f"kh-{sender}-{n}"
                body = task_body(f"t-{sender}-{n}", "succeed", ext)
                await self._post(http, tokens.callback_url(self.url, ext), body, ext)
                n += 1

    async def _post(
        self, http: httpx.AsyncClient, url: str, body: dict[str, object], ext: str
    ) -> None:
        phase, began = self.phase, time.monotonic()
        self.started_in[phase] = self.started_in.get(phase, 0) + 1
        try:
            answer = await http.post(url, json=body)
        except httpx.HTTPError as exc:
            self.failures.append(f"{ext}: {exc!r}")
            return
        waited = time.monotonic() - began
        self.longest_wait_s[phase] = max(self.longest_wait_s.get(phase, 0.0), waited)
        if answer.status_code != 200 or answer.json() != {"ok": True, "verdict": "new"}:
            self.failures.append(f"{ext}: {answer.status_code} {answer.text}")
            return
        async with self._changed:
            self.acknowledged.append(ext)
            self._changed.notify_all()

    async def until_acknowledged(self, count: int, timeout_s: float = 30.0) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.acknowledged) >= count), timeout_s
            )


class Senders:
    """:data:`SENDERS` tasks running :meth:`Load.send` until :meth:`stop`."""

    def __init__(self, load: Load) -> None:
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(load.send(i, self._stop)) for i in range(SENDERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def stop_with_sigterm(server: Server) -> int:
    server.proc.send_signal(signal.SIGTERM)
    return await server.proc.wait()


def write_config(tmp_path: Path, *plugin_tables: str) -> Path:
    config = tmp_path / "kling-hooks.toml"
    tables = "".join(f"\n[plugins.{name}]\n" for name in plugin_tables)
    config.write_text(f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n{tables}')
    return config


def launch(via: str, fd: int) -> tuple[tuple[str, ...], list[str]]:
    """(serve's extra arguments, the launcher) that hand ``fd`` to serve ``via`` that way."""
    if via == "--fd":
        return ("--fd", str(fd)), []
    return (), [sys.executable, "-c", SYSTEMD_LIKE, str(fd)]


@pytest.mark.parametrize("via", ["--fd", "LISTEN_FDS"])
async def test_restart_under_load_on_an_inherited_socket_refuses_and_loses_no_callback(
    tmp_path: Path, via: str
) -> None:
    sock = listen()  # the socket unit's part: bound, listening, kept open throughout
    host, port = sock.getsockname()[:2]
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "probe.py").write_text(ENV_PROBE)
    probe_out = tmp_path / "probe.jsonl"
    config = write_config(tmp_path, "probe")
    args, launcher = launch(via, sock.fileno())
    args += ("--plugins-dir", str(tmp_path / "plugins"))
    run = {
        "pass_fds": [sock.fileno()],
        "launcher": launcher,
        "env": {"ENV_PROBE_OUT": str(probe_out)},
    }
    load = Load(f"http://{host}:{port}")
    exits: list[int] = []
    with sock:
        async with serve(config, tmp_path, *args, **run) as first:
            assert first.url == load.url  # it took the inherited socket, not --port 0
            sending = Senders(load)
            await load.until_acknowledged(PER_PHASE)
            load.phase = "restart"  # from SIGTERM until the next process has started
            exits.append(await stop_with_sigterm(first))
        async with serve(config, tmp_path, *args, **run) as second:
            await second.until(lambda e: e.get("event") == "receiver_started")
            load.phase = "second"
            await load.until_acknowledged(len(load.acknowledged) + PER_PHASE)
            await sending.stop()
            exits.append(await stop_with_sigterm(second))

    assert load.failures == []
    assert exits == [-signal.SIGTERM, -signal.SIGTERM]  # clean stops, as systemd sees them
    # Callbacks were sent while no process accepted: the kernel queued them, none refused.
    assert load.started_in["restart"] >= 1
    assert load.started_in["second"] >= 1
    stored = {
        r["external_task_id"]
        for r in rows(
            config.parent / "kling-hooks.db",
            "SELECT external_task_id FROM tasks WHERE task_status = 'succeed'",
        )
    }
    assert set(load.acknowledged) <= stored
    assert len(load.acknowledged) == sum(load.started_in.values())
    # Neither process, nor a child of it, saw the LISTEN_* variables after serve read them.
    assert [json.loads(line) for line in probe_out.read_text().splitlines()] == [[], []]
    waits = load.longest_wait_s  # reported (pytest -s), never asserted: timing is no rule
    print(
        f"\n{via}: {len(load.acknowledged)} callbacks acknowledged, 0 failed; "
        f"{load.started_in['restart']} sent during the restart, the longest answered after "
        f"{waits.get('restart', 0.0):.2f} s (before and after: at most "
        f"{max(waits.get('first', 0.0), waits.get('second', 0.0)):.2f} s)"
    )


async def test_a_stop_answers_the_request_begun_on_a_kept_alive_connection(
    tmp_path: Path,
) -> None:
    """A proxy that keeps its connection to the receiver open may have sent the first bytes
    of its next request when SIGTERM comes: the stop waits for that request's headers and
    answers it, instead of closing the connection under it (uvicorn's own stop would)."""
    config = write_config(tmp_path)
    tokens = CallbackTokens([SECRET])
    async with serve(config, tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))

        def request(ext: str) -> bytes:
            body = json.dumps(task_body(f"t-{ext}", "succeed", ext)).encode()
            path = tokens.callback_url("", ext)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            return head.encode() + body

        async def answer() -> int:
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                length = int(value) if name.lower() == "content-length" else length
            await reader.readexactly(length)
            return status

        writer.write(request("kh-a"))
        first = await answer()  # the connection is kept alive
        second = request("kh-b")
        writer.write(second[:20])  # the next request has begun
        await writer.drain()
        await asyncio.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        # well within FIRST_REQUEST_GRACE_S (1 s), which starts once SIGTERM is handled
        await asyncio.sleep(0.3)
        writer.write(second[20:])
        later = await answer()
        writer.close()
        exit_code = await server.proc.wait()
    assert (first, later, exit_code) == (200, 200, -signal.SIGTERM)
    stored = rows(tmp_path / "kling-hooks.db", "SELECT external_task_id FROM tasks")
    assert {r["external_task_id"] for r in stored} == {"kh-a", "kh-b"}


async def test_listen_fds_meant_for_another_process_are_ignored_and_unset(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "probe.py").write_text(ENV_PROBE)
    probe_out = tmp_path / "probe.jsonl"
    env = {"ENV_PROBE_OUT": str(probe_out), "LISTEN_PID": str(os.getpid())}  # the test's pid
    with listen() as sock:
        args, launcher = launch("LISTEN_FDS", sock.fileno())
        args += ("--plugins-dir", str(tmp_path / "plugins"))
        config = write_config(tmp_path, "probe")
        async with serve(
            config, tmp_path, *args, env=env, pass_fds=[sock.fileno()], launcher=launcher
        ) as server:
            inherited = "http://{}:{}".format(*sock.getsockname()[:2])
            assert server.url != inherited  # it bound --port 0 itself (uvicorn's own line)
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{server.url}/readyz")).status_code == 200
    assert [json.loads(line) for line in probe_out.read_text().splitlines()] == [[]]


def not_a_listening_socket(kind: str, tmp_path: Path, stack: contextlib.ExitStack) -> int:
    """An open fd of ``kind`` (``file``, ``unlistened`` TCP, ``udp``), closed with ``stack``."""
    if kind == "file":
        return stack.enter_context((tmp_path / "file").open("w")).fileno()
    sock = socket.socket(type=socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    stack.enter_context(sock).bind(("127.0.0.1", 0))
    return sock.fileno()


@pytest.mark.parametrize("via", ["--fd", "LISTEN_FDS"])
@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("file", "is not a socket"),
        ("unlistened", "is a socket that is not listening"),
        ("udp", "is not a stream socket"),
    ],
)
def test_serve_handed_an_fd_that_is_no_listening_socket_exits_2_with_one_line_naming_it(
    tmp_path: Path, via: str, kind: str, problem: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    with contextlib.ExitStack() as stack:
        fd = not_a_listening_socket(kind, tmp_path, stack)
        args, launcher = launch(via, fd)
        done = subprocess.run(
            [*launcher, str(KLING_HOOKS), "serve", "--db", str(tmp_path / "k.db"), *args],
            pass_fds=[fd],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    name = f"--fd {fd}" if via == "--fd" else "LISTEN_FDS fd 3"
    assert done.returncode == 2
    [line] = done.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"error: {name} {problem}")
    assert not (tmp_path / "k.db").exists()  # it stopped before opening the database


def test_serve_given_an_fd_that_is_not_open_exits_2_naming_it(tmp_path: Path) -> None:
    closed = 999  # the child inherits fds 0 to 2 only
    done = subprocess.run(
        [str(KLING_HOOKS), "serve", "--db", str(tmp_path / "k.db"), "--fd", str(closed)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --fd {closed} is not an open file descriptor (Bad file descriptor)"
    ]
