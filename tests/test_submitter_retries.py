"""Kling's errors and the retry policy: final codes, backoff, and the idempotent create.

A create whose answer was lost is looked up by its external_task_id before it is sent again;
these tests script every kind of lost answer. Backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import httpx
import pytest
from structlog.testing import capture_logs

from submitter import KlingAPIError, KlingUnreachable
from tests.submitter_support import (
    API_KEY,
    CREATED_AT_MS,
    GEN,
    VALID_BODIES,
    FakeKling,
    Sleeps,
    envelope,
    make_client,
)

# --- Kling errors and retries ---------------------------------------------------------------


async def test_final_error_raises_kling_api_error_at_once() -> None:
    kling = FakeKling(posts=[envelope(400, 1201, "prompt is invalid", request_id="req-77")])
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    error = info.value
    assert (error.http_status, error.code, error.message, error.request_id) == (
        400,
        1201,
        "prompt is invalid",
        "req-77",
    )
    assert kling.methods == ["POST"]
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, 1004), (429, 1101), (403, 1103), (404, 1203), (400, 1301), (429, 1304)],
)
async def test_other_final_codes_are_not_retried(status: int, code: int) -> None:
    kling = FakeKling(posts=[envelope(status, code, "no")])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert (info.value.http_status, info.value.code) == (status, code)
    assert kling.methods == ["POST"]


async def test_non_json_error_body_gives_code_none_and_the_first_200_characters() -> None:
    kling = FakeKling(posts=[httpx.Response(400, text="<html>" + "x" * 500)])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert info.value.code is None
    assert info.value.message == ("<html>" + "x" * 500)[:200]
    assert info.value.request_id is None


async def test_success_envelope_without_a_task_raises_kling_api_error() -> None:
    kling = FakeKling(posts=[envelope(data={"task_id": 867283741759111202})])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError, match="not a task object"):
            await client.submit(GEN, VALID_BODIES[GEN])


@pytest.mark.parametrize("code", [1302, 1303])
async def test_rate_limit_is_retried_after_backoff_then_succeeds(code: int) -> None:
    kling = FakeKling(posts=[envelope(429, code, "slow down"), "create"])
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps, backoff_base_s=1.0, backoff_max_s=30) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]  # nothing was created: no look-up needed
    assert submission.task_id in {t["task_id"] for t in kling.tasks.values()}
    assert sleeps.delays == [1.0]  # Kling advises backing off from 1 s


async def test_rate_limit_every_time_raises_after_max_attempts() -> None:
    kling = FakeKling(posts=[envelope(429, 1303, "too many tasks")] * 3)
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps, max_attempts=3) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert (info.value.http_status, info.value.code) == (429, 1303)
    assert kling.methods == ["POST"] * 3
    assert len(sleeps.delays) == 2


async def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    kling = FakeKling(posts=[httpx.ConnectError("refused")] * 6)
    sleeps = Sleeps()
    async with make_client(
        kling, sleep=sleeps, max_attempts=6, backoff_base_s=1.0, backoff_max_s=5.0
    ) as client:
        with pytest.raises(KlingUnreachable):
            await client.submit(GEN, VALID_BODIES[GEN])
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(sleeps.delays) == len(ceilings)
    for delay, ceiling in zip(sleeps.delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


async def test_lost_answer_of_a_created_task_is_recovered_by_one_query() -> None:
    kling = FakeKling(posts=["create_then_lose"])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET"]
    assert kling.requests[1].url.path == f"/v1/{GEN}/{submission.external_task_id}"
    (task,) = kling.tasks.values()
    assert submission.task_id == task["task_id"]
    assert submission.created_at == CREATED_AT_MS


@pytest.mark.parametrize(
    "not_found",
    [
        envelope(400, 1201, "task not found"),
        envelope(404, 1203, "resource does not exist"),
        httpx.Response(404, text="Not Found"),
    ],
    ids=["400-1201", "404-1203", "404-plain"],
)
async def test_lost_answer_without_a_task_creates_again(not_found: httpx.Response) -> None:
    lost = httpx.ReadTimeout("timed out")
    kling = FakeKling(posts=[lost, "create"], not_found=not_found)
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]
    assert len(kling.tasks) == 1
    first, second = kling.sent_bodies()
    assert first == second  # same external_task_id and callback_url
    assert submission.external_task_id == first["external_task_id"]


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.WriteError("broken pipe"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_every_kind_of_lost_answer_is_looked_up_before_creating_again(
    lost: Exception,
) -> None:
    kling = FakeKling(posts=[lost, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]


async def test_500_answer_is_followed_by_a_query_that_finds_the_task() -> None:
    kling = FakeKling(posts=["create_then_500"])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET"]
    assert len(kling.tasks) == 1
    assert submission.task_id == next(iter(kling.tasks.values()))["task_id"]


@pytest.mark.parametrize(
    "answer",
    [envelope(503, 5001, "maintenance"), envelope(504, 5002, "backlog"), httpx.Response(502)],
    ids=["503-5001", "504-5002", "502-plain"],
)
async def test_5xx_answer_without_a_task_is_queried_then_created_again(
    answer: httpx.Response,
) -> None:
    kling = FakeKling(posts=[answer, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]
    assert len(kling.tasks) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
)
async def test_connect_error_retries_the_create_without_a_query(error: Exception) -> None:
    kling = FakeKling(posts=[error, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]


async def test_failed_look_up_is_repeated_and_never_followed_by_a_blind_create() -> None:
    kling = FakeKling(
        posts=["create_then_lose"],
        gets=[httpx.ReadTimeout("slow"), envelope(503, 5001, "maintenance"), "lookup"],
    )
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "GET", "GET"]
    assert len(sleeps.delays) == 3
    assert submission.task_id == next(iter(kling.tasks.values()))["task_id"]


async def test_lost_answer_and_failing_look_ups_give_up_with_outcome_unknown() -> None:
    kling = FakeKling(posts=["create_then_lose"], gets=[httpx.ConnectError("down")] * 4)
    async with make_client(kling, max_attempts=5) as client:
        with pytest.raises(KlingUnreachable, match="may exist") as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST"] + ["GET"] * 4
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_unreachable_kling_raises_kling_unreachable_after_max_attempts() -> None:
    kling = FakeKling(posts=[httpx.ConnectError("refused")] * 3)
    async with make_client(kling, max_attempts=3) as client:
        with pytest.raises(KlingUnreachable, match="3 attempts") as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert "may exist" not in str(info.value)
    assert kling.methods == ["POST"] * 3


async def test_retry_logs_name_the_error_but_no_credential_or_callback_token() -> None:
    kling = FakeKling(posts=[envelope(429, 1303, "busy"), "create_then_lose"])
    with capture_logs() as logs:
        async with make_client(kling) as client:
            submission = await client.submit(GEN, VALID_BODIES[GEN])
    events = [entry["event"] for entry in logs]
    assert events.count("kling.create_attempt_failed") == 2
    assert "kling.create_recovered" in events
    failed = [e for e in logs if e["event"] == "kling.create_attempt_failed"]
    assert (failed[0]["code"], failed[0]["http_status"]) == (1303, 429)
    assert failed[1]["error"] == "ReadTimeout"
    text = repr(logs)
    token = submission.callback_url.rsplit("/", 1)[1]
    assert API_KEY not in text
    assert token not in text


async def test_plain_429_without_klings_envelope_is_retried() -> None:
    kling = FakeKling(posts=[httpx.Response(429, text="Too Many Requests"), "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]
