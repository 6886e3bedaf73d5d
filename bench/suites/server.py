"""A real ``kling-hooks serve`` subprocess on 127.0.0.1 for the reliability suites: started
with a fresh SQLite file under a work directory, waited on until ``/readyz`` answers, stopped
with SIGTERM (SIGKILL after a grace)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

API_TOKEN = "suite-api-token"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: The tables a rejected request must leave unchanged.
TABLES = ("tasks", "transitions", "callbacks", "deliveries")


@dataclass
class Serve:
    """A running receiver: its base URL, database, process and log file."""

    url: str
    db: Path
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    def alive(self) -> bool:
        return self.proc.returncode is None

    def counts(self) -> dict[str, int]:
        """Rows in each of :data:`TABLES` (read-only connection)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command() -> list[str]:
    script = Path(sys.executable).with_name("kling-hooks")
    return [str(script)] if script.exists() else [sys.executable, "-m", "receiver.cli"]


@contextlib.asynccontextmanager
async def serve(workdir: Path, secret: str, **env: str) -> AsyncIterator[Serve]:
    """Run ``kling-hooks serve`` with ``KLING_HOOKS_SECRET=secret`` (and ``env``) on a free
    port, database ``workdir/kling-hooks.db``, until the block ends.

    Raises:
        RuntimeError: it exited, or ``/readyz`` did not answer 200 within READY_TIMEOUT_S.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port, db, log = _free_port(), workdir / "kling-hooks.db", workdir / "serve.log"
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    full_env.update(
        KLING_HOOKS_SECRET=secret,
        KLING_HOOKS_API_TOKEN=API_TOKEN,
        KLING_HOOKS_LOG_LEVEL="error",
        KLING_HOOKS_LOG_FORMAT="json",
        **env,
    )
    command = [*_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db)]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *command, env=full_env, cwd=workdir, stdout=out, stderr=out
        )
    server = Serve(f"http://127.0.0.1:{port}", db, proc, log)
    try:
        await _ready(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _ready(server: Serve) -> None:
    async with asyncio.timeout(READY_TIMEOUT_S), httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if server.proc.returncode is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"serve exited with {server.proc.returncode}: {tail}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{server.url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
