"""Recovery of lost callbacks: ``kling-hooks reconcile`` and ``POST /tasks/{id}/reconcile``.

Kling documents no retry of its callbacks, so a task whose terminal callback came while the
receiver was down stays ``processing``. The end-to-end test kills a real ``kling-hooks serve``
before the simulator sends the task's callbacks, restarts it, and shows that ``reconcile``
records the result and that the downloader then saves the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from receiver.cli.kling import reconcile_overdue
from receiver.serving import running
from receiver.status_client import StatusClient
from submitter import BearerAuth, KlingClient, Registrar
from submitter.protocol import now_ms
from submitter.simulator import Simulator
from submitter.tokens import CallbackTokens
from tests.conftest import (
    API_TOKEN,
    DEBUG,
    SECRET,
    Outcomes,
    Receiver,
    RecordingPlugin,
    make_settings,
    rows,
    serve,
    start_receiver,
    task_body,
)
from tests.conftest import rows as stored_rows
from tests.test_cli import cli_env, kling_hooks

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_a_reconciled_answer_is_recorded_like_a_callback_and_reaches_plugins(
    tmp_path: Path,
) -> None:
    plugin = RecordingPlugin()
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
        answer = task_body("1", "succeed", "kh-1", task_result={"images": [{"url": "u"}]})
        recorded = await r.http.post(f"{r.url}/tasks/kh-1/reconcile", json=answer, headers=AUTH)
        again = await r.http.post(f"{r.url}/tasks/1/reconcile", json=answer, headers=AUTH)
        await outcomes.ended(2)
        task = (await r.get_task("kh-1")).json()
    assert recorded.json() == {"ok": True, "verdict": "new"}
    assert again.json() == {"ok": True, "verdict": "duplicate"}
    assert task["task_status"] == "succeed" and task["task_result"] == {"images": [{"url": "u"}]}
    assert [e.task_status for e in plugin.events] == ["processing", "succeed"]
    db = tmp_path / "kling-hooks.db"
    assert [tuple(x) for x in rows(db, "SELECT task_status, source FROM transitions")] == [
        ("processing", "callback"),
        ("succeed", "reconcile"),
    ]
    assert [tuple(x) for x in rows(db, "SELECT verdict, source FROM callbacks ORDER BY id")] == [
        ("new", "callback"),
        ("new", "reconcile"),
        ("duplicate", "reconcile"),
    ]


async def test_a_reconciled_answer_of_another_task_is_refused(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
        other = await r.http.post(
            f"{r.url}/tasks/kh-1/reconcile", json=task_body("2", "succeed"), headers=AUTH
        )
        unknown = await r.http.post(
            f"{r.url}/tasks/kh-9/reconcile", json=task_body("9", "succeed"), headers=AUTH
        )
        task = (await r.get_task("kh-1")).json()
    assert (other.status_code, other.json()["error"]) == (409, "body is task 2, not 1")
    assert unknown.status_code == 404
    assert task["task_status"] == "processing"


def write_config(tmp_path: Path, downloads: Path) -> Path:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(
        f"""
kling_hooks_db = "{tmp_path / "kling-hooks.db"}"

[plugins.downloader]
directory = "{downloads}"
allow_private_hosts = true
"""
    )
    return config


class KillAtTheTerminalCallback(httpx.AsyncBaseTransport):
    """The simulator's callback transport: when the task's terminal callback is about to be
    sent, the receiver is killed with SIGKILL, so that callback meets a dead server."""

    def __init__(self) -> None:
        self.receiver: asyncio.subprocess.Process | None = None
        self._http = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        status = doc.get("data", doc)["task_status"]
        if status in ("succeed", "failed") and self.receiver is not None:
            self.receiver.send_signal(signal.SIGKILL)
            await self.receiver.wait()
        return await self._http.handle_async_request(request)

    async def aclose(self) -> None:
        await self._http.aclose()


async def test_reconcile_recovers_a_task_whose_terminal_callback_was_lost_and_saves_its_file(
    tmp_path: Path,
) -> None:
    downloads = tmp_path / "downloads"
    config = write_config(tmp_path, downloads)
    killer = KillAtTheTerminalCallback()
    simulator = Simulator(delay_s=(0.2, 0.2), seed=3, callback_retries=0, callback_transport=killer)
    async with running(simulator.app) as sim_url:
        async with serve(config, tmp_path) as down:
            killer.receiver = down.proc
            async with (
                Registrar(down.url, API_TOKEN) as registrar,
                KlingClient(
                    api_base=sim_url,
                    auth=BearerAuth("any-key"),
                    tokens=CallbackTokens([SECRET]),
                    public_url=down.url,
                    registrar=registrar,
                ) as client,
            ):
                sub = await client.submit("images/generations", {"prompt": "a lighthouse"})
            await simulator.wait_idle()  # the task ended; its terminal callback met the kill
            assert down.proc.returncode == -signal.SIGKILL
        assert simulator.tasks[sub.task_id].task_status.value == "succeed"
        [(stored,)] = stored_rows(tmp_path / "kling-hooks.db", "SELECT task_status FROM tasks")
        assert stored == "processing"  # and, without reconcile, it would stay so

        async with serve(config, tmp_path, env=DEBUG) as up:
            env = cli_env(
                kling_api_base=sim_url, kling_api_key="any-key", kling_hooks_api_token=API_TOKEN
            )
            args = ["--older-than", "0s", "--url", up.url, "--config", str(config)]
            dry = await kling_hooks("reconcile", "--dry-run", *args, env=env, cwd=tmp_path)
            run = await kling_hooks("reconcile", *args, env=env, cwd=tmp_path)
            again = await kling_hooks("reconcile", *args, env=env, cwd=tmp_path)
            await up.until(
                lambda e: e.get("event") == "delivery_done" and e.get("plugin") == "downloader"
            )
            async with httpx.AsyncClient(base_url=up.url, headers=AUTH) as api:
                task = (await api.get(f"/tasks/{sub.external_task_id}")).json()
    await killer.aclose()

    assert dry.code == 0 and "would record (dry run)" in dry.out, dry
    assert dry.out.splitlines()[-1] == "1 overdue, 1 would move forward, 0 failed"
    assert run.code == 0, run.err
    assert f"{sub.external_task_id}  images/generations  processing  succeed  recorded (new)" in (
        run.out
    )
    assert run.out.splitlines()[-1] == "1 overdue, 1 moved forward, 0 failed"
    assert again.out.splitlines()[-1] == "0 overdue, 0 moved forward, 0 failed"  # terminal now
    assert task["task_status"] == "succeed"
    assert [t["task_status"] for t in task["transitions"]] == ["submitted", "processing", "succeed"]
    sources = {
        r[0]: r[1]
        for r in stored_rows(
            tmp_path / "kling-hooks.db", "SELECT task_status, source FROM transitions"
        )
    }
    assert sources == {
        "submitted": "registration",
        "processing": "callback",
        "succeed": "reconcile",
    }
    expected = simulator.tasks[sub.task_id].task_result or {}
    assert {f["url"] for f in task["files"]} == {i["url"] for i in expected["images"]}
    for saved in task["files"]:
        content = Path(saved["path"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == saved["sha256"]


async def test_kling_get_and_list_ask_kling_itself(tmp_path: Path) -> None:
    simulator = Simulator(delay_s=(0.0, 0.0), seed=5)
    async with running(simulator.app) as sim_url:
        async with KlingClient(
            api_base=sim_url,
            auth=BearerAuth("any-key"),
            tokens=CallbackTokens([SECRET]),
            public_url="http://127.0.0.1:1",  # nothing listens: the callbacks go nowhere
        ) as client:
            subs = [await client.submit("videos/text2video", {"prompt": p}) for p in "ab"]
        await simulator.wait_idle()
        env = cli_env(kling_api_base=sim_url, kling_api_key="any-key")
        got = await kling_hooks(
            "kling", "get", "videos/text2video", subs[0].external_task_id, env=env, cwd=tmp_path
        )
        as_json = await kling_hooks(
            "kling", "get", "videos/text2video", subs[0].task_id, "--json", env=env, cwd=tmp_path
        )
        listed = await kling_hooks(
            "kling", "list", "videos/text2video", "--page-size", "1", env=env, cwd=tmp_path
        )
        bad = await kling_hooks(
            "kling", "list", "videos/text2video", "--page-size", "501", env=env, cwd=tmp_path
        )
    assert got.code == 0, got.err
    assert f"task_id               {subs[0].task_id}" in got.out
    assert json.loads(as_json.out)["task_id"] == subs[0].task_id
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == [
        "task_id",
        "external_task_id",
        "task_status",
        "updated_at",
    ]
    assert len(listed.out.splitlines()) == 2  # one page of one
    assert bad.code == 2 and "500" in bad.err and len(bad.err.splitlines()) == 1


@contextlib.asynccontextmanager
async def two_overdue_tasks(
    r: Receiver, kling_url: str, **client_options: Any
) -> AsyncIterator[tuple[StatusClient, KlingClient]]:
    """Two tasks created at the Kling at ``kling_url`` and registered with ``r``; yields the
    status API client and the Kling client ``reconcile_overdue`` takes."""
    async with (
        Registrar(r.url, API_TOKEN) as registrar,
        StatusClient(r.url, API_TOKEN) as api,
        KlingClient(
            api_base=kling_url,
            auth=BearerAuth("k"),
            tokens=CallbackTokens([SECRET]),
            public_url=r.url,
            registrar=registrar,
            **client_options,
        ) as client,
    ):
        subs = [await client.submit("videos/text2video", {"prompt": p}) for p in "ab"]
        assert all(s.registered for s in subs)
        yield api, client


async def test_reconcile_queries_no_task_younger_than_the_cutoff_and_keeps_the_rate(
    tmp_path: Path,
) -> None:
    simulator = Simulator(delay_s=(30.0, 30.0), seed=8)  # the tasks stay submitted
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with start_receiver(make_settings(tmp_path)) as r, running(simulator.app) as sim_url:
        async with two_overdue_tasks(r, sim_url) as (api, client):
            before = len(simulator.requests)
            young = await reconcile_overdue(api, client, now_ms() - 3_600_000, 10, 2.0)
            assert (young, len(simulator.requests)) == ([], before)  # nothing asked
            old = await reconcile_overdue(api, client, now_ms() + 1, 10, 2.0, sleep=sleep)
        await simulator.aclose()
    assert [d.result for d in old] == ["unchanged", "unchanged"]
    gets = [q for q in simulator.requests[before:] if q.method == "GET"]
    assert len(gets) == 2 and waits == [0.5]  # one query per task, 1/rate s between them


def refusing_kling(code: int, http_status: int) -> Starlette:
    """A Kling that creates tasks but answers every query with error ``code``."""
    created: dict[str, str] = {}

    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        task_id = str(10**17 + len(created))
        created[task_id] = body["external_task_id"]
        data = {"task_id": task_id, "task_status": "submitted", "created_at": 1, "updated_at": 1}
        data["task_info"] = {"external_task_id": body["external_task_id"]}
        return JSONResponse({"code": 0, "message": "SUCCEED", "request_id": "r", "data": data})

    async def query(request: Request) -> JSONResponse:
        refusal = {"code": code, "message": "refused", "request_id": "r", "data": None}
        return JSONResponse(refusal, status_code=http_status)

    return Starlette(
        routes=[
            routing.Route("/v1/videos/text2video", create, methods=["POST"]),
            routing.Route("/v1/videos/text2video/{id}", query, methods=["GET"]),
        ]
    )


@pytest.mark.parametrize(
    ("code", "http_status", "first", "second"),
    [
        (1302, 429, "error: ", "not queried: Kling refuses for rate (1302)"),
        (1203, 404, "skipped: unknown at Kling (1203)", "skipped: unknown at Kling (1203)"),
    ],
)
async def test_reconcile_stops_when_kling_keeps_refusing_for_rate_and_skips_unknown_tasks(
    tmp_path: Path, code: int, http_status: int, first: str, second: str
) -> None:
    async def no_wait(seconds: float) -> None:
        return None

    async with (
        start_receiver(make_settings(tmp_path)) as r,
        running(refusing_kling(code, http_status)) as kling_url,
    ):
        async with two_overdue_tasks(r, kling_url, max_attempts=2, sleep=no_wait) as (api, client):
            done = await reconcile_overdue(api, client, now_ms() + 1, 10, 2.0, sleep=no_wait)
    assert done[0].result.startswith(first)
    assert done[1].result == second


async def test_a_client_made_for_queries_only_refuses_to_submit() -> None:
    async with KlingClient(api_base="http://127.0.0.1:1", auth=BearerAuth("k")) as client:
        with pytest.raises(ValueError, match="it only queries"):
            await client.submit("videos/text2video", {"prompt": "x"})
