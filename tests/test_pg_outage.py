"""When Postgres is unreachable, a receiver on it answers 503 with ``Retry-After`` (callbacks
and ``/readyz``; nothing is acknowledged that was not committed), keeps running, and recovers by
itself once the server is back: no restart (issue 13, "Scaling out" in the README).

The server goes away behind a TCP gate (``tests.pg_support.Gate``): every connection through it
is cut, and new ones are refused, as when Postgres restarts or fails over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from pydantic import SecretStr

from receiver.store.postgres import connect_writer
from tests.conftest import Receiver, make_settings, start_receiver, task_body
from tests.pg_support import Gate, rows

RETRY_PAUSE_S = 0.2


async def until_ok(
    send: Callable[[], Awaitable[httpx.Response]], timeout_s: float = 30.0
) -> httpx.Response:
    """Send again, as Kling or a client would after a 503, until a 200 (or the timeout)."""
    async with asyncio.timeout(timeout_s):
        while True:
            answer = await send()
            if answer.status_code == 200:
                return answer
            assert answer.status_code == 503, answer.text
            await asyncio.sleep(RETRY_PAUSE_S)


async def test_callbacks_get_503_while_postgres_is_away_and_are_stored_once_it_is_back(
    pg_url: str, tmp_path: Path
) -> None:
    connect_writer(pg_url).close()  # migrated, so the receiver starts at once
    gate = Gate(pg_url)
    await gate.open()
    settings = make_settings(tmp_path, kling_hooks_database_url=SecretStr(gate.url))
    try:
        async with start_receiver(settings) as r:
            await _outage(r, gate)
    finally:
        await gate.shut()
    stored = rows(pg_url, "SELECT task_id, task_status FROM transitions ORDER BY id")
    assert stored == [("700000000000001", "submitted"), ("700000000000002", "submitted")]


async def _outage(r: Receiver, gate: Gate) -> None:
    before = await r.post_callback("ext-1", task_body("700000000000001", "submitted", "ext-1"))
    assert before.status_code == 200
    await gate.shut()
    body = task_body("700000000000002", "submitted", "ext-2")
    for _ in range(3):  # each a fresh attempt to reach the server: refused at once
        away = await r.post_callback("ext-2", body)
        assert away.status_code == 503, away.text
        assert away.headers["retry-after"] == str(r.services.settings.kling_hooks_retry_after_s)
        assert away.json()["error"] == "database unavailable, retry later"
    ready = await r.http.get(f"{r.url}/readyz")
    assert ready.status_code == 503
    assert "retry-after" in ready.headers
    await gate.open()
    await until_ok(lambda: r.post_callback("ext-2", body))
    assert (await until_ok(lambda: r.http.get(f"{r.url}/readyz"))).json() == {"ok": True}
    task = await until_ok(lambda: r.get_task("ext-2"))  # the reads are back too
    assert task.json()["task_status"] == "submitted"


async def test_the_first_callback_after_postgres_came_back_is_stored_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    # Postgres restarts while no callback arrives: the writer's connection is dead, and only
    # using it tells. The first callback afterwards must not pay for that with a 503 (Kling
    # does not retry): the dead connection is replaced at BEGIN and the batch goes on.
    connect_writer(pg_url).close()
    gate = Gate(pg_url)
    await gate.open()
    settings = make_settings(tmp_path, kling_hooks_database_url=SecretStr(gate.url))
    try:
        async with start_receiver(settings) as r:
            body = task_body("700000000000003", "submitted", "ext-3")
            assert (
                await r.post_callback("ext-0", task_body("7000", "submitted", "ext-0"))
            ).status_code == 200
            await gate.shut()  # every connection cut, none used meanwhile
            await gate.open()
            first = await r.post_callback("ext-3", body)
            assert first.status_code == 200, first.text
    finally:
        await gate.shut()
    assert rows(
        pg_url, "SELECT count(*) FROM transitions WHERE task_id = %s", "700000000000003"
    ) == [(1,)]
