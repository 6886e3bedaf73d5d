"""End to end over real HTTP: submitter -> simulator (uvicorn) -> callbacks -> receiver
(uvicorn, SQLite) -> status API, with every simulator fault switched on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from receiver.serving import running
from submitter import KlingClient, KlingJWTAuth, Registrar
from submitter.protocol import Route, TaskStatus
from submitter.simulator import Faults, Simulator
from tests.conftest import API_TOKEN, make_settings, start_receiver

pytestmark = pytest.mark.both_backends

SK = "sk-test-0123456789abcdef0123456789abcdef"

BODIES = {
    Route.IMAGES_GENERATIONS: {"prompt": "a red fox in snow", "n": 2},
    Route.IMAGES_MULTI_IMAGE2IMAGE: {
        "subject_image_list": [{"subject_image": "https://example.com/a.png"}],
        "scence_image": "https://example.com/scene.png",
    },
    Route.VIDEOS_MULTI_IMAGE2VIDEO: {
        "image_list": [{"image": "https://example.com/a.png"}],
        "prompt": "wave",
    },
    Route.VIDEOS_TEXT2VIDEO: {"prompt": "rain on a window", "duration": "10", "mode": "pro"},
    Route.VIDEOS_IMAGE2VIDEO: {"image_tail": "https://example.com/end.png"},
}


async def test_tasks_flow_from_submission_to_status_api_despite_faults(tmp_path: Path) -> None:
    faults = Faults(
        failure_rate=0.3,
        duplicate_rate=0.5,
        reorder_rate=0.5,
        envelope_rate=0.5,
        old_schema_rate=0.5,
        drop_nonterminal_rate=0.3,
        lose_create_answers=1,
        busy_creates=1,
    )
    simulator = Simulator(
        faults=faults,
        delay_s=(0.0, 0.05),
        seed=11,
        prefix="/kling",
        access_key="ak-test",
        secret_key=SK,
    )
    settings = make_settings(tmp_path)
    async with start_receiver(settings) as r, running(simulator.app) as sim_url:
        registrar = Registrar(r.url, API_TOKEN)
        async with KlingClient(
            api_base=f"{sim_url}/kling",
            auth=KlingJWTAuth("ak-test", SK),
            tokens=r.services.credentials.tokens,
            public_url=r.url,
            registrar=registrar,
            backoff_base_s=0.01,
        ) as client:
            submissions = await asyncio.gather(
                *[client.submit(route, body) for route, body in BODIES.items() for _ in range(2)]
            )
        await registrar.aclose()
        await simulator.wait_idle()

        # One Kling task per submission: the lost create answer was resolved by a query.
        assert len(simulator.tasks) == len(submissions) == 10
        assert all(s.registered for s in submissions)
        deductions: list[str | None] = []
        for sub in submissions:
            sim_task = simulator.tasks[sub.task_id]
            answer = await r.get_task(sub.external_task_id)
            assert answer.status_code == 200
            task = answer.json()
            assert task["task_id"] == sub.task_id
            assert task["route"] == sub.route
            assert task["task_status"] == sim_task.task_status.value
            assert TaskStatus(task["task_status"]).is_terminal
            # An old-schema terminal callback carries no final_unit_deduction.
            assert task["final_unit_deduction"] in (sim_task.final_unit_deduction, None)
            deductions.append(task["final_unit_deduction"])
            assert task["task_status_msg"] == (sim_task.task_status_msg or "")
            if task["task_status"] == "succeed":
                assert task["task_result"] == sim_task.task_result
            ranks = [TaskStatus(t["task_status"]).rank for t in task["transitions"]]
            assert ranks == sorted(set(ranks))  # forward only, each state once
        assert any(d is not None for d in deductions)
        # The result files the simulator names are real and reachable.
        done = [s for s in submissions if simulator.tasks[s.task_id].task_status.value == "succeed"]
        async with httpx.AsyncClient() as http:
            for sub in done:
                result = simulator.tasks[sub.task_id].task_result or {}
                for item in result.get("images", []) + result.get("videos", []):
                    fetched = await http.get(item["url"])
                    assert fetched.status_code == 200 and len(fetched.content) > 100
