"""The submitter client: a successful create, external_task_ids, query, construction.

Kling is an ``httpx.MockTransport`` handler that records every request.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from submitter import InvalidRequest, KlingAPIError, Submission, new_external_task_id
from tests.submitter_support import (
    API_KEY,
    CREATED_AT_MS,
    GEN,
    PUBLIC_URL,
    T2V,
    TOKENS,
    VALID_BODIES,
    FakeKling,
    body,
    counter_clock,
    envelope,
    make_client,
)

# --- successful create ----------------------------------------------------------------------


async def test_submit_returns_the_task_from_klings_envelope() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    task = kling.tasks[submission.external_task_id]
    assert submission.task_id == task["task_id"] == "867283741759111202"
    assert submission.task_status == "submitted"
    assert submission.created_at == CREATED_AT_MS
    assert submission.registered is False
    assert submission.warning is None


async def test_callback_url_carries_a_token_the_receiver_verifies() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    sent = kling.sent_bodies()[0]
    assert sent["callback_url"] == submission.callback_url
    assert sent["external_task_id"] == submission.external_task_id
    parts = urlsplit(submission.callback_url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    _, prefix, ext, token = parts.path.split("/")
    assert (prefix, unquote(ext)) == ("callbacks", submission.external_task_id)
    assert TOKENS.verify(submission.external_task_id, token)
    assert not TOKENS.verify(submission.external_task_id + "x", token)


async def test_generated_external_task_ids_are_prefixed_unique_and_sort_by_time() -> None:
    ticks = counter_clock(step_ms=7)
    kling = FakeKling()
    async with make_client(kling, clock_ms=lambda: next(ticks)) as client:
        ids = [(await client.submit(T2V, VALID_BODIES[T2V])).external_task_id for _ in range(20)]
    assert all(i.startswith("kh-") and len(i) == 3 + 26 for i in ids)
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


def test_new_external_task_id_is_unique_within_one_millisecond() -> None:
    ids = {new_external_task_id(CREATED_AT_MS) for _ in range(1000)}
    assert len(ids) == 1000
    assert new_external_task_id(CREATED_AT_MS) < new_external_task_id(CREATED_AT_MS + 1)
    assert new_external_task_id().startswith("kh-")


async def test_explicit_external_task_id_is_used() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN], external_task_id="order-42")
    assert submission.external_task_id == "order-42"
    assert kling.sent_bodies()[0]["external_task_id"] == "order-42"
    assert "/callbacks/order-42/" in submission.callback_url


async def test_explicit_external_task_id_wins_over_the_bodys() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(
            GEN, body(GEN, external_task_id="from-body"), external_task_id="from-arg"
        )
    assert submission.external_task_id == "from-arg"
    assert kling.sent_bodies()[0]["external_task_id"] == "from-arg"


async def test_external_task_id_in_the_body_is_used_when_no_argument_is_given() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, body(GEN, external_task_id="from-body"))
    assert submission.external_task_id == "from-body"
    assert TOKENS.verify("from-body", submission.callback_url.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    "api_base", ["http://127.0.0.1:9000/kling", "http://127.0.0.1:9000/kling/"]
)
async def test_api_base_path_prefix_goes_before_v1(api_base: str) -> None:
    kling = FakeKling()
    async with make_client(kling, api_base=api_base) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        await client.query(GEN, submission.task_id)
    assert [r.url.path for r in kling.requests] == [
        "/kling/v1/images/generations",
        f"/kling/v1/images/generations/{submission.task_id}",
    ]


async def test_requests_to_kling_carry_the_bearer_key() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_submission_to_json_has_every_field_and_repr_hides_the_callback_url() -> None:
    submission = Submission(
        task_id="867283741759111202",
        external_task_id="kh-1",
        callback_url="https://hooks.example.com/callbacks/kh-1/secret-token",
        task_status="submitted",
        created_at=CREATED_AT_MS,
        route=GEN,
    )
    assert submission.to_json() == {
        "task_id": "867283741759111202",
        "external_task_id": "kh-1",
        "callback_url": "https://hooks.example.com/callbacks/kh-1/secret-token",
        "task_status": "submitted",
        "created_at": CREATED_AT_MS,
        "route": GEN,
        "registered": False,
        "warning": None,
    }
    assert "secret-token" not in repr(submission)
    with pytest.raises(FrozenInstanceError):
        submission.task_id = "other"  # type: ignore[misc]


# --- query ----------------------------------------------------------------------------------


async def test_query_by_task_id_or_external_task_id_returns_the_task_object() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        by_task_id = await client.query(GEN, submission.task_id)
        by_external = await client.query(GEN, submission.external_task_id)
    assert by_task_id == by_external
    assert by_task_id.task_id == submission.task_id
    assert by_task_id.external_task_id == submission.external_task_id


async def test_query_retries_transient_failures() -> None:
    kling = FakeKling(gets=[envelope(503, 5001, "maintenance"), httpx.ReadError("reset")])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        task = await client.query(GEN, submission.task_id)
    assert kling.methods == ["POST", "GET", "GET", "GET"]
    assert task.task_id == submission.task_id


async def test_query_of_an_unknown_task_raises_at_once() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.query(GEN, "no-such-task")
    assert info.value.code == 1201
    assert kling.methods == ["GET"]


async def test_query_quotes_the_id_into_one_path_segment() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError):
            await client.query(GEN, "a/b c")
    assert kling.requests[0].url.raw_path == b"/v1/images/generations/a%2Fb%20c"


async def test_query_refuses_an_empty_id_without_a_request() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(InvalidRequest, match="id"):
            await client.query(GEN, "")
    assert kling.requests == []


# --- list -----------------------------------------------------------------------------------

TASK = {"task_id": "867283741759111202", "task_status": "succeed", "task_info": {}}


async def test_list_sends_kling_page_parameters_and_returns_the_task_objects() -> None:
    kling = FakeKling(gets=[envelope(data=[TASK, {**TASK, "task_id": "CjI17WevH1IAAAAAAHmgsw"}])])
    async with make_client(kling) as client:
        tasks = await client.list(T2V, page_num=3, page_size=50)
    assert [t.task_id for t in tasks] == ["867283741759111202", "CjI17WevH1IAAAAAAHmgsw"]
    (request,) = kling.requests
    assert (request.method, request.url.path) == ("GET", "/v1/videos/text2video")
    assert dict(request.url.params) == {"pageNum": "3", "pageSize": "50"}
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"


async def test_list_defaults_to_the_first_page_of_30() -> None:
    kling = FakeKling(gets=[envelope(data=[])])
    async with make_client(kling, api_base="http://127.0.0.1:9000/kling/") as client:
        assert await client.list(GEN) == []
    assert str(kling.requests[0].url).endswith("/kling/v1/images/generations?pageNum=1&pageSize=30")


async def test_list_retries_transient_failures() -> None:
    kling = FakeKling(gets=[envelope(429, 1302, "too fast"), envelope(data=[TASK])])
    async with make_client(kling) as client:
        assert len(await client.list(GEN)) == 1
    assert kling.methods == ["GET", "GET"]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"task_id": "1", "task_status": "succeed"}, "data: Input should be a valid list"),
        ([{"task_status": "succeed"}], "0.task_id: Field required"),
    ],
)
async def test_list_answer_that_is_not_a_list_of_tasks_is_a_kling_error(
    data: Any, named: str
) -> None:
    kling = FakeKling(gets=[envelope(data=data)])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.list(GEN)
    assert info.value.message == f"the answer's data is not a task list: {named}"


async def test_list_of_an_unknown_route_sends_nothing() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(InvalidRequest, match="route"):
            await client.list("videos/lip-sync")
    assert kling.requests == []


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_base": "127.0.0.1:9000"}, "api_base"),
        ({"api_base": "http://127.0.0.1:9000/kling/v1"}, "api_base: .* ends in /v1"),
        ({"public_url": "hooks.example.com"}, "public_url"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_client_refuses_a_bad_base_url_or_attempt_count(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_client(FakeKling(), **kwargs)
