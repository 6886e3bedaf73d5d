"""The simulator's task driver and callback delivery: progress, retries and every fault.

Callbacks go to a small Starlette sink reached through ``callback_transport``. Every wait is
``Simulator.wait_idle()``, never a sleep.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from submitter.protocol import TaskStatus
from submitter.simulator import CallbackAttempt, Faults, Simulator
from tests import simulator_support as support
from tests.simulator_support import (
    AUTH,
    CALLBACK_URL,
    CREATE,
    FAST,
    Sink,
    api,
    assert_error,
    create,
    make_sim,
)

# The shared fixtures, bound by name so that pytest finds them in this module.
sink = support.sink
sim = support.sim


# -- callbacks -------------------------------------------------------------------------------


async def test_callbacks_arrive_in_order_without_faults(sim: Simulator, sink: Sink) -> None:
    body = {"prompt": "a cat", "n": 2, "callback_url": CALLBACK_URL, "external_task_id": "e"}
    task_id = (await create(sim, body)).json()["data"]["task_id"]
    await sim.wait_idle()

    assert sink.statuses() == ["submitted", "processing", "succeed"]
    assert all(b["task_id"] == task_id for b in sink.bodies)
    assert all(b["task_info"] == {"external_task_id": "e"} for b in sink.bodies)
    updated = [b["updated_at"] for b in sink.bodies]
    assert updated == sorted(updated) and len(set(updated)) == 3
    assert ["final_unit_deduction" in b for b in sink.bodies] == [False, False, True]
    final = sink.bodies[-1]
    assert final["final_unit_deduction"] == "0.4"
    assert final["task_result"] == {
        "images": [
            {"index": 0, "url": f"http://sim/files/{task_id}-0.png"},
            {"index": 1, "url": f"http://sim/files/{task_id}-1.png"},
        ]
    }
    assert sim.tasks[task_id].callbacks == [
        CallbackAttempt(TaskStatus.SUBMITTED, 200),
        CallbackAttempt(TaskStatus.PROCESSING, 200),
        CallbackAttempt(TaskStatus.SUCCEED, 200),
    ]


async def test_video_task_reports_duration_as_the_requests_string(
    sim: Simulator, sink: Sink
) -> None:
    body = {"prompt": "sea", "duration": "10", "mode": "pro", "callback_url": CALLBACK_URL}
    task_id = (await create(sim, body, route="/v1/videos/text2video")).json()["data"]["task_id"]
    await sim.wait_idle()

    final = sink.bodies[-1]
    (video,) = final["task_result"]["videos"]
    assert video["duration"] == "10"
    assert video["url"] == f"http://sim/files/{task_id}.mp4"
    assert isinstance(video["id"], str)
    assert final["final_unit_deduction"] == "4"


async def test_task_without_callback_url_sends_none_but_can_be_queried(
    sim: Simulator, sink: Sink
) -> None:
    task_id = (await create(sim)).json()["data"]["task_id"]
    await sim.wait_idle()
    async with api(sim) as client:
        response = await client.get(f"{CREATE}/{task_id}", headers=AUTH)

    assert sink.bodies == []
    assert sim.tasks[task_id].callbacks == []
    assert response.json()["data"]["task_status"] == "succeed"


async def test_many_tasks_run_concurrently(sim: Simulator, sink: Sink) -> None:
    for i in range(20):
        await create(sim, {"prompt": f"cat {i}", "callback_url": CALLBACK_URL})
    await sim.wait_idle()

    assert len(sink.bodies) == 60
    assert all(t.task_status is TaskStatus.SUCCEED for t in sim.tasks.values())


async def test_callback_answered_503_is_retried() -> None:
    sink = Sink(fail_first=2)
    simulator = make_sim(sink, callback_backoff_s=0.001)
    task_id = (await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})).json()[
        "data"
    ]["task_id"]
    await simulator.wait_idle()
    await simulator.aclose()

    assert sink.statuses() == ["submitted"] * 3 + ["processing", "succeed"]
    assert [a.outcome for a in simulator.tasks[task_id].callbacks] == [503, 503, 200, 200, 200]


async def test_callback_transport_errors_are_recorded_and_retried_up_to_the_limit() -> None:
    attempts: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    simulator = Simulator(
        delay_s=FAST,
        seed=1,
        callback_transport=httpx.MockTransport(refuse),
        callback_retries=2,
        callback_backoff_s=0.001,
    )
    task_id = (await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})).json()[
        "data"
    ]["task_id"]
    await simulator.wait_idle()
    await simulator.aclose()

    task = simulator.tasks[task_id]
    assert len(attempts) == 9  # three statuses, 1 + 2 retries each
    assert task.task_status is TaskStatus.SUCCEED
    assert all(str(a.outcome).startswith("ConnectError") for a in task.callbacks)


# -- faults ----------------------------------------------------------------------------------


async def test_failure_rate_1_fails_with_reason_and_empty_objects(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(failure_rate=1.0))
    body = {"prompt": "a", "callback_url": CALLBACK_URL, "external_task_id": "ext-f"}
    await create(simulator, body)
    await simulator.wait_idle()
    async with api(simulator) as client:
        query = await client.get(f"{CREATE}/ext-f", headers=AUTH)
    await simulator.aclose()

    assert sink.statuses() == ["submitted", "processing", "failed"]
    for failed in (sink.bodies[-1], query.json()["data"]):
        assert failed["task_status"] == "failed"
        assert failed["task_status_msg"]
        assert failed["task_info"] == {}
        assert failed["task_result"] == {}
        assert failed["final_unit_deduction"] == "0"


async def test_duplicate_rate_1_sends_every_callback_twice(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(duplicate_rate=1.0))
    await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})
    await simulator.wait_idle()
    await simulator.aclose()

    assert sink.statuses() == ["submitted"] * 2 + ["processing"] * 2 + ["succeed"] * 2
    assert sink.bodies[4] == sink.bodies[5]


async def test_reorder_sends_terminal_callback_before_earlier_ones(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(reorder_rate=1.0))
    await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})
    await simulator.wait_idle()
    await simulator.aclose()

    assert sink.statuses() == ["succeed", "processing", "submitted"]
    assert "final_unit_deduction" not in sink.bodies[1]  # snapshots keep their own state


async def test_envelope_rate_1_wraps_every_callback(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(envelope_rate=1.0))
    task_id = (await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})).json()[
        "data"
    ]["task_id"]
    await simulator.wait_idle()
    await simulator.aclose()

    assert len(sink.bodies) == 3
    for body in sink.bodies:
        assert set(body) == {"code", "message", "request_id", "data"}
        assert (body["code"], body["message"]) == (0, "SUCCEED")
        assert body["data"]["task_id"] == task_id
    assert sink.statuses() == ["submitted", "processing", "succeed"]


async def test_old_schema_rate_1_omits_task_info_and_final_unit_deduction(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(old_schema_rate=1.0))
    body = {"prompt": "a", "callback_url": CALLBACK_URL, "external_task_id": "ext-old"}
    await create(simulator, body)
    await simulator.wait_idle()
    await simulator.aclose()

    assert sink.statuses() == ["submitted", "processing", "succeed"]
    for received in sink.bodies:
        assert "task_info" not in received
        assert "final_unit_deduction" not in received
    assert sink.bodies[-1]["task_result"]["images"]


async def test_drop_nonterminal_rate_1_sends_only_the_terminal_callback(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(drop_nonterminal_rate=1.0))
    await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})
    await simulator.wait_idle()
    await simulator.aclose()

    assert sink.statuses() == ["succeed"]


async def test_lost_create_answer_is_500_but_task_exists_by_external_task_id(
    sink: Sink,
) -> None:
    simulator = make_sim(sink, faults=Faults(lose_create_answers=1))
    body = {"prompt": "a", "callback_url": CALLBACK_URL, "external_task_id": "ext-lost"}
    lost = await create(simulator, body)
    retried = await create(simulator, body)
    await simulator.wait_idle()
    async with api(simulator) as client:
        query = await client.get(f"{CREATE}/ext-lost", headers=AUTH)
    await simulator.aclose()

    assert_error(lost, 500, 5000)
    assert "already exists" in assert_error(retried, 400, 1201)["message"]
    assert query.status_code == 200
    assert query.json()["data"]["task_status"] == "succeed"
    assert len(simulator.tasks) == 1
    assert sink.statuses() == ["submitted", "processing", "succeed"]


async def test_busy_create_is_429_1303_and_makes_no_task(sink: Sink) -> None:
    simulator = make_sim(sink, faults=Faults(busy_creates=1))
    body = {"prompt": "a", "external_task_id": "ext-busy"}
    busy = await create(simulator, body)
    tasks_after_busy = dict(simulator.tasks)
    accepted = await create(simulator, body)
    await simulator.aclose()

    assert_error(busy, 429, 1303)
    assert tasks_after_busy == {}
    assert accepted.status_code == 200
    assert len(simulator.tasks) == 1


@pytest.mark.parametrize(
    "faults",
    [{"failure_rate": 1.5}, {"duplicate_rate": -0.1}, {"busy_creates": -1}],
)
def test_faults_reject_out_of_range_values(faults: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(faults))):
        Faults(**faults)


async def test_aclose_cancels_running_tasks_and_wait_idle_returns(sink: Sink) -> None:
    simulator = make_sim(sink, delay_s=(60.0, 60.0))
    task_id = (await create(simulator, {"prompt": "a", "callback_url": CALLBACK_URL})).json()[
        "data"
    ]["task_id"]
    await simulator.aclose()
    await simulator.wait_idle()

    assert simulator.tasks[task_id].task_status is TaskStatus.SUBMITTED
    assert sink.bodies == []
