"""The Kling simulator: API answers, auth, task progress, callbacks, faults and result files.

The API is driven in-process through ``httpx.ASGITransport``; callbacks go to a small Starlette
sink reached through ``callback_transport``; one test runs the simulator under uvicorn on
127.0.0.1. Every wait is ``Simulator.wait_idle()``, never a sleep.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from submitter.media import PNG_SIGNATURE, mp4_bytes, png_bytes
from submitter.protocol import Route, TaskStatus
from submitter.simulator import CallbackAttempt, Faults, Simulator

FAST = (0.0, 0.01)
AUTH = {"Authorization": "Bearer test-key"}
CREATE = "/v1/images/generations"
CALLBACK_URL = "http://sink/hook"
ACCESS_KEY = "ak-0123456789"
SECRET_KEY = "sk-0123456789abcdef0123456789abcdef"  # 32+ bytes: PyJWT warns about shorter ones


class Sink:
    """A callback receiver: records every JSON body, answers 503 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.app = Starlette(routes=[HttpRoute("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> JSONResponse:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.fail_first:
            return JSONResponse({"ok": False}, status_code=503)
        return JSONResponse({"ok": True})

    def statuses(self) -> list[str]:
        """``task_status`` of every body received, unwrapping an envelope's ``data``."""
        return [body.get("data", body)["task_status"] for body in self.bodies]


def make_sim(sink: Sink | None = None, **kwargs: Any) -> Simulator:
    transport = httpx.ASGITransport(app=sink.app) if sink else None
    kwargs.setdefault("delay_s", FAST)
    kwargs.setdefault("seed", 7)
    return Simulator(callback_transport=transport, **kwargs)


@pytest.fixture
async def sink() -> Sink:
    return Sink()


@pytest.fixture
async def sim(sink: Sink) -> AsyncIterator[Simulator]:
    simulator = make_sim(sink)
    yield simulator
    await simulator.aclose()


def api(simulator: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim"
    )


async def create(
    simulator: Simulator, body: dict[str, Any] | None = None, route: str = CREATE
) -> httpx.Response:
    async with api(simulator) as client:
        return await client.post(route, json=body or {"prompt": "a cat"}, headers=AUTH)


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """Kling's error shape: exactly code, message and request_id."""
    assert response.status_code == status
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed IDAT) of a PNG, checking signature and chunk CRCs."""
    assert data.startswith(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    kinds = list(chunks)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    return width, height, zlib.decompress(chunks[b"IDAT"])


def mp4_boxes(data: bytes) -> list[bytes]:
    """Top-level ISO-BMFF box types; the sizes must tile the file exactly."""
    pos, kinds = 0, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8
        kinds.append(kind)
        pos += size
    assert pos == len(data)
    return kinds


# -- create ----------------------------------------------------------------------------------


async def test_create_answers_kling_envelope_with_submitted_task(sim: Simulator) -> None:
    response = await create(sim, {"prompt": "a cat", "external_task_id": "ext-1"})

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"code", "message", "request_id", "data"}
    assert (body["code"], body["message"]) == (0, "SUCCEED")
    data = body["data"]
    assert set(data) == {"task_id", "task_status", "task_info", "created_at", "updated_at"}
    assert data["task_status"] == "submitted"
    assert data["task_info"] == {"external_task_id": "ext-1"}
    assert isinstance(data["task_id"], str)
    assert isinstance(data["created_at"], int) and data["created_at"] == data["updated_at"]
    assert sim.tasks[data["task_id"]].route is Route.IMAGES_GENERATIONS


async def test_task_ids_are_long_digit_strings_and_every_fourth_is_old_style(
    sim: Simulator,
) -> None:
    ids = [(await create(sim)).json()["data"]["task_id"] for _ in range(8)]

    for position, task_id in enumerate(ids, start=1):
        assert isinstance(task_id, str)
        if position % 4 == 0:
            assert len(task_id) == 22 and task_id.isalnum() and not task_id.isdigit()
        else:
            assert task_id.isdigit() and len(task_id) in (18, 19)
    assert len(set(ids)) == 8


async def test_same_seed_gives_same_task_ids() -> None:
    first, second = make_sim(seed=3), make_sim(seed=3)
    a = [(await create(first)).json()["data"]["task_id"] for _ in range(4)]
    b = [(await create(second)).json()["data"]["task_id"] for _ in range(4)]
    await first.aclose()
    await second.aclose()
    assert a == b


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (CREATE, {"prompt": "a cat", "n": 12}, "n"),
        (CREATE, {"negative_prompt": "dogs"}, "prompt"),
        ("/v1/videos/text2video", {"prompt": "sea", "duration": 5}, "duration"),
        ("/v1/videos/image2video", {"prompt": "sea"}, "image"),
        ("/v1/images/multi-image2image", {"subject_image_list": []}, "subject_image_list"),
    ],
)
async def test_invalid_body_is_refused_with_1201_naming_the_field(
    sim: Simulator, route: str, body: dict[str, Any], field: str
) -> None:
    response = await create(sim, body, route=route)

    error = assert_error(response, 400, 1201)
    assert error["message"].startswith(f"{field}:") or f"; {field}:" in error["message"]
    assert sim.tasks == {}


async def test_non_json_body_is_refused_with_1200(sim: Simulator) -> None:
    async with api(sim) as client:
        response = await client.post(CREATE, content=b"{not json", headers=AUTH)

    assert_error(response, 400, 1200)
    assert sim.requests[-1].json is None


async def test_duplicate_external_task_id_is_refused(sim: Simulator) -> None:
    body = {"prompt": "a cat", "external_task_id": "ext-dup"}
    first, second = await create(sim, body), await create(sim, body)

    assert first.status_code == 200
    error = assert_error(second, 400, 1201)
    assert "external_task_id already exists" in error["message"]
    assert len(sim.tasks) == 1


async def test_unknown_route_is_404(sim: Simulator) -> None:
    response = await create(sim, route="/v1/images/unknown")

    assert_error(response, 404, 1203)
    assert sim.tasks == {}


async def test_wrong_method_is_404_with_1202(sim: Simulator) -> None:
    async with api(sim) as client:
        response = await client.delete(CREATE, headers=AUTH)

    assert_error(response, 404, 1202)


async def test_routes_live_under_the_prefix(sink: Sink) -> None:
    simulator = make_sim(sink, prefix="/kling/")

    assert (await create(simulator, route="/kling" + CREATE)).status_code == 200
    assert (await create(simulator)).status_code == 404
    await simulator.aclose()


async def test_every_request_is_recorded_before_it_is_handled(sim: Simulator) -> None:
    await create(sim, {"prompt": "a cat"})
    async with api(sim) as client:
        await client.get("/nowhere?x=1")

    assert [(r.method, r.path, r.query) for r in sim.requests] == [
        ("POST", CREATE, ""),
        ("GET", "/nowhere", "x=1"),
    ]
    assert sim.requests[0].json == {"prompt": "a cat"}
    assert sim.requests[0].headers["authorization"] == "Bearer test-key"


# -- authorization ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, 1001), ({"Authorization": ""}, 1001), ({"Authorization": "Bearer "}, 1001)],
)
async def test_missing_authorization_is_401_1001(
    sim: Simulator, headers: dict[str, str], code: int
) -> None:
    async with api(sim) as client:
        response = await client.post(CREATE, json={"prompt": "a cat"}, headers=headers)

    assert_error(response, 401, code)
    assert sim.tasks == {}


async def test_any_bearer_is_accepted_when_no_key_is_configured(sim: Simulator) -> None:
    async with api(sim) as client:
        response = await client.post(
            CREATE, json={"prompt": "a cat"}, headers={"Authorization": "Bearer whatever"}
        )

    assert response.status_code == 200


async def test_api_key_must_match_when_configured() -> None:
    simulator = make_sim(api_key="test-key")
    async with api(simulator) as client:
        good = await client.post(CREATE, json={"prompt": "a cat"}, headers=AUTH)
        bad = await client.post(
            CREATE, json={"prompt": "a cat"}, headers={"Authorization": "Bearer other"}
        )
        basic = await client.post(
            CREATE, json={"prompt": "a cat"}, headers={"Authorization": "Basic dGVzdA=="}
        )
    await simulator.aclose()

    assert good.status_code == 200
    assert_error(bad, 401, 1002)
    assert_error(basic, 401, 1002)
    assert len(simulator.tasks) == 1


NOW_S = 1_774_805_076


def kling_jwt(**overrides: Any) -> str:
    """A token as Kling's "General Information" page builds it, with claims overridden."""
    claims: dict[str, Any] = {"iss": ACCESS_KEY, "exp": NOW_S + 1800, "nbf": NOW_S - 5}
    claims.update(overrides)
    key = claims.pop("_key", SECRET_KEY)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="HS256")


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        (kling_jwt(), 200, 0),
        (kling_jwt(exp=NOW_S - 1), 401, 1004),
        (kling_jwt(nbf=NOW_S + 60), 401, 1003),
        (kling_jwt(iss="someone-else"), 401, 1002),
        (kling_jwt(iss=None), 401, 1002),
        (kling_jwt(exp=None), 401, 1002),
        (kling_jwt(_key="x" * 40), 401, 1002),
        ("not-a-jwt", 401, 1002),
    ],
)
async def test_jwt_is_checked_against_access_key_secret_key_and_clock(
    token: str, status: int, code: int
) -> None:
    simulator = make_sim(
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, clock_ms=lambda: NOW_S * 1000
    )
    async with api(simulator) as client:
        response = await client.post(
            CREATE, json={"prompt": "a cat"}, headers={"Authorization": f"Bearer {token}"}
        )
    await simulator.aclose()

    assert response.status_code == status
    assert response.json()["code"] == code


async def test_query_and_list_need_authorization_but_files_do_not(sim: Simulator) -> None:
    task_id = (await create(sim)).json()["data"]["task_id"]
    await sim.wait_idle()
    async with api(sim) as client:
        query = await client.get(f"{CREATE}/{task_id}")
        listing = await client.get(CREATE)
        image = await client.get(f"/files/{task_id}-0.png")

    assert_error(query, 401, 1001)
    assert_error(listing, 401, 1001)
    assert image.status_code == 200


# -- query and list --------------------------------------------------------------------------


async def test_query_by_task_id_and_by_external_task_id(sim: Simulator) -> None:
    created = await create(sim, {"prompt": "a cat", "external_task_id": "ext-q"})
    task_id = created.json()["data"]["task_id"]
    await sim.wait_idle()
    async with api(sim) as client:
        by_id = await client.get(f"{CREATE}/{task_id}", headers=AUTH)
        by_external = await client.get(f"{CREATE}/ext-q", headers=AUTH)

    for response in (by_id, by_external):
        assert response.status_code == 200
        data = response.json()["data"]
        assert data["task_id"] == task_id
        assert data["task_status"] == "succeed"
        assert data["task_info"] == {"external_task_id": "ext-q"}
        assert data["final_unit_deduction"] == "0.2"


async def test_query_answer_reflects_the_current_state(sink: Sink) -> None:
    simulator = make_sim(sink, delay_s=(60.0, 60.0))
    task_id = (await create(simulator)).json()["data"]["task_id"]
    async with api(simulator) as client:
        response = await client.get(f"{CREATE}/{task_id}", headers=AUTH)
    await simulator.aclose()

    assert response.json()["data"]["task_status"] == "submitted"
    assert response.json()["data"]["task_result"] == {}


@pytest.mark.parametrize("task_ref", ["123456789012345678", "no-such-ext"])
async def test_query_of_unknown_id_is_400_1201_task_not_found(
    sim: Simulator, task_ref: str
) -> None:
    async with api(sim) as client:
        response = await client.get(f"{CREATE}/{task_ref}", headers=AUTH)

    assert "task not found" in assert_error(response, 400, 1201)["message"]


async def test_task_is_not_found_under_another_route(sim: Simulator) -> None:
    task_id = (await create(sim)).json()["data"]["task_id"]
    async with api(sim) as client:
        response = await client.get(f"/v1/videos/text2video/{task_id}", headers=AUTH)

    assert_error(response, 400, 1201)


async def test_list_pages_newest_first(sim: Simulator) -> None:
    ids = [(await create(sim)).json()["data"]["task_id"] for _ in range(5)]
    await create(sim, {"prompt": "sea"}, route="/v1/videos/text2video")
    async with api(sim) as client:
        default = await client.get(CREATE, headers=AUTH)
        page_2 = await client.get(CREATE, params={"pageNum": 2, "pageSize": 2}, headers=AUTH)
        page_9 = await client.get(CREATE, params={"pageNum": 9, "pageSize": 2}, headers=AUTH)

    assert [t["task_id"] for t in default.json()["data"]] == ids[::-1]
    assert [t["task_id"] for t in page_2.json()["data"]] == [ids[2], ids[1]]
    assert page_9.json()["data"] == []


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"pageNum": 0}, "pageNum"),
        ({"pageNum": 1001}, "pageNum"),
        ({"pageSize": 0}, "pageSize"),
        ({"pageSize": 501}, "pageSize"),
        ({"pageSize": "ten"}, "pageSize"),
    ],
)
async def test_list_paging_bounds_are_enforced(
    sim: Simulator, params: dict[str, Any], name: str
) -> None:
    async with api(sim) as client:
        response = await client.get(CREATE, params=params, headers=AUTH)

    assert assert_error(response, 400, 1201)["message"].startswith(f"{name}:")


@pytest.mark.parametrize("params", [{"pageNum": 1000, "pageSize": 500}, {"pageNum": 1}])
async def test_list_paging_bounds_are_inclusive(sim: Simulator, params: dict[str, Any]) -> None:
    async with api(sim) as client:
        response = await client.get(CREATE, params=params, headers=AUTH)

    assert response.status_code == 200


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


# -- result files ----------------------------------------------------------------------------


def test_png_bytes_is_a_valid_png_with_the_requested_size() -> None:
    width, height, raw = decode_png(png_bytes(200, 100, seed=4))

    assert (width, height) == (200, 100)
    assert len(raw) == height * (1 + 3 * width)
    assert png_bytes(200, 100, seed=4) == png_bytes(200, 100, seed=4)
    assert png_bytes(200, 100, seed=4) != png_bytes(200, 100, seed=5)


def test_mp4_bytes_is_an_iso_media_file() -> None:
    data = mp4_bytes(seed=1, duration_s=10)

    assert data[4:8] == b"ftyp" and data[8:12] == b"isom"
    assert mp4_boxes(data) == [b"ftyp", b"moov", b"mdat"]
    mvhd = data.index(b"mvhd")
    timescale, duration = struct.unpack(">II", data[mvhd + 16 : mvhd + 24])
    assert (timescale, duration) == (1000, 10_000)


async def test_result_files_are_served_with_type_and_length(sim: Simulator) -> None:
    image_id = (await create(sim, {"prompt": "a", "aspect_ratio": "16:9"})).json()["data"]
    video_id = (await create(sim, {"prompt": "a"}, route="/v1/videos/text2video")).json()["data"]
    await sim.wait_idle()
    async with api(sim) as client:
        image = await client.get(f"/files/{image_id['task_id']}-0.png")
        video = await client.get(f"/files/{video_id['task_id']}.mp4")
        beyond_n = await client.get(f"/files/{image_id['task_id']}-1.png")
        unknown = await client.get("/files/nothing.png")

    assert image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(image.content)
    assert decode_png(image.content)[:2] == (568, 320)
    assert video.headers["content-type"] == "video/mp4"
    assert int(video.headers["content-length"]) == len(video.content)
    assert mp4_boxes(video.content)[0] == b"ftyp"
    assert beyond_n.status_code == 404 and unknown.status_code == 404


# -- end to end over loopback ----------------------------------------------------------------


async def test_simulator_under_uvicorn_serves_a_task_and_its_png_over_loopback() -> None:
    simulator = Simulator(delay_s=FAST, seed=2, prefix="/kling")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections queue until uvicorn accepts them: no start-up polling
    port = listener.getsockname()[1]
    config = uvicorn.Config(simulator.app, log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            created = await client.post("/kling" + CREATE, json={"prompt": "a"}, headers=AUTH)
            task_id = created.json()["data"]["task_id"]
            await simulator.wait_idle()
            query = await client.get(f"/kling{CREATE}/{task_id}", headers=AUTH)
            url = query.json()["data"]["task_result"]["images"][0]["url"]
            image = await client.get(url)
    finally:
        server.should_exit = True
        await serving
        listener.close()

    assert isinstance(task_id, str)
    assert url == f"{base}/files/{task_id}-0.png"
    assert decode_png(image.content)[:2] == (320, 320)
