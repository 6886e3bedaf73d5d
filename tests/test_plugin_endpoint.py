"""The plugins' shared HTTP endpoint (receiver.plugins.endpoint), against a local sink: what
each answer means, the capped and redacted body excerpt, network errors that keep httpx's
texts (with the URL) out, and the http(s) URL settings types."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel, ValidationError

from receiver.plugins import PermanentError, PluginError, RetryAfter
from receiver.plugins.endpoint import (
    MAX_ERROR_BODY_CHARS,
    Answer,
    Endpoint,
    HttpURL,
    SecretHttpURL,
    StatusRules,
)
from tests.sinks import Answer as Reply
from tests.sinks import Sink, start_sink

RULES = StatusRules(permanent=frozenset({410}), retry_after=frozenset({429, 503}))
PATH = "/hooks/T0SECRET"


class TargetError(PluginError):
    """The retryable error of the plugin under test."""


def endpoint(
    url: str,
    *,
    timeout_s: float = 5.0,
    rules: StatusRules = RULES,
    secrets: tuple[str, ...] = (),
) -> Endpoint:
    return Endpoint(
        url,
        target="the target",
        error=TargetError,
        timeout_s=timeout_s,
        user_agent="kling-hooks/test",
        rules=rules,
        secrets=secrets,
    )


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with start_sink() as running:
        yield running


async def answer_to(sink: Sink, reply: Reply, secrets: tuple[str, ...] = ()) -> Answer:
    """Post once to ``sink`` answering ``reply``; returns what the endpoint made of it."""
    sink.answer(reply)
    target = endpoint(sink.url + PATH, secrets=secrets)
    await target.start()
    try:
        return await target.post(content=b"{}")
    finally:
        await target.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what each answer means -------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_done(sink: Sink, status: int) -> None:
    answer = await answer_to(sink, Reply(status, b"" if status == 204 else b"ok"))
    assert answer.status == status
    endpoint(sink.url).raise_for_status(answer)  # returns


async def test_a_permanent_status_is_a_permanent_error_naming_the_status_and_body(
    sink: Sink,
) -> None:
    answer = await answer_to(sink, Reply(410, b"unsubscribed"))
    with pytest.raises(PermanentError) as caught:
        endpoint(sink.url).raise_for_status(answer)
    assert str(caught.value) == "the target answered 410: unsubscribed"


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_status_with_the_header_asks_for_that_delay(
    sink: Sink, status: int
) -> None:
    answer = await answer_to(sink, Reply(status, b"slow down", headers={"Retry-After": "120"}))
    assert answer.retry_after == "120"
    with pytest.raises(RetryAfter) as caught:
        endpoint(sink.url).raise_for_status(answer)
    assert caught.value.seconds == 120
    assert str(caught.value) == f"the target answered {status}: slow down"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(429, b"slow down"), "the target answered 429: slow down"),
        (Reply(429, b"", headers={"Retry-After": "soon"}), "the target answered 429: (empty body)"),
        (Reply(500, b"oops", headers={"Retry-After": "5"}), "the target answered 500: oops"),
        (Reply(400, b"bad request"), "the target answered 400: bad request"),
        (
            Reply(302, b"", headers={"Location": "/elsewhere"}),
            "the target answered 302: (empty body)",
        ),
    ],
    ids=["429-without-header", "unreadable-header", "500-with-header", "400", "redirect"],
)
async def test_every_other_answer_is_the_plugins_retryable_error(
    sink: Sink, reply: Reply, message: str
) -> None:
    answer = await answer_to(sink, reply)
    with pytest.raises(TargetError) as caught:
        endpoint(sink.url).raise_for_status(answer)
    assert str(caught.value) == message
    assert len(sink.requests) == 1  # a redirect is not followed


def test_statuses_outside_the_rules_are_not_permanent_and_ignore_retry_after() -> None:
    rules = StatusRules(permanent=frozenset(range(400, 500)) - {408, 429}, retry_after={429})
    target = endpoint("https://example.com", rules=rules)
    with pytest.raises(PermanentError):
        target.raise_for_status(Answer(404, None, "no_service"))
    with pytest.raises(TargetError):
        target.raise_for_status(Answer(408, None, ""))
    with pytest.raises(TargetError):  # 503 is not in this rule set's retry_after
        target.raise_for_status(Answer(503, "5", ""))
    with pytest.raises(RetryAfter):
        target.raise_for_status(Answer(429, "5", ""))


# -- what is sent, and the body excerpt --------------------------------------------------------


async def test_a_post_sends_the_content_headers_and_user_agent(sink: Sink) -> None:
    target = endpoint(sink.url + PATH)
    await target.start()
    try:
        await target.post(content=b'{"a":1}', headers={"Content-Type": "application/json"})
        await target.post(json={"b": 2})
    finally:
        await target.stop()
    raw, encoded = sink.requests
    assert (raw.method, raw.path, raw.body) == ("POST", PATH, b'{"a":1}')
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["user-agent"] == "kling-hooks/test"
    assert encoded.json() == {"b": 2}
    assert encoded.headers["content-type"] == "application/json"


async def test_the_excerpt_is_one_line_cut_to_the_limit(sink: Sink) -> None:
    answer = await answer_to(sink, Reply(500, b"<html>\n  <p>oops</p>\n</html>\n" + b"x" * 500))
    assert answer.body.startswith("<html> <p>oops</p> </html> xxx")
    assert len(answer.body) == MAX_ERROR_BODY_CHARS


async def test_an_endless_body_is_read_only_up_to_the_cap(sink: Sink) -> None:
    answer = await answer_to(sink, Reply(500, b"y" * 1000, endless=True))
    assert answer.body == "y" * MAX_ERROR_BODY_CHARS


async def test_secrets_echoed_in_the_body_are_blanked_out(sink: Sink) -> None:
    echo = f"no such hook {sink.url}{PATH} ({PATH}) a/b".encode()
    answer = await answer_to(sink, Reply(404, echo), secrets=(sink.url + PATH, PATH, "/"))
    assert answer.body == "no such hook *** (***) a/b"  # one-character secrets are left alone


# -- network errors and the client's life ---------------------------------------------------


async def test_an_unreachable_endpoint_names_the_failure_not_the_url() -> None:
    target = endpoint(f"http://127.0.0.1:{closed_port()}{PATH}")
    await target.start()
    try:
        with pytest.raises(TargetError) as caught:
            await target.post(content=b"{}")
    finally:
        await target.stop()
    assert str(caught.value) == "cannot reach the target (ConnectError)"
    assert caught.value.__suppress_context__  # httpx's error (with the URL) is not chained


async def test_an_endpoint_that_does_not_answer_in_time_is_the_plugins_error(sink: Sink) -> None:
    sink.answer(Reply(hang=True))
    target = endpoint(sink.url + PATH, timeout_s=0.2)
    await target.start()
    try:
        with pytest.raises(TargetError) as caught:
            await target.post(content=b"{}")
    finally:
        await target.stop()
    assert str(caught.value) == "no answer from the target in time (ReadTimeout)"
    assert caught.value.__suppress_context__


async def test_posting_needs_start_and_again_after_stop(sink: Sink) -> None:
    target = endpoint(sink.url + PATH)
    with pytest.raises(RuntimeError, match="start"):
        await target.post(content=b"{}")
    await target.start()
    await target.stop()
    await target.stop()  # a second stop is harmless
    with pytest.raises(RuntimeError, match="start"):
        await target.post(content=b"{}")
    assert sink.requests == []


# -- the URL settings types -----------------------------------------------------------------


class Table(BaseModel):
    url: HttpURL
    hook: SecretHttpURL


@pytest.mark.parametrize(
    "value", ["ftp://example.com/T0SECRET", "file:///T0SECRET", "/T0SECRET", "http:///T0SECRET"]
)
def test_urls_that_are_not_http_with_a_host_are_refused_without_being_echoed(value: str) -> None:
    for field_name in ("url", "hook"):
        table = {"url": "https://example.com", "hook": "https://example.com", field_name: value}
        with pytest.raises(ValidationError) as caught:
            Table.model_validate(table)
        [error] = caught.value.errors(include_input=False)
        assert (error["loc"], error["msg"]) == (
            (field_name,),
            "Value error, must be an http(s) URL",
        )
        assert "T0SECRET" not in error["msg"]


def test_http_urls_are_accepted_and_a_secret_one_is_masked() -> None:
    table = Table(url="http://127.0.0.1:8080/hooks", hook="https://hooks.example.com/T0SECRET")
    assert table.url == "http://127.0.0.1:8080/hooks"
    assert table.hook.get_secret_value() == "https://hooks.example.com/T0SECRET"
    assert "T0SECRET" not in repr(table)


def test_the_endpoints_repr_shows_neither_its_url_nor_its_secrets() -> None:
    target = endpoint("https://hooks.example.com/T0SECRET", secrets=("T0SECRET",))
    assert "T0SECRET" not in repr(target)
