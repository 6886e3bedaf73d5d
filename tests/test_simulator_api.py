"""The simulator's Kling API: create, authorization, query and list answers.

The API is driven in-process through ``httpx.ASGITransport``; callbacks, where a test needs
them, go to a small Starlette sink reached through ``callback_transport``. Every wait is
``Simulator.wait_idle()``, never a sleep.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from submitter.protocol import Route
from submitter.simulator import Simulator
from tests import simulator_support as support
from tests.simulator_support import (
    ACCESS_KEY,
    AUTH,
    CREATE,
    SECRET_KEY,
    Sink,
    api,
    assert_error,
    create,
    make_sim,
)

# The shared fixtures, bound by name so that pytest finds them in this module.
sink = support.sink
sim = support.sim


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
