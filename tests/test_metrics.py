"""``GET /metrics``: a real receiver under uvicorn is driven through every callback verdict,
every rejection reason and deliveries that succeed, retry and die; scrapes before, during and
after show each metric move, parsed with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import platform
import sqlite3
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from receiver.metrics import Rejection
from receiver.models import DeliveryState, Verdict
from receiver.plugins import PluginSettings
from submitter.protocol import now_ms
from tests.conftest import (
    API_TOKEN,
    Outcomes,
    Receiver,
    RecordingPlugin,
    make_settings,
    start_receiver,
    task_body,
)
from tests.test_limits import answer_of, connections, open_request

pytestmark = pytest.mark.both_backends

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
OUTCOMES = (DeliveryState.DONE, DeliveryState.FAILED, DeliveryState.DEAD)
PLUGINS = ("ok", "flaky", "doomed", "stuck")
TWENTY_MINUTES_MS = 20 * 60 * 1000


async def get_metrics(r: Receiver, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return await r.http.get(f"{r.url}/metrics", headers=headers)


async def scrape(r: Receiver, token: str = API_TOKEN) -> Samples:
    """Every sample of one scrape, by (sample name, labels)."""
    answer = await get_metrics(r, token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` of every sample ``name`` (one label)."""
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name}


def attempts(samples: Samples) -> dict[tuple[str, str], float]:
    name = "kling_hooks_delivery_attempts_total"
    return {
        (dict(k)["plugin"], dict(k)["outcome"]): v for (n, k), v in samples.items() if n == name
    }


class Clock:
    """The wall clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms


async def answered_503_while_locked(db: Path, post: Callable[[], Any]) -> int:
    """The status ``post()`` is answered while another connection holds the write lock."""
    locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    # In a thread: a write of the receiver's own in flight must finish on the event loop.
    await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
    try:
        return int((await post()).status_code)
    finally:
        locker.execute("ROLLBACK")
        locker.close()


@pytest.mark.sqlite_only  # its 503 comes from SQLite's write lock held by another connection
async def test_every_metric_moves_with_callbacks_rejections_and_deliveries(
    tmp_path: Path,
) -> None:
    once = PluginSettings(retry_schedule_s=[0.05])
    gate = asyncio.Event()
    plugins = [
        RecordingPlugin(name="ok"),
        RecordingPlugin(once, name="flaky", fail_first=1),
        RecordingPlugin(once, name="doomed", fail_first=2),
        RecordingPlugin(name="stuck", gate=gate),
    ]
    settings = make_settings(
        tmp_path,
        kling_hooks_max_body_bytes=4096,
        kling_hooks_busy_timeout_ms=0,
        kling_hooks_max_in_flight=1,  # one slow body holds it: the next callback is overloaded
        kling_hooks_body_timeout_s=0.5,
    )
    db = settings.kling_hooks_db
    clock = Clock()
    async with start_receiver(settings, plugins, clock_ms=clock) as r:
        outcomes = Outcomes(r)
        before = await scrape(r)

        locked = await answered_503_while_locked(
            db, lambda: r.post_callback("kh-9", task_body("9", "succeed", "kh-9"))
        )
        assert locked == 503
        verdicts = []
        for body in (
            task_body("1", "succeed", "kh-1"),
            task_body("1", "succeed", "kh-1"),
            task_body("1", "processing", "kh-1"),
        ):
            verdicts.append((await r.post_callback("kh-1", body)).json()["verdict"])
        assert verdicts == ["new", "duplicate", "stale"]
        url = r.callback_url("kh-2")
        refusals: list[tuple[Rejection, int, str, dict[str, Any]]] = [
            (
                Rejection.TOKEN,
                401,
                f"{r.url}/callbacks/kh-2/forged",
                {"json": task_body("2", "succeed")},
            ),
            (Rejection.NOT_JSON, 400, url, {"content": b"{nope"}),
            (Rejection.NOT_JSON, 400, url, {"content": b"\xff\xfe"}),  # not UTF-8
            (Rejection.NOT_A_TASK, 422, url, {"json": {"task_status": "succeed"}}),
            (Rejection.OTHER_TASK, 409, url, {"json": task_body("2", "succeed", "kh-other")}),
            # task 1 belongs to kh-1: the store refuses it on another URL
            (Rejection.OTHER_TASK, 409, url, {"json": task_body("1", "succeed")}),
            (Rejection.TOO_LARGE, 413, url, {"content": b"x" * 5000}),
        ]
        for reason, status, target, kw in refusals:
            answer = await r.http.post(target, **kw)
            assert (answer.status_code, answer.json()["ok"]) == (status, False), reason
        async with connections(r.url) as opened:
            body = json.dumps(task_body("3", "succeed", "kh-3")).encode()
            slow, _ = await open_request(opened, r, "kh-3", body, 10)
            async with asyncio.timeout(5):  # the slow one is in the app: the limit is reached
                while (await r.http.get(f"{r.url}/healthz")).status_code != 503:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            overloaded = await r.post_callback("kh-4", task_body("4", "succeed", "kh-4"))
            too_slow = await answer_of(slow)
        assert (overloaded.status_code, too_slow[0]) == (503, 408)
        refusals += [
            (Rejection.OVERLOADED, 503, "", {}),
            (Rejection.TOO_SLOW, 408, "", {}),
        ]

        await outcomes.states(
            ("ok", DeliveryState.DONE),
            ("flaky", DeliveryState.DONE),
            ("doomed", DeliveryState.DEAD),
        )
        await plugins[3].wait_for(1)  # stuck: running, held by the gate
        clock.offset_ms = TWENTY_MINUTES_MS
        during = await scrape(r)
        size_now = sum(os.stat(p).st_size for p in (db, db.with_name(db.name + "-wal")))

        gate.set()
        await outcomes.states(("stuck", DeliveryState.DONE))
        after = await scrape(r)

    # callbacks by verdict: each verdict once
    assert labelled(before, "kling_hooks_callbacks_total", "verdict") == {v: 0 for v in Verdict}
    assert labelled(during, "kling_hooks_callbacks_total", "verdict") == {v: 1 for v in Verdict}

    # rejections by reason: every reason exported from the start, at 0; then what was sent
    sent = collections.Counter([Rejection.STORE_UNAVAILABLE, *(x[0] for x in refusals)])
    assert set(sent) == set(Rejection), "the test sends every reason"
    reasons = "kling_hooks_callback_rejections_total"
    assert labelled(before, reasons, "reason") == {r: 0 for r in Rejection}
    assert labelled(during, reasons, "reason") == {r.value: n for r, n in sent.items()}

    # latency: every callback observed, whatever its answer
    # (not the overloaded one: the in-flight limit answers before the handler runs)
    handled = len(verdicts) + sum(sent.values()) - sent[Rejection.OVERLOADED]
    count = "kling_hooks_callback_duration_seconds_count"
    assert value(before, count) == 0
    assert value(during, count) == handled
    assert value(during, "kling_hooks_callback_duration_seconds_bucket", le="+Inf") == handled
    assert value(during, "kling_hooks_callback_duration_seconds_sum") > 0

    # attempts by plugin and outcome: every series there at 0 before
    assert attempts(before) == {(p, o.value): 0 for p in PLUGINS for o in OUTCOMES}
    moved = {k: v for k, v in attempts(during).items() if v}
    assert moved == {
        ("ok", "done"): 1,
        ("flaky", "failed"): 1,
        ("flaky", "done"): 1,
        ("doomed", "failed"): 1,
        ("doomed", "dead"): 1,
    }
    assert attempts(after)[("stuck", "done")] == 1

    # outbox gauges, computed at scrape time
    pending, age = (
        "kling_hooks_deliveries_pending",
        "kling_hooks_delivery_oldest_pending_age_seconds",
    )
    dead = "kling_hooks_deliveries_dead"
    for name in (pending, age, dead):
        assert labelled(before, name, "plugin") == {p: 0 for p in PLUGINS}
    assert labelled(during, pending, "plugin") == {"ok": 0, "flaky": 0, "doomed": 0, "stuck": 1}
    during_age = labelled(during, age, "plugin")
    assert TWENTY_MINUTES_MS / 1000 <= during_age.pop("stuck") < TWENTY_MINUTES_MS / 1000 + 60
    assert during_age == {"ok": 0, "flaky": 0, "doomed": 0}
    assert labelled(during, dead, "plugin") == {"ok": 0, "flaky": 0, "doomed": 1, "stuck": 0}
    assert labelled(after, pending, "plugin") == {p: 0 for p in PLUGINS}
    assert labelled(after, age, "plugin") == {p: 0 for p in PLUGINS}
    assert labelled(after, dead, "plugin")["doomed"] == 1

    # the database: its file and its WAL
    size = "kling_hooks_database_size_bytes"
    assert value(during, size) == size_now > value(before, size) > 0

    # no per-series start times (``_created``): one series per metric and label set
    assert not [name for name, _ in during if name.endswith("_created")]

    # build info
    build = {
        "version": version("kling-hooks"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    assert value(before, "kling_hooks_build_info", **build) == 1


async def test_metrics_take_the_api_token_when_no_metrics_token_is_set(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        for token in (None, "wrong"):
            answer = await get_metrics(r, token)
            assert answer.status_code == 401
            assert answer.json() == {"ok": False, "error": "missing or invalid bearer token"}
            assert answer.headers["www-authenticate"] == "Bearer"
        assert "kling_hooks_build_info" in {
            f.name for f in text_string_to_metric_families((await get_metrics(r, API_TOKEN)).text)
        }


async def test_a_metrics_token_replaces_the_api_token_on_metrics_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_metrics_token=SecretStr("scrape-me"))
    async with start_receiver(settings) as r:
        for token in (None, API_TOKEN):
            answer = await get_metrics(r, token)
            assert (answer.status_code, answer.json()["ok"]) == (401, False)
        assert (await get_metrics(r, "scrape-me")).status_code == 200
        plugins = await r.http.get(
            f"{r.url}/plugins", headers={"Authorization": "Bearer scrape-me"}
        )
        assert plugins.status_code == 401  # the metrics token opens nothing else


async def test_two_receivers_in_one_process_count_apart(tmp_path: Path) -> None:
    # (on Postgres the two are replicas of one database: each needs its own replica id)
    first = make_settings(tmp_path / "a", kling_hooks_replica_id="first")
    second = make_settings(tmp_path / "b", kling_hooks_replica_id="second")
    async with start_receiver(first) as a, start_receiver(second) as b:
        assert (await a.post_callback("kh-1", task_body("1", "succeed", "kh-1"))).is_success
        counted_a, counted_b = await scrape(a), await scrape(b)
    assert value(counted_a, "kling_hooks_callbacks_total", verdict="new") == 1
    assert value(counted_b, "kling_hooks_callbacks_total", verdict="new") == 0
