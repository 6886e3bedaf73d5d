"""Shared fixtures: a real receiver under uvicorn on 127.0.0.1 with a temporary SQLite file;
a real Postgres server and a fresh database on it (``tests/pg_support.py``).

The behavioural suites run on both stores: a module marked ``pytestmark =
pytest.mark.both_backends`` runs each of its tests twice, ``[sqlite]`` and ``[postgres]``.
For the ``[postgres]`` run, :func:`make_settings` points the receiver at a fresh Postgres
database (``KLING_HOOKS_DATABASE_URL``), and :func:`rows` and :func:`deliveries` read that
database instead of the SQLite file they are given (their SQL is written to mean the same on
both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from receiver.app import create_app
from receiver.config import Settings
from receiver.models import DeliveryState
from receiver.plugins import Event, Plugin, PluginSettings, SavedFile
from receiver.plugins.registry import LoadedPlugin
from receiver.services import Services
from receiver.serving import receiver_options, running
from receiver.store.deliveries import Job, Outcome
from submitter.protocol import now_ms
from submitter.tokens import CallbackTokens
from tests import pg_support

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
SECRET = "test-secret-one"
API_TOKEN = "test-api-token"


@dataclass
class Receiver:
    """A running receiver: its base URL, its parts, and an httpx client for it."""

    url: str
    services: Services
    http: httpx.AsyncClient

    def callback_url(self, external_task_id: str, secret: str = SECRET) -> str:
        return CallbackTokens([secret]).callback_url(self.url, external_task_id)

    async def post_callback(self, external_task_id: str, body: Any, **kw: Any) -> httpx.Response:
        return await self.http.post(self.callback_url(external_task_id), json=body, **kw)

    async def register(
        self,
        task_id: str,
        external_task_id: str,
        route: str,
        request: dict[str, Any] | None = None,
        created_at: int = 1774805076166,
    ) -> None:
        """Register a submission (``POST /tasks``), as the submitter does; asserts 200."""
        doc = {
            "route": route,
            "task_id": task_id,
            "external_task_id": external_task_id,
            "created_at": created_at,
            "request": request,
        }
        answer = await self.http.post(
            f"{self.url}/tasks", json=doc, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert answer.status_code == 200, answer.text

    async def get_task(self, id_: str) -> httpx.Response:
        return await self.http.get(
            f"{self.url}/tasks/{id_}", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )


#: The Postgres database of the running ``[postgres]`` test (None: SQLite). One test runs at a
#: time in a pytest process; the ``backend`` fixture sets it and clears it.
_POSTGRES_URL: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run each test on SQLite and on Postgres (conftest.py)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only(why): in a both_backends module, a test about SQLite's file"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if definition.get_closest_marker("both_backends") and not definition.get_closest_marker(
        "sqlite_only"
    ):
        metafunc.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """``"sqlite"`` or ``"postgres"``: the store the test's receivers run on (``sqlite``
    unless the test is a ``both_backends`` one's ``[postgres]`` run)."""
    global _POSTGRES_URL
    name = str(getattr(request, "param", "sqlite"))
    if name == "postgres":
        _POSTGRES_URL = request.getfixturevalue("pg_url")
    try:
        yield name
    finally:
        _POSTGRES_URL = None


def postgres_url() -> str | None:
    """The running ``[postgres]`` test's database URL; None on SQLite."""
    return _POSTGRES_URL


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "kling_hooks_db": tmp_path / "kling-hooks.db",
        "kling_hooks_secret": SecretStr(SECRET),
        "kling_hooks_api_token": SecretStr(API_TOKEN),
        "kling_hooks_log_level": "warning",
    }
    if _POSTGRES_URL is not None:
        base["kling_hooks_database_url"] = SecretStr(_POSTGRES_URL)
    return Settings(**{**base, **values})


@contextlib.asynccontextmanager
async def start_receiver(
    settings: Settings,
    plugins: Sequence[Plugin] | None = None,
    *,
    clock_ms: Callable[[], int] = now_ms,
) -> AsyncIterator[Receiver]:
    """Run the receiver under uvicorn on a free loopback port until the block ends.

    ``plugins``: plugin instances to deliver to; by default those of ``settings.plugins``.
    ``clock_ms``: the receiver's wall clock, Unix ms.
    """
    ready: asyncio.Future[Services] = asyncio.get_running_loop().create_future()
    loaded = None if plugins is None else [LoadedPlugin(p, "test") for p in plugins]
    app = create_app(settings, loaded, clock_ms=clock_ms, on_started=ready.set_result)
    async with (
        running(app, options=receiver_options(settings)) as url,
        httpx.AsyncClient(timeout=30.0) as http,
    ):
        yield Receiver(url, await ready, http)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with start_receiver(make_settings(tmp_path)) as r:
        yield r


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The admin URL of a Postgres server shared by this worker's tests (skipped without
    one, failed in CI: ``tests/pg_support.py``)."""
    with pg_support.server() as url:
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """The URL of a new, empty database of its own for this test."""
    with pg_support.fresh_database(pg_server) as url:
        yield url


def task_body(
    task_id: str, status: str, external_task_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A bare Kling callback body (PROTOCOL.md section 4)."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1774805076166,
        "updated_at": 1774805090000,
    }
    if external_task_id is not None:
        body["task_info"] = {"external_task_id": external_task_id}
    return {**body, **extra}


class RecordingPlugin(Plugin):
    """Collects every event it is given; ``fail_first`` attempts raise; each waits for ``gate``
    (``hang``: never ends).

    Tests wait on :meth:`wait_for` (a condition, no polling).
    """

    name = "recording"
    version = "1.0"

    def __init__(
        self,
        settings: PluginSettings | None = None,
        *,
        name: str = "recording",
        fail_first: int = 0,
        error: Exception | None = None,
        hang: bool = False,
        gate: asyncio.Event | None = None,
        files: Iterable[SavedFile] = (),
    ) -> None:
        super().__init__(settings or PluginSettings())
        self.name = name  # type: ignore[misc]
        self.events: list[Event] = []
        self.fail_first = fail_first
        self.error = error or RuntimeError("recording plugin failure")
        # Each handler waits for ``gate`` once recorded; ``hang`` is a gate never opened.
        self.gate = gate if gate is not None else (asyncio.Event() if hang else None)
        self.files = tuple(files)
        self._changed = asyncio.Condition()

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        self.events.append(event)
        async with self._changed:
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise self.error
        return self.files

    async def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Event]:
        """Wait until ``count`` events were handled (started); returns them all."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.events) >= count), timeout_s
            )
        return list(self.events)


class Server:
    """A ``kling-hooks serve`` subprocess and the JSON log events it has printed.

    A background task reads stderr all the time (a full pipe would stall the server) and
    wakes waiters on each event; :meth:`until` consumes events in order.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.url = ""
        self.ended = False
        self._seen = 0  # events already examined by until()
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """The next logged event (after those earlier calls examined) that satisfies ``pred``;
        waits for the process to log it."""
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                while self._seen < len(self.events):
                    event = self.events[self._seen]
                    self._seen += 1
                    if pred(event):
                        return event
                if self.ended:
                    raise AssertionError(f"server exited: {self.events[-5:]}")
                await self._changed.wait()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader


#: ``serve(..., env=DEBUG)``: log at debug level, where each delivery's ``delivery_done`` line is.
DEBUG = {"KLING_HOOKS_LOG_LEVEL": "debug"}


@contextlib.asynccontextmanager
async def serve(
    config: Path,
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    launcher: Sequence[str] = (),
) -> AsyncIterator[Server]:
    """Run ``kling-hooks serve --config CONFIG --port 0 ARGS`` with JSON logs, until the block
    ends (then SIGKILL if still running). Yields once it listens (uvicorn bound its port, or
    ``serve`` logged ``listening`` on an inherited socket); ``Server.url`` is set.

    ``pass_fds``: file descriptors the process inherits (``--fd N``); ``launcher``: a command
    that execs the rest of the command line (e.g. one that sets ``LISTEN_PID``)."""
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    full_env.update(
        KLING_HOOKS_SECRET=SECRET,
        KLING_HOOKS_API_TOKEN=API_TOKEN,
        KLING_HOOKS_LOG_FORMAT="json",
        KLING_HOOKS_LOG_LEVEL="info",
    )
    if _POSTGRES_URL is not None:  # a [postgres] test: the server runs on its database
        full_env["KLING_HOOKS_DATABASE_URL"] = _POSTGRES_URL
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        *launcher,
        str(KLING_HOOKS),
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        *args,
        env=full_env,
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        pass_fds=pass_fds,
    )
    server = Server(proc)
    try:
        started = await server.until(_listens)
        if started["event"] == "listening":
            server.url = f"http://{started['address']}"
        else:
            server.url = re.findall(r"http://[\d.]+:\d+", started["event"])[0]
        yield server
    finally:
        await server.close()


def _listens(event: dict[str, Any]) -> bool:
    """uvicorn bound its address, or ``serve`` is on an inherited socket."""
    return event.get("event") == "listening" or "Uvicorn running on" in event.get("event", "")


def rows(db: Path, sql: str, *args: Any) -> list[Any]:
    """The rows of one query (``?`` marks), as ``sqlite3.Row``: by index and by name. In a
    ``[postgres]`` test, of the test's Postgres database instead of ``db``."""
    if _POSTGRES_URL is not None:
        return pg_support.rows(_POSTGRES_URL, sql.replace("?", "%s"), *args)
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, args).fetchall()


def execute(db: Path, sql: str, *args: Any) -> None:
    """Run one statement (``?`` marks) and commit: on ``db``, or in a ``[postgres]`` test on
    its Postgres database (what a crash leaves behind, written by hand)."""
    if _POSTGRES_URL is not None:
        pg_support.execute(_POSTGRES_URL, sql.replace("?", "%s"), *args)
        return
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, args)


def deliveries(db: Path) -> list[Any]:
    return rows(
        db,
        "SELECT d.*, t.task_id, t.task_status FROM deliveries d"
        " JOIN transitions t ON t.id = d.transition_id ORDER BY d.id",
    )


class Outcomes:
    """A dispatcher listener: every committed outcome, and a wait for a condition on them."""

    def __init__(self, receiver: Receiver) -> None:
        self.seen: list[tuple[Job, Outcome]] = []
        self._changed = asyncio.Condition()
        receiver.services.dispatcher.add_listener(self._on)

    def _on(self, job: Job, outcome: Outcome) -> None:
        self.seen.append((job, outcome))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(
        self, pred: Callable[[list[tuple[Job, Outcome]]], bool], timeout_s: float = 15.0
    ) -> list[tuple[Job, Outcome]]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: pred(self.seen)), timeout_s)
        return list(self.seen)

    async def ended(self, count: int) -> list[tuple[Job, Outcome]]:
        """Wait until ``count`` deliveries are done or dead."""
        final = (DeliveryState.DONE, DeliveryState.DEAD)
        return await self.until(lambda seen: sum(o.state in final for _, o in seen) >= count)

    async def states(self, *wanted: tuple[str, DeliveryState]) -> None:
        """Wait until each (plugin, state) pair has been reached at least once."""

        def reached(seen: list[tuple[Job, Outcome]]) -> bool:
            got = {(j.plugin, o.state) for j, o in seen}
            return all(w in got for w in wanted)

        await self.until(reached)
