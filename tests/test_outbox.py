"""The outbox and the dispatcher: at-least-once delivery, retries, dead letters, isolation,
shutdown and recovery, through a real receiver under uvicorn with recording plugins."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from receiver.models import DeliveryState, Verdict
from receiver.plugins import (
    Event,
    PermanentError,
    PluginSettings,
    RetryAfter,
    SavedFile,
)
from receiver.store.deliveries import DeliveryOp
from receiver.transitions import IncomingCallback
from receiver.writer import Writer
from submitter.protocol import TaskObject
from tests.conftest import (
    API_TOKEN,
    Outcomes,
    RecordingPlugin,
    deliveries,
    execute,
    make_settings,
    start_receiver,
    task_body,
)

pytestmark = pytest.mark.both_backends

FAST = [0.05, 0.05]


def succeed(task_id: str, ext: str, **extra: Any) -> dict[str, Any]:
    result = {"images": [{"index": 0, "url": f"https://cdn.example.com/{task_id}.png"}]}
    return task_body(task_id, "succeed", ext, final_unit_deduction="1", task_result=result, **extra)


async def test_new_transition_writes_one_delivery_per_interested_plugin(tmp_path: Path) -> None:
    everything = RecordingPlugin(name="everything")
    finals = RecordingPlugin(PluginSettings(statuses=["succeed", "failed"]), name="finals")
    async with start_receiver(make_settings(tmp_path), [everything, finals]) as r:
        outcomes = Outcomes(r)
        assert (
            await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
        ).status_code == 200
        assert (await r.post_callback("kh-1", succeed("1", "kh-1"))).status_code == 200
        await outcomes.until(lambda seen: len(seen) == 3)
    got = [
        (d["plugin"], d["task_status"], d["state"]) for d in deliveries(tmp_path / "kling-hooks.db")
    ]
    assert sorted(got) == [
        ("everything", "processing", "done"),
        ("everything", "succeed", "done"),
        ("finals", "succeed", "done"),
    ]
    assert [e.task_status for e in finals.events] == ["succeed"]


async def test_duplicate_and_stale_callbacks_write_no_delivery(tmp_path: Path) -> None:
    plugin = RecordingPlugin()
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        for body in (
            succeed("1", "kh-1"),
            succeed("1", "kh-1"),
            task_body("1", "processing", "kh-1"),
        ):
            assert (await r.post_callback("kh-1", body)).status_code == 200
        await outcomes.until(lambda seen: len(seen) == 1)
    assert len(deliveries(tmp_path / "kling-hooks.db")) == 1
    assert [e.idempotency_key for e in plugin.events] == ["1:succeed"]


async def test_event_carries_the_transition_and_the_registered_request(tmp_path: Path) -> None:
    plugin = RecordingPlugin()
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        registration = {
            "route": "images/generations",
            "task_id": "7",
            "external_task_id": "kh-7",
            "created_at": 1774805076166,
            "request": {"prompt": "a lighthouse", "n": 1},
        }
        answer = await r.http.post(
            f"{r.url}/tasks", json=registration, headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        assert answer.status_code == 200
        await r.post_callback("kh-7", task_body("7", "processing", "kh-7", task_status_msg="busy"))
        await r.post_callback("kh-7", succeed("7", "kh-7"))
        await outcomes.until(lambda seen: len(seen) == 3)
    by_status = {e.task_status.value: e for e in plugin.events}
    assert set(by_status) == {"submitted", "processing", "succeed"}
    done = by_status["succeed"]
    assert done.idempotency_key == "7:succeed"
    assert (done.task_id, done.external_task_id, done.route) == ("7", "kh-7", "images/generations")
    assert done.request == {"prompt": "a lighthouse", "n": 1}
    assert done.prompt == "a lighthouse"
    assert done.final_unit_deduction == "1"
    assert done.task_result == {"images": [{"index": 0, "url": "https://cdn.example.com/7.png"}]}
    assert (done.created_at, done.updated_at) == (1774805076166, 1774805090000)
    assert done.attempt == 1
    # Each event is the transition as it was accepted, not the task's latest state.
    assert by_status["processing"].task_status_msg == "busy"
    assert by_status["processing"].task_result is None


async def test_failed_delivery_is_retried_with_the_same_idempotency_key(tmp_path: Path) -> None:
    plugin = RecordingPlugin(PluginSettings(retry_schedule_s=FAST), fail_first=2)
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("recording", DeliveryState.DONE))
    assert [(e.idempotency_key, e.attempt) for e in plugin.events] == [
        ("1:succeed", 1),
        ("1:succeed", 2),
        ("1:succeed", 3),
    ]
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["state"], d["attempts"], d["last_error"], d["next_attempt_at"]) == (
        "done",
        3,
        None,
        None,
    )


async def test_delivery_is_dead_after_the_last_attempt_with_its_last_error(tmp_path: Path) -> None:
    plugin = RecordingPlugin(
        PluginSettings(retry_schedule_s=FAST), fail_first=99, error=ValueError("target is down")
    )
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("recording", DeliveryState.DEAD))
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["state"], d["attempts"]) == ("dead", 3)  # 1 + len(retry_schedule_s)
    assert d["last_error"] == "ValueError: target is down"
    assert d["next_attempt_at"] is None
    assert len(plugin.events) == 3


async def test_retry_after_sets_the_next_attempt(tmp_path: Path) -> None:
    plugin = RecordingPlugin(fail_first=1, error=RetryAfter(3600, "slow down"))
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        [(_, outcome)] = await outcomes.until(lambda seen: len(seen) == 1)
        [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["state"], d["last_error"]) == ("failed", "RetryAfter: slow down")
    # The wait is the plugin's, exactly (no jitter), counted from the failure.
    assert d["next_attempt_at"] - d["updated_at"] == pytest.approx(3_600_000, abs=50)
    assert outcome.next_attempt_at == d["next_attempt_at"]


async def test_permanent_error_is_dead_at_once(tmp_path: Path) -> None:
    plugin = RecordingPlugin(fail_first=1, error=PermanentError("URL refused"))
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("recording", DeliveryState.DEAD))
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["state"], d["attempts"], d["last_error"]) == (
        "dead",
        1,
        "PermanentError: URL refused",
    )


async def test_hanging_plugin_times_out_without_delaying_another(tmp_path: Path) -> None:
    hanging = RecordingPlugin(
        PluginSettings(timeout_s=1.0, retry_schedule_s=[]), name="hanging", hang=True
    )
    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [hanging, healthy]) as r:
        outcomes = Outcomes(r)
        for i in range(3):
            await r.post_callback(f"kh-{i}", succeed(str(i), f"kh-{i}"))
        seen = await outcomes.until(lambda seen: len(seen) == 6)
    order = [(j.plugin, o.state) for j, o in seen]
    # All of healthy's deliveries were done before the first of hanging's timed out.
    assert order[:3] == [("healthy", DeliveryState.DONE)] * 3
    assert order[3:] == [("hanging", DeliveryState.DEAD)] * 3
    assert {o.last_error for _, o in seen[3:]} == {
        "timeout: the handler did not finish within timeout_s"
    }


async def test_raising_plugin_does_not_stop_another(tmp_path: Path) -> None:
    broken = RecordingPlugin(PluginSettings(retry_schedule_s=[]), name="broken", fail_first=99)
    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [broken, healthy]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("broken", DeliveryState.DEAD), ("healthy", DeliveryState.DONE))
    assert len(healthy.events) == 1


async def test_concurrency_limit_caps_running_handlers(tmp_path: Path) -> None:
    gate = asyncio.Event()
    plugin = RecordingPlugin(PluginSettings(concurrency=2), gate=gate)
    db = tmp_path / "kling-hooks.db"
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        for i in range(5):
            await r.post_callback(f"kh-{i}", succeed(str(i), f"kh-{i}"))
        await plugin.wait_for(2)
        states = sorted(d["state"] for d in deliveries(db))
        assert states == ["pending", "pending", "pending", "running", "running"]
        assert len(plugin.events) == 2
        gate.set()
        await outcomes.until(lambda seen: len(seen) == 5)
    assert {d["state"] for d in deliveries(db)} == {"done"}


async def test_route_filter_skips_tasks_on_other_or_unknown_routes(tmp_path: Path) -> None:
    videos = RecordingPlugin(PluginSettings(routes=["videos/text2video"]), name="videos")
    everything = RecordingPlugin(name="everything")
    async with start_receiver(make_settings(tmp_path), [videos, everything]) as r:
        outcomes = Outcomes(r)
        for task_id, route in (("1", "videos/text2video"), ("2", "images/generations")):
            await r.http.post(
                f"{r.url}/tasks",
                json={"route": route, "task_id": task_id, "external_task_id": f"kh-{task_id}"},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )
            await r.post_callback(f"kh-{task_id}", succeed(task_id, f"kh-{task_id}"))
        await r.post_callback("kh-3", succeed("3", "kh-3"))  # never registered: route unknown
        await outcomes.until(lambda seen: len(seen) == 7)
    assert sorted((e.task_id, e.task_status.value) for e in videos.events) == [
        ("1", "submitted"),
        ("1", "succeed"),
    ]
    assert len(everything.events) == 5


async def test_graceful_shutdown_waits_for_a_running_delivery(tmp_path: Path) -> None:
    gate = asyncio.Event()
    plugin = RecordingPlugin(gate=gate)
    settings = make_settings(tmp_path, kling_hooks_shutdown_grace_s=30)
    async with start_receiver(settings, [plugin]) as r:
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await plugin.wait_for(1)
        # The handler is running as shutdown begins; it finishes within the grace period.
        asyncio.get_running_loop().call_later(0.2, gate.set)
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["state"], d["attempts"]) == ("done", 1)


async def test_delivery_cut_by_shutdown_is_finished_after_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_shutdown_grace_s=0.1)
    hanging = RecordingPlugin(hang=True)
    async with start_receiver(settings, [hanging]) as r:
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await hanging.wait_for(1)
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert d["state"] == "failed"
    assert d["last_error"] == "interrupted: the receiver shut down during this attempt"

    healthy = RecordingPlugin()
    async with start_receiver(settings, [healthy]) as r:
        outcomes = Outcomes(r)
        await outcomes.states(("recording", DeliveryState.DONE))
    assert [(e.idempotency_key, e.attempt) for e in healthy.events] == [("1:succeed", 2)]


async def test_restart_resumes_a_delivery_left_running(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = RecordingPlugin(PluginSettings(retry_schedule_s=[3600]), fail_first=1)
    async with start_receiver(settings, [first]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.until(lambda seen: len(seen) == 1)
    db = tmp_path / "kling-hooks.db"
    # What a SIGKILL during an attempt leaves behind (tests/test_crash.py does it for real).
    execute(db, "UPDATE deliveries SET state = 'running', next_attempt_at = NULL")
    second = RecordingPlugin()
    async with start_receiver(settings, [second]) as r:
        outcomes = Outcomes(r)
        await outcomes.states(("recording", DeliveryState.DONE))
    [d] = deliveries(db)
    assert (d["state"], d["attempts"]) == ("done", 2)
    assert [e.attempt for e in second.events] == [2]


async def test_plugin_that_cannot_start_leaves_the_others_running(tmp_path: Path) -> None:
    class CannotStart(RecordingPlugin):
        async def start(self) -> None:
            raise OSError("directory is read-only")

    broken = CannotStart(name="broken")
    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [broken, healthy]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("healthy", DeliveryState.DONE))
        answer = await r.http.get(
            f"{r.url}/plugins", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
    started = {p["name"]: p["started"] for p in answer.json()["plugins"]}
    assert started == {"broken": False, "healthy": True}
    by_plugin = {d["plugin"]: d["state"] for d in deliveries(tmp_path / "kling-hooks.db")}
    assert by_plugin == {"broken": "pending", "healthy": "done"}
    assert broken.events == []


async def test_a_wants_that_raises_does_not_fail_the_callback(tmp_path: Path) -> None:
    class Picky(RecordingPlugin):
        def wants(self, task_status: str, route: str | None) -> bool:
            raise KeyError(task_status)

    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [Picky(name="picky"), healthy]) as r:
        outcomes = Outcomes(r)
        answer = await r.post_callback("kh-1", succeed("1", "kh-1"))
        assert answer.json() == {"ok": True, "verdict": "new"}
        await outcomes.states(("healthy", DeliveryState.DONE))
    assert [d["plugin"] for d in deliveries(tmp_path / "kling-hooks.db")] == ["healthy"]


async def test_a_plugin_returning_unstorable_files_fails_its_own_delivery_only(
    tmp_path: Path,
) -> None:
    class Sloppy(RecordingPlugin):
        async def handle(self, event: Event) -> Any:
            await super().handle(event)
            return [SavedFile("https://cdn.example.com/a.png", Path("/tmp/a.png"), 1, "ab")]  # type: ignore[arg-type]

    sloppy = Sloppy(PluginSettings(retry_schedule_s=[]), name="sloppy")
    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [sloppy, healthy]) as r:
        outcomes = Outcomes(r)
        answers = [await r.post_callback(f"kh-{i}", succeed(str(i), f"kh-{i}")) for i in range(5)]
        await outcomes.ended(10)
    assert {a.status_code for a in answers} == {200}
    by_plugin = {(d["plugin"], d["state"]) for d in deliveries(tmp_path / "kling-hooks.db")}
    assert by_plugin == {("sloppy", "dead"), ("healthy", "done")}
    [error] = {d["last_error"] for d in deliveries(tmp_path / "kling-hooks.db") if d["last_error"]}
    assert error.startswith("TypeError: handle() must return None or SavedFile(")


async def test_a_handler_raising_cancelled_error_is_an_ordinary_failure(tmp_path: Path) -> None:
    class Cancelling(RecordingPlugin):
        async def handle(self, event: Event) -> None:
            await super().handle(event)
            raise asyncio.CancelledError

    plugin = Cancelling(PluginSettings(retry_schedule_s=FAST))
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("recording", DeliveryState.DEAD))
    [d] = deliveries(tmp_path / "kling-hooks.db")
    assert (d["attempts"], d["last_error"]) == (
        3,
        "RuntimeError: the handler raised CancelledError",
    )
    assert len(plugin.events) == 3  # the schedule, not a hot loop


async def test_a_delivery_interrupted_on_its_last_attempt_is_dead_after_restart(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    first = RecordingPlugin(PluginSettings(retry_schedule_s=[3600]), fail_first=1)
    async with start_receiver(settings, [first]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.until(lambda seen: len(seen) == 1)
    db = tmp_path / "kling-hooks.db"
    # The second (last) attempt was running when the process died, say because it crashed it.
    execute(db, "UPDATE deliveries SET state = 'running', attempts = 2")
    second = RecordingPlugin(PluginSettings(retry_schedule_s=[3600]))
    async with start_receiver(settings, [second]):
        pass
    [d] = deliveries(db)
    assert (d["state"], d["attempts"]) == ("dead", 2)
    assert (
        d["last_error"]
        == "interrupted: the receiver stopped during this attempt (its last attempt)"
    )
    assert second.events == []


async def test_a_plugin_whose_start_hangs_is_left_out_after_its_timeout(tmp_path: Path) -> None:
    class Stuck(RecordingPlugin):
        async def start(self) -> None:
            await asyncio.Event().wait()

    stuck = Stuck(PluginSettings(timeout_s=0.2), name="stuck")
    healthy = RecordingPlugin(name="healthy")
    async with start_receiver(make_settings(tmp_path), [stuck, healthy]) as r:
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.states(("healthy", DeliveryState.DONE))
        assert not r.services.dispatcher.is_started("stuck")


async def test_a_failing_outbox_operation_undoes_only_its_own_writes(tmp_path: Path) -> None:
    class Poison(DeliveryOp[None]):
        def apply(self, conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('poison', 'x')")
            raise ValueError("a bad value, after a write")

    db = tmp_path / "kling-hooks.db"
    writer = await Writer.open(db)
    writer.start()
    body = succeed("1", "kh-1")
    callback = IncomingCallback("kh-1", TaskObject.model_validate(body), json.dumps(body), 1)
    try:
        # Queued together, so they share one group-commit transaction.
        poisoned, verdict = await asyncio.gather(
            writer.submit(Poison()), writer.submit(callback), return_exceptions=True
        )
    finally:
        await writer.close()
    assert isinstance(poisoned, ValueError)
    assert verdict == Verdict.NEW
    assert rows(db, "SELECT task_status FROM transitions") == [("succeed",)]
    assert rows(db, "SELECT key FROM meta WHERE key = 'poison'") == []


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()
