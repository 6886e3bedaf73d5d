"""Several ``kling-hooks serve`` replicas on one Postgres database (issue 13): real
subprocesses, real HTTP, the webhook plugin against a local sink.

* the same callback sent 40 times, spread over 2 or 3 replicas at once, records one
  transition and one delivery;
* a replica SIGKILLed in the middle of a delivery has it completed by another replica once
  its lease runs out (the lease: the plugin's ``timeout_s`` plus a margin);
* the crash-under-load suite with two replicas behind one socket, one killed at random three
  times, loses no acknowledged callback and finishes every delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.suites import crash
from receiver.backends import LEASE_MARGIN_MS
from submitter.tokens import CallbackTokens
from tests.conftest import DEBUG, KLING_HOOKS, SECRET, Server, serve, task_body
from tests.sinks import Answer, Sink, start_sink
from tests.test_pg_writes import rows

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TIMEOUT_S = 2  # the webhook's timeout_s: its lease is this plus LEASE_MARGIN_MS


def write_config(tmp_path: Path, hook: Sink) -> Path:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(
        f"""
[plugins.webhook]
url = "{hook.url}/hook"
secret = "{WEBHOOK_SECRET}"
timeout_s = {TIMEOUT_S}
retry_schedule_s = [0.2, 0.2, 0.2]
"""
    )
    return config


@contextlib.asynccontextmanager
async def replicas(url: str, tmp_path: Path, hook: Sink, count: int) -> AsyncIterator[list[Server]]:
    """``count`` ``serve`` processes on the database ``url``, each on its own port."""
    config = write_config(tmp_path, hook)
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(
                stack.enter_async_context(
                    serve(config, tmp_path, env=_replica_env(url, f"replica-{n}"))
                )
                for n in range(count)
            )
        )
        yield list(started)


def _replica_env(url: str, name: str) -> dict[str, str]:
    return {**DEBUG, "KLING_HOOKS_DATABASE_URL": url, "KLING_HOOKS_REPLICA_ID": name}


def _done_by(server: Server) -> list[dict[str, Any]]:
    return [e for e in server.events if e.get("event") == "delivery_done"]


async def _first_done(servers: list[Server], timeout_s: float = 30) -> None:
    """Wait until one of ``servers`` logs a ``delivery_done``."""
    waits = [
        asyncio.ensure_future(s.until(lambda e: e.get("event") == "delivery_done", timeout_s))
        for s in servers
    ]
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for w in done:
        w.result()


@pytest.mark.parametrize("count", [2, 3])
async def test_forty_identical_callbacks_over_replicas_record_one_transition(
    pg_url: str, tmp_path: Path, count: int
) -> None:
    body = task_body("840000000000001", "succeed", "same-1")
    async with start_sink() as hook, replicas(pg_url, tmp_path, hook, count) as servers:
        urls = [CallbackTokens([SECRET]).callback_url(s.url, "same-1") for s in servers]
        async with httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(http.post(urls[n % count], json=body) for n in range(40))
            )
        assert [a.status_code for a in answers] == [200] * 40
        await _first_done(servers)  # one replica delivered it
    assert sum(len(_done_by(s)) for s in servers) == 1
    assert rows(pg_url, "SELECT task_id, task_status FROM transitions") == [
        ("840000000000001", "succeed")
    ]
    verdicts = rows(pg_url, "SELECT verdict, count(*) FROM callbacks GROUP BY verdict")
    assert dict(verdicts) == {"new": 1, "duplicate": 39}
    assert rows(pg_url, "SELECT state, attempts FROM deliveries") == [("done", 1)]
    assert len(hook.requests) == 1


async def test_a_replica_killed_mid_delivery_has_it_completed_by_another_after_the_lease(
    pg_url: str, tmp_path: Path
) -> None:
    async with start_sink() as hook:
        hook.answer(Answer(hang=True))  # the first attempt never gets its answer
        config = write_config(tmp_path, hook)
        async with serve(config, tmp_path, env=_replica_env(pg_url, "a")) as a:
            url = CallbackTokens([SECRET]).callback_url(a.url, "kill-1")
            async with httpx.AsyncClient(timeout=30) as http:
                sent = await http.post(url, json=task_body("840000000000002", "succeed", "kill-1"))
            assert sent.status_code == 200
            (first,) = await hook.wait_for(1)  # a is in the middle of the delivery
            a.proc.kill()  # before the attempt's timeout_s: it never records an outcome
            killed_at = asyncio.get_running_loop().time()
            await a.proc.wait()
            async with serve(config, tmp_path, env=_replica_env(pg_url, "b")) as b:
                done = await b.until(
                    lambda e: e.get("event") == "delivery_done",
                    timeout_s=TIMEOUT_S + LEASE_MARGIN_MS / 1000 + 30,
                )
                waited_s = asyncio.get_running_loop().time() - killed_at
    second = hook.requests[1]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]  # the same event
    assert done["attempt"] == 2
    assert waited_s < TIMEOUT_S + LEASE_MARGIN_MS / 1000 + 5  # taken over once the lease ran out
    assert rows(pg_url, "SELECT state, attempts, claimed_by FROM deliveries") == [("done", 2, None)]


async def test_crash_suite_on_two_replicas_loses_nothing_and_finishes_every_delivery(
    pg_url: str, tmp_path: Path
) -> None:
    report = await crash.run(full=False, workdir=tmp_path, database_url=pg_url, replicas=2)
    print(report.format())
    assert report.ok, report.format()


async def test_a_second_replica_under_a_running_replicas_id_stops_with_one_line(
    pg_url: str, tmp_path: Path
) -> None:
    # Two replicas under one id would take each other's claims back at start and run one
    # delivery twice at once: the second one does not start.
    async with start_sink() as hook, replicas(pg_url, tmp_path, hook, 1):  # "replica-0"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
        env.update(_replica_env(pg_url, "replica-0"), KLING_HOOKS_SECRET=SECRET)
        proc = await asyncio.create_subprocess_exec(
            str(KLING_HOOKS), "serve", "--port", "0", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode().splitlines() == [
        "error: KLING_HOOKS_REPLICA_ID=replica-0 is in use by a running replica of this"
        " database (unset, it is the host name): give each replica its own"
    ]
