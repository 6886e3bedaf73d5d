"""The status API (``/tasks``, ``/healthz``, ``/readyz``, ``/openapi.json``) against a real
uvicorn server and SQLite file: authorization, the task object, registration, listing, the one
error shape, and the generated API token."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    API_TOKEN,
    Receiver,
    make_settings,
    postgres_url,
    start_receiver,
    task_body,
)

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
EXT = "kh-api-0001"
TASK = "867283741759111202"
ROUTE = "images/generations"
REQUEST = {"prompt": "a lighthouse at dawn", "n": 2}
KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"


async def register(r: Receiver, doc: Any = None, **fields: Any) -> httpx.Response:
    """POST /tasks with ``doc``, or with a valid registration updated by ``fields``."""
    if doc is None:
        doc = {
            "route": ROUTE,
            "task_id": TASK,
            "external_task_id": EXT,
            "task_status": "submitted",
            "created_at": 1774805076166,
            "request": REQUEST,
            **fields,
        }
    return await r.http.post(f"{r.url}/tasks", json=doc, headers=AUTH)


async def list_tasks(r: Receiver, **params: str) -> httpx.Response:
    return await r.http.get(f"{r.url}/tasks", params=params, headers=AUTH)


def assert_error(answer: httpx.Response, status: int) -> str:
    """The one error shape: exactly ``{"ok": false, "error": <non-empty str>}``."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"ok", "error"}
    assert body["ok"] is False
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- authorization -------------------------------------------------------------------------

ROUTES = [("GET", "/tasks"), ("POST", "/tasks"), ("GET", f"/tasks/{TASK}")]
BAD_AUTH = {
    "none": {},
    "wrong-token": {"Authorization": "Bearer not-the-token"},
    "bearer-without-token": {"Authorization": "Bearer"},
    "basic-scheme": {"Authorization": f"Basic {API_TOKEN}"},
    "token-scheme": {"Authorization": f"Token {API_TOKEN}"},
    "bare-token": {"Authorization": API_TOKEN},
}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("auth", list(BAD_AUTH))
async def test_tasks_routes_answer_401_with_www_authenticate_without_the_right_bearer(
    receiver: Receiver, method: str, path: str, auth: str
) -> None:
    await register(receiver)
    content = json.dumps({"route": ROUTE, "task_id": "T9", "external_task_id": "kh-9"})
    answer = await receiver.http.request(
        method,
        f"{receiver.url}{path}",
        headers=BAD_AUTH[auth],
        content=content if method == "POST" else None,
    )
    assert_error(answer, 401)
    assert answer.headers["www-authenticate"] == "Bearer"
    everything = (await list_tasks(receiver)).json()["tasks"]
    assert [t["task_id"] for t in everything] == [TASK]  # the refused POST stored nothing


async def test_bearer_scheme_is_case_insensitive(receiver: Receiver) -> None:
    answer = await receiver.http.get(
        f"{receiver.url}/tasks", headers={"Authorization": f"bearer {API_TOKEN}"}
    )
    assert answer.status_code == 200


# -- one task ------------------------------------------------------------------------------

TASK_FIELDS = {
    "task_id",
    "external_task_id",
    "route",
    "task_status",
    "task_status_msg",
    "task_result",
    "final_unit_deduction",
    "created_at",
    "updated_at",
    "transitions",
}


async def test_task_by_task_id_and_by_external_task_id_is_the_same_object(
    receiver: Receiver,
) -> None:
    await register(receiver)
    await receiver.post_callback(EXT, task_body(TASK, "processing", EXT, updated_at=1774805080000))
    done = task_body(
        TASK,
        "succeed",
        EXT,
        final_unit_deduction="0.4",
        updated_at=1774805090000,
        task_result={"images": [{"index": 0, "url": "https://cdn.example/0.png"}]},
    )
    await receiver.post_callback(EXT, done)
    by_id = await receiver.get_task(TASK)
    by_ext = await receiver.get_task(EXT)
    assert by_id.status_code == by_ext.status_code == 200
    task = by_id.json()
    assert task == by_ext.json()
    assert TASK_FIELDS <= set(task)
    assert task["task_id"] == TASK and task["external_task_id"] == EXT
    assert task["route"] == ROUTE
    assert task["task_status"] == "succeed"
    assert task["task_status_msg"] == ""
    assert task["task_result"] == {"images": [{"index": 0, "url": "https://cdn.example/0.png"}]}
    assert task["final_unit_deduction"] == "0.4"
    assert task["created_at"] == 1774805076166
    assert task["updated_at"] == 1774805090000
    transitions = task["transitions"]
    assert [t["task_status"] for t in transitions] == ["submitted", "processing", "succeed"]
    assert all(set(t) == {"task_status", "updated_at", "received_at"} for t in transitions)
    assert [t["updated_at"] for t in transitions] == [1774805076166, 1774805080000, 1774805090000]
    received = [t["received_at"] for t in transitions]
    assert received == sorted(received)  # oldest first


async def test_unknown_task_id_is_404_in_the_error_shape(receiver: Receiver) -> None:
    await register(receiver)
    assert_error(await receiver.get_task("no-such-task"), 404)


async def test_external_task_id_with_a_slash_is_found(receiver: Receiver) -> None:
    await register(receiver, external_task_id="order/42")
    task = (await receiver.get_task("order/42")).json()
    assert task["task_id"] == TASK


# -- registration --------------------------------------------------------------------------


async def test_registered_task_shows_submitted_route_request_and_one_transition(
    receiver: Receiver,
) -> None:
    answer = await register(receiver)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "verdict": "new", "task_id": TASK}
    task = (await receiver.get_task(EXT)).json()
    assert task["task_status"] == "submitted"
    assert task["route"] == ROUTE
    assert task["request"] == REQUEST
    assert [t["task_status"] for t in task["transitions"]] == ["submitted"]


async def test_processing_callback_after_registration_is_new(receiver: Receiver) -> None:
    await register(receiver)
    answer = await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    assert answer.json() == {"ok": True, "verdict": "new"}
    task = (await receiver.get_task(TASK)).json()
    assert task["task_status"] == "processing"
    assert [t["task_status"] for t in task["transitions"]] == ["submitted", "processing"]


async def test_registering_the_same_task_twice_is_a_duplicate(receiver: Receiver) -> None:
    first = await register(receiver)
    again = await register(receiver)
    assert first.json()["verdict"] == "new"
    assert again.status_code == 200
    assert again.json() == {"ok": True, "verdict": "duplicate", "task_id": TASK}
    task = (await receiver.get_task(TASK)).json()
    assert [t["task_status"] for t in task["transitions"]] == ["submitted"]


async def test_registration_after_a_callback_keeps_its_state_and_fills_route_and_request(
    receiver: Receiver,
) -> None:
    await receiver.post_callback(EXT, task_body(TASK, "processing", EXT, updated_at=1774805080000))
    answer = await register(receiver)
    assert answer.status_code == 200
    assert answer.json()["verdict"] == "stale"
    task = (await receiver.get_task(TASK)).json()
    assert task["task_status"] == "processing"
    assert task["updated_at"] == 1774805080000
    assert task["route"] == ROUTE
    assert task["request"] == REQUEST
    assert [t["task_status"] for t in task["transitions"]] == ["processing"]


@pytest.mark.parametrize(
    ("task_id", "external_task_id"),
    [
        (TASK, "kh-another-one"),  # the task_id is bound to another external_task_id
        ("900000000000000001", EXT),  # the external_task_id is bound to another task_id
    ],
)
async def test_registration_binding_ids_already_bound_elsewhere_is_409(
    receiver: Receiver, task_id: str, external_task_id: str
) -> None:
    await register(receiver)
    answer = await register(receiver, task_id=task_id, external_task_id=external_task_id)
    assert_error(answer, 409)
    assert (
        await receiver.get_task(external_task_id if task_id == TASK else task_id)
    ).status_code == 404
    assert (await receiver.get_task(TASK)).json()["external_task_id"] == EXT


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe"])
async def test_registration_that_is_not_json_is_400(receiver: Receiver, content: bytes) -> None:
    answer = await receiver.http.post(
        f"{receiver.url}/tasks",
        content=content,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert_error(answer, 400)


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"route": ROUTE, "external_task_id": EXT}, "task_id"),
        ({"route": ROUTE, "task_id": TASK}, "external_task_id"),
        ({"task_id": TASK, "external_task_id": EXT}, "route"),
        ({"route": ROUTE, "task_id": 867283741759111202, "external_task_id": EXT}, "task_id"),
        (
            {"route": ROUTE, "task_id": TASK, "external_task_id": EXT, "created_at": "today"},
            "created_at",
        ),
        ({"route": ROUTE, "task_id": TASK, "external_task_id": EXT, "request": ["a"]}, "request"),
        (
            {"route": ROUTE, "task_id": TASK, "external_task_id": EXT, "task_status": "succeeded"},
            "task_status",
        ),
        ({"route": "videos/lip-sync", "task_id": TASK, "external_task_id": EXT}, "route"),
        ({"route": ROUTE, "task_id": "", "external_task_id": EXT}, "task_id"),
        ({"route": ROUTE, "task_id": TASK, "external_task_id": EXT, "colour": "red"}, "colour"),
        (["not", "an", "object"], "body"),
    ],
)
async def test_registration_with_missing_or_wrong_fields_is_422_naming_the_field(
    receiver: Receiver, doc: Any, field: str
) -> None:
    message = assert_error(await register(receiver, doc), 422)
    if field != "body":
        assert message.startswith(f"{field}")
    assert (await list_tasks(receiver)).json()["tasks"] == []


# -- the list ------------------------------------------------------------------------------

ROUTES_CYCLE = ["images/generations", "videos/text2video", "videos/image2video"]


async def seven_tasks(r: Receiver) -> list[str]:
    """Register tasks T0..T6 in that order, over three routes; T1, T3, T5 then succeed."""
    names = [f"T{i}" for i in range(7)]
    for i, name in enumerate(names):
        answer = await register(
            r, task_id=name, external_task_id=f"kh-{name}", route=ROUTES_CYCLE[i % 3]
        )
        assert answer.status_code == 200
    for name in names[1::2]:
        await r.post_callback(f"kh-{name}", task_body(name, "succeed", f"kh-{name}"))
    return names


async def test_list_is_newest_first_without_transitions_or_request(receiver: Receiver) -> None:
    names = await seven_tasks(receiver)
    page = (await list_tasks(receiver)).json()
    assert [t["task_id"] for t in page["tasks"]] == names[::-1]
    assert page["next_cursor"] is None
    assert not {"transitions", "request"} & set(page["tasks"][0])
    assert {"task_id", "external_task_id", "route", "task_status"} <= set(page["tasks"][0])


async def test_list_filters_by_task_status_and_route(receiver: Receiver) -> None:
    await seven_tasks(receiver)
    succeeded = (await list_tasks(receiver, task_status="succeed")).json()["tasks"]
    assert [t["task_id"] for t in succeeded] == ["T5", "T3", "T1"]
    videos = (await list_tasks(receiver, route="videos/text2video")).json()["tasks"]
    assert [t["task_id"] for t in videos] == ["T4", "T1"]
    both = (await list_tasks(receiver, route="videos/text2video", task_status="submitted")).json()[
        "tasks"
    ]
    assert [t["task_id"] for t in both] == ["T4"]


async def test_list_limit_and_cursor_walk_every_task_exactly_once(receiver: Receiver) -> None:
    names = await seven_tasks(receiver)
    seen: list[str] = []
    pages: list[int] = []
    params = {"limit": "3"}
    while True:
        page = (await list_tasks(receiver, **params)).json()
        pages.append(len(page["tasks"]))
        seen += [t["task_id"] for t in page["tasks"]]
        if page["next_cursor"] is None:
            break
        assert isinstance(page["next_cursor"], str)
        params = {"limit": "3", "cursor": page["next_cursor"]}
    assert pages == [3, 3, 1]
    assert seen == names[::-1]


async def test_cursor_pagination_works_with_a_filter(receiver: Receiver) -> None:
    await seven_tasks(receiver)
    first = (await list_tasks(receiver, task_status="submitted", limit="2")).json()
    second = (
        await list_tasks(receiver, task_status="submitted", limit="2", cursor=first["next_cursor"])
    ).json()
    assert [t["task_id"] for t in first["tasks"]] == ["T6", "T4"]
    assert [t["task_id"] for t in second["tasks"]] == ["T2", "T0"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"task_status": "succeeded"},
        {"task_status": "SUCCEED"},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"cursor": "abc"},
        {"route": "videos/nope"},
        {"cursor": "99999999999999999999"},
    ],
)
async def test_list_with_a_bad_parameter_is_400(receiver: Receiver, params: dict[str, str]) -> None:
    assert_error(await list_tasks(receiver, **params), 400)


async def test_list_accepts_the_limits_of_its_range(receiver: Receiver) -> None:
    await seven_tasks(receiver)
    assert len((await list_tasks(receiver, limit="1")).json()["tasks"]) == 1
    assert len((await list_tasks(receiver, limit="500")).json()["tasks"]) == 7


# -- health, readiness and the OpenAPI document --------------------------------------------


async def test_healthz_and_readyz_answer_without_a_token(receiver: Receiver) -> None:
    health = await receiver.http.get(f"{receiver.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"ok": True}
    ready = await receiver.http.get(f"{receiver.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["ok"] is True


# -- the one error shape -------------------------------------------------------------------


async def test_every_error_answer_has_exactly_ok_false_and_an_error_string(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_max_body_bytes=4096)
    async with start_receiver(settings) as r:
        await register(r)
        url = r.url
        big = json.dumps(
            {
                "route": ROUTE,
                "task_id": "T2",
                "external_task_id": "kh-2",
                "request": {"prompt": "x" * 5000},
            }
        )
        answers = {
            "401 api no token": (await r.http.get(f"{url}/tasks"), 401),
            "401 api wrong token": (
                await r.http.get(f"{url}/tasks/{TASK}", headers={"Authorization": "Bearer nope"}),
                401,
            ),
            "401 callback token": (
                await r.http.post(
                    f"{url}/callbacks/{EXT}/not-a-token", json=task_body(TASK, "succeed", EXT)
                ),
                401,
            ),
            "404 unknown task": (await r.get_task("nope"), 404),
            "404 unknown path": (await r.http.get(f"{url}/no/such/path"), 404),
            "405 wrong method on /tasks": (await r.http.delete(f"{url}/tasks", headers=AUTH), 405),
            "405 wrong method on a callback": (await r.http.get(r.callback_url(EXT)), 405),
            "405 wrong method on /healthz": (await r.http.post(f"{url}/healthz"), 405),
            "400 callback not json": (await r.http.post(r.callback_url(EXT), content=b"{"), 400),
            "400 registration not json": (
                await r.http.post(f"{url}/tasks", content=b"{", headers=AUTH),
                400,
            ),
            "400 bad list parameter": (await list_tasks(r, limit="0"), 400),
            "409 callback for another task": (
                await r.post_callback(EXT, task_body(TASK, "processing", "kh-other")),
                409,
            ),
            "409 registration conflict": (await register(r, external_task_id="kh-other"), 409),
            "413 callback": (await r.http.post(r.callback_url(EXT), content=big.encode()), 413),
            "413 registration": (
                await r.http.post(f"{url}/tasks", content=big.encode(), headers=AUTH),
                413,
            ),
            "422 callback": (await r.post_callback(EXT, {"task_status": "succeed"}), 422),
            "422 registration": (await register(r, {"route": ROUTE}), 422),
        }
    for name, (answer, status) in answers.items():
        assert answer.status_code == status, name
        assert answer.headers["content-type"].startswith("application/json"), name
        body = answer.json()
        assert set(body) == {"ok", "error"}, name
        assert body["ok"] is False, name
        assert isinstance(body["error"], str) and body["error"].strip(), name


# -- the generated API token ---------------------------------------------------------------


def env_without_kling() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}


def _store_env() -> dict[str, str]:
    """The test's Postgres database for a command, in a ``[postgres]`` test."""
    url = postgres_url()
    return {} if url is None else {"KLING_HOOKS_DATABASE_URL": url}


async def run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS),
        *args,
        cwd=cwd,
        env={**env_without_kling(), **_store_env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_api_token_is_generated_once_kept_in_the_db_and_printed_by_the_cli(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_api_token=None)
    async with start_receiver(settings) as r:
        token = r.services.credentials.api_token
        assert r.services.credentials.api_token_generated is True
        assert token and token != API_TOKEN
        ok = await r.http.get(f"{r.url}/tasks", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert (await r.http.get(f"{r.url}/tasks", headers=AUTH)).status_code == 401
    async with start_receiver(settings) as r:
        assert r.services.credentials.api_token == token
        assert r.services.credentials.api_token_generated is False
        again = await r.http.get(f"{r.url}/tasks", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 200
    # the receiver's database: its SQLite file, or the test's Postgres one (no --db: it wins)
    where = [] if postgres_url() else ["--db", str(settings.kling_hooks_db)]
    code, out, err = await run_cli("token", *where, cwd=tmp_path)
    assert code == 0, err
    assert out.strip() == token
