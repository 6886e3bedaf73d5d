"""``kling-hooks serve`` as a subprocess on a fixed loopback port, for the suites.

The port stays the same across a SIGKILL and a restart (clients see refused connections, then
the same URL again). A background task reads the JSON log lines from stderr all the time (a
full pipe would stall the server) and keeps every line, raw, for the secrets scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.processes import free_port

KLING_HOOKS = Path(sys.executable).with_name("kling-hooks")
SECRET = "suite-secret-not-for-production-0123456789"
API_TOKEN = "suite-api-token-0123456789"
START_TIMEOUT_S = 30.0


class ServeProcess:
    """One ``serve`` on ``port`` with ``config``; :meth:`start` again after :meth:`kill`.

    With ``sock`` (a listening socket this process holds), it serves on that socket instead
    (``serve --fd``), and so may several replicas at once: the kernel hands each connection
    to one of them, and connections wait in the backlog while one restarts (one URL in front
    of them all, as a load balancer or systemd's socket gives).

    Attributes:
        lines: Every stderr line of every run, decoded (the secrets suite scans them).
        events: Those lines that are JSON objects.
        starts: How many times it was started.
    """

    def __init__(
        self,
        config: Path,
        port: int,
        env: dict[str, str] | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.sock = sock
        self.port = port if sock is None else sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
        self.env.update(
            KLING_HOOKS_SECRET=SECRET,
            KLING_HOOKS_API_TOKEN=API_TOKEN,
            KLING_HOOKS_LOG_FORMAT="json",
            KLING_HOOKS_LOG_LEVEL="info",
        )
        self.env.update(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.starts = 0
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start it and wait until it serves: uvicorn's "Uvicorn running on" line (on an
        inherited socket, which uvicorn does not name: the receiver's ``receiver_started``).

        Raises:
            RuntimeError: it exited first, or did not listen within START_TIMEOUT_S.
        """
        where = ["--port", str(self.port)]
        if self.sock is not None:
            where = ["--fd", str(self.sock.fileno())]
        self.proc = await asyncio.create_subprocess_exec(
            str(KLING_HOOKS),
            "serve",
            "--config",
            str(self.config),
            *where,
            env=self.env,
            cwd=self.config.parent,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=() if self.sock is None else (self.sock.fileno(),),
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc))
        seen = len(self.events)
        try:
            await self.until(_serving if self.sock is not None else _listening, seen)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"serve did not start: {self.lines[-5:]}") from exc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            async with self._changed:
                self.lines.append(text)
                with contextlib.suppress(ValueError):
                    event = json.loads(text)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def until(
        self,
        pred: Callable[[dict[str, Any]], bool],
        after: int = 0,
        timeout_s: float = START_TIMEOUT_S,
    ) -> dict[str, Any]:
        """The first event from index ``after`` on that satisfies ``pred``.

        Raises:
            RuntimeError: the process ended first. TimeoutError: none within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                for event in self.events[after:]:
                    if pred(event):
                        return event
                after = len(self.events)
                if self._reader is None or self._reader.done():
                    raise RuntimeError("serve exited")
                await self._changed.wait()

    async def count(
        self, pred: Callable[[dict[str, Any]], bool], wanted: int, timeout_s: float
    ) -> None:
        """Wait until ``wanted`` events (of all runs) satisfy ``pred``.

        Raises:
            TimeoutError: fewer within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: sum(map(pred, self.events)) >= wanted)

    async def kill(self) -> None:
        """SIGKILL, and wait until it is gone and its stderr is read."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM (a graceful stop), and wait; SIGKILL after 15 s."""
        try:
            async with asyncio.timeout(15):
                await self._end(signal.SIGTERM)
        except TimeoutError:
            await self.kill()

    async def _end(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        if self.proc is not None:
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


def _listening(event: dict[str, Any]) -> bool:
    """uvicorn bound its port (after the receiver's start-up)."""
    return "Uvicorn running on" in str(event.get("event"))


def _serving(event: dict[str, Any]) -> bool:
    """The receiver started on an inherited socket: it serves requests from now on."""
    return event.get("event") == "receiver_started"


def shared_socket() -> socket.socket:
    """A listening TCP socket on a free loopback port, for :class:`ServeProcess` ``sock``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serving(config: Path, env: dict[str, str] | None = None) -> AsyncIterator[ServeProcess]:
    """A started :class:`ServeProcess` on a free port, killed when the block ends."""
    server = ServeProcess(config, free_port(), env)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
