"""One ``kling-hooks serve`` for the suites that need a single run (hostile input, forgery):
a fresh SQLite file under a work directory, on :class:`bench.suites.serve_process.ServeProcess`
(which the crash, storage and secrets suites use directly), stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.processes import free_port
from bench.suites.serve_process import API_TOKEN, ServeProcess

#: The tables a rejected request must leave unchanged.
TABLES = ("tasks", "transitions", "callbacks", "deliveries")


@dataclass
class Serve:
    """A running receiver: its process (URL, log lines) and its database."""

    process: ServeProcess
    db: Path

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_TOKEN}"}

    @property
    def lines(self) -> list[str]:
        """Every line the server printed (JSON)."""
        return self.process.lines

    def alive(self) -> bool:
        proc = self.process.proc
        return proc is not None and proc.returncode is None

    def counts(self) -> dict[str, int]:
        """Rows in each of :data:`TABLES` (read-only connection)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@contextlib.asynccontextmanager
async def serve(workdir: Path, secret: str, **env: str) -> AsyncIterator[Serve]:
    """Run ``kling-hooks serve`` with ``KLING_HOOKS_SECRET=secret`` (and ``env``) on a free
    port, database ``workdir/kling-hooks.db``, until the block ends.

    Raises:
        RuntimeError: it exited, or did not listen in time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db, config = workdir / "kling-hooks.db", workdir / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{db}"\n')
    process = ServeProcess(config, free_port(), {"KLING_HOOKS_SECRET": secret, **env})
    await process.start()
    try:
        yield Serve(process, db)
    finally:
        await process.stop()
