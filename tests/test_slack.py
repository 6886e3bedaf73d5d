"""The built-in Slack plugin: Block Kit messages to a local sink standing in for Slack, through
a real receiver; retries, Retry-After, dead letters, and the webhook URL kept out of every log
line and error."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from receiver.config import ConfigError, Settings
from receiver.logging import configure_logging
from receiver.models import DeliveryState
from receiver.plugins import Event, PluginError
from receiver.plugins.registry import load_plugins
from receiver.plugins.slack import (
    MAX_BLOCKS,
    MAX_HEADER_CHARS,
    MAX_IMAGE_BLOCKS,
    MAX_SECTION_CHARS,
    SlackError,
    SlackNotifier,
    SlackSettings,
    build_message,
)
from submitter.protocol import TaskStatus
from tests.conftest import (
    Outcomes,
    Receiver,
    deliveries,
    make_settings,
    start_receiver,
    task_body,
)
from tests.sinks import Answer, Sink, start_sink

pytestmark = pytest.mark.both_backends

FAST = [0.05, 0.05]
HOOK_PATH = "/services/T0SECRET/B0SECRET/XSECRETTOKEN"
SECRET_PART = "XSECRETTOKEN"
ROUTE = "images/generations"
PROMPT = "a lighthouse at dawn & <the sea>"
IMAGE_URLS = ["https://cdn.example.com/a.png?sig=1&exp=2", "https://cdn.example.com/b.png"]
WATERMARKED = "https://cdn.example.com/a-wm.png"


# -- helpers --------------------------------------------------------------------------------


def slack_settings(tmp_path: Path, sink: Sink, **table: Any) -> Settings:
    slack = {"webhook_url": sink.url + HOOK_PATH, "retry_schedule_s": FAST, **table}
    return make_settings(tmp_path, plugins={"slack": slack})


async def register(r: Receiver, task_id: str, ext: str, prompt: str = PROMPT) -> None:
    await r.register(task_id, ext, ROUTE, {"prompt": prompt, "n": 2})


def succeed(task_id: str, ext: str) -> dict[str, Any]:
    images = [{"index": 0, "url": IMAGE_URLS[0], "watermark_url": WATERMARKED}]
    images.append({"index": 1, "url": IMAGE_URLS[1]})
    return task_body(
        task_id, "succeed", ext, final_unit_deduction="0.2", task_result={"images": images}
    )


def failed(task_id: str, ext: str, reason: str = "content safety check failed") -> dict[str, Any]:
    return task_body(task_id, "failed", ext, task_status_msg=reason, task_result={})


def texts(message: dict[str, Any]) -> list[str]:
    """Every mrkdwn/plain text of a message's blocks (section text and fields, context)."""
    found = []
    for block in message["blocks"]:
        if "text" in block:
            found.append(block["text"]["text"])
        found += [f["text"] for f in block.get("fields", [])]
        found += [e["text"] for e in block.get("elements", []) if "text" in e]
    return found


def images(message: dict[str, Any]) -> list[str]:
    return [b["image_url"] for b in message["blocks"] if b["type"] == "image"]


def header(message: dict[str, Any]) -> str:
    [block] = [b for b in message["blocks"] if b["type"] == "header"]
    return str(block["text"]["text"])


def make_event(**fields: Any) -> Event:
    values: dict[str, Any] = {
        "idempotency_key": "1:succeed",
        "delivery_id": 1,
        "attempt": 1,
        "task_id": "1",
        "external_task_id": "kh-1",
        "route": ROUTE,
        "task_status": TaskStatus.SUCCEED,
        "task_status_msg": "",
        "task_result": {"images": [{"index": 0, "url": IMAGE_URLS[0]}]},
        "final_unit_deduction": "1",
        "created_at": 1774805076166,
        "updated_at": 1774805090000,
        "received_at": 1774805090100,
        "request": {"prompt": PROMPT},
    }
    return Event(**{**values, **fields})


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put back the logging set-up (structlog, root handlers, httpx levels) a test changed."""
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved_levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    try:
        yield
    finally:
        structlog.configure(**saved_structlog)
        root.handlers[:], root.level = saved_root
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


# -- which transitions are announced --------------------------------------------------------


async def test_slack_gets_one_message_per_final_transition_and_none_before(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        outcomes = Outcomes(r)
        await register(r, "1", "kh-1")
        await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await r.post_callback("kh-2", task_body("2", "processing", "kh-2"))
        await r.post_callback("kh-2", failed("2", "kh-2"))
        await outcomes.ended(2)
    # Deliveries are written with their transition: none exist for submitted/processing.
    rows = deliveries(r.services.settings.kling_hooks_db)
    got = [(d["task_id"], d["task_status"], d["state"]) for d in rows]
    assert got == [("1", "succeed", "done"), ("2", "failed", "done")]
    assert len(sink.requests) == 2
    assert [header(q.json()) for q in sink.requests] == [
        f":white_check_mark: {ROUTE}: succeed",
        ":x: Kling task: failed",
    ]


async def test_slack_gets_processing_when_its_statuses_include_it(tmp_path: Path) -> None:
    async with start_sink() as sink:
        settings = slack_settings(tmp_path, sink, statuses=["processing", "succeed"])
        async with start_receiver(settings) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            await outcomes.ended(2)
    statuses = sorted(job.event.task_status.value for job, _ in outcomes.seen)
    assert statuses == ["processing", "succeed"]
    assert sorted(header(q.json()).split(": ")[-1] for q in sink.requests) == statuses


# -- the message ----------------------------------------------------------------------------


async def test_message_shows_route_task_prompt_state_result_links_and_image_previews(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        outcomes = Outcomes(r)
        await register(r, "1", "kh-1")
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.ended(1)
    [request] = sink.requests
    assert (request.method, request.path) == ("POST", HOOK_PATH)
    assert request.headers["content-type"] == "application/json"
    message = request.json()
    assert message["text"] == f"Kling task kh-1 ({ROUTE}: succeed)"
    assert header(message) == f":white_check_mark: {ROUTE}: succeed"
    all_text = "\n".join(texts(message))
    assert f"*Route*\n`{ROUTE}`" in all_text
    assert "*Task*\n`kh-1`" in all_text
    assert "*Status*\nsucceed" in all_text
    assert "*Units charged*\n0.2" in all_text
    assert "*Prompt*\n>a lighthouse at dawn &amp; &lt;the sea&gt;" in all_text
    assert (
        "*Results*\n"
        "<https://cdn.example.com/a.png?sig=1&amp;exp=2|image 1>\n"
        "<https://cdn.example.com/a-wm.png|image watermark 1>\n"
        "<https://cdn.example.com/b.png|image 2>"
    ) in all_text
    [context] = [b["elements"][0]["text"] for b in message["blocks"] if b["type"] == "context"]
    assert context.startswith("Kling task_id `1` \u00b7 event 1:succeed \u00b7 updated <!date^")
    # One preview per result image, none for the watermarked copy.
    assert images(message) == IMAGE_URLS
    assert [b["type"] for b in message["blocks"]] == [
        "header", "section", "section", "section", "image", "image", "context",
    ]  # fmt: skip


async def test_failed_message_shows_the_state_and_kling_reason(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        outcomes = Outcomes(r)
        await register(r, "1", "kh-1")
        await r.post_callback("kh-1", failed("1", "kh-1", reason="risk <control> & more"))
        await outcomes.ended(1)
    message = sink.requests[0].json()
    assert header(message) == f":x: {ROUTE}: failed"
    assert message["text"] == f"Kling task kh-1 ({ROUTE}: failed): risk &lt;control&gt; &amp; more"
    assert "*Reason*\n>risk &lt;control&gt; &amp; more" in texts(message)
    assert "*Status*\nfailed" in "\n".join(texts(message))
    assert images(message) == []


def test_message_stays_within_slack_limits_for_long_prompts_and_many_results() -> None:
    many = [{"index": i, "url": f"https://cdn.example.com/{i}.png?a=1&b=2"} for i in range(200)]
    event = make_event(
        route="videos/text2video" + "x" * 200,
        request={"prompt": "&" * 10_000},
        task_result={"images": many},
    )
    message = build_message(event)
    blocks = message["blocks"]
    assert len(blocks) <= MAX_BLOCKS
    assert len(header(message)) <= MAX_HEADER_CHARS
    assert all(len(text) <= MAX_SECTION_CHARS for text in texts(message))
    assert len(images(message)) == MAX_IMAGE_BLOCKS
    assert blocks[-1]["type"] == "context"
    prompt = next(t for t in texts(message) if t.startswith("*Prompt*"))
    assert prompt.endswith("\u2026")


# -- answers: retries, Retry-After, dead letters ---------------------------------------------


async def test_500_is_retried_with_the_same_idempotency_key_until_done(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        sink.answer(Answer(500, b"rollup_error"))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        seen = await outcomes.ended(1)
    assert [(j.event.idempotency_key, j.event.attempt, o.state) for j, o in seen] == [
        ("1:succeed", 1, DeliveryState.FAILED),
        ("1:succeed", 2, DeliveryState.DONE),
    ]
    assert seen[0][1].last_error == "SlackError: Slack answered 500: rollup_error"
    assert len(sink.requests) == 2
    assert sink.requests[0].body == sink.requests[1].body


async def test_429_retry_after_delays_the_next_attempt_by_that_many_seconds(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        sink.answer(Answer(429, b"rate_limited", headers={"Retry-After": "1"}))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        [(_, first)] = await outcomes.until(lambda seen: len(seen) == 1)
        [d] = deliveries(r.services.settings.kling_hooks_db)
        seen = await outcomes.ended(1)
    assert (d["state"], d["last_error"]) == (
        "failed",
        "RetryAfter: Slack answered 429: rate_limited",
    )
    # Retry-After: 1 (not the 0.05 s schedule), counted from when the attempt failed.
    assert d["next_attempt_at"] - d["updated_at"] == pytest.approx(1000, abs=50)
    assert first.next_attempt_at == d["next_attempt_at"]
    assert [o.state for _, o in seen] == [DeliveryState.FAILED, DeliveryState.DONE]


REFUSALS = [
    (400, b"invalid_payload"),
    (403, b"action_prohibited"),
    (404, b"no_service"),
    (410, b"channel_is_archived"),
]


@pytest.mark.parametrize(("status", "body"), REFUSALS)
async def test_refusing_4xx_is_dead_after_one_attempt(
    tmp_path: Path, status: int, body: bytes
) -> None:
    async with start_sink(Answer(status, body)) as sink:
        async with start_receiver(slack_settings(tmp_path, sink)) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", failed("1", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(r.services.settings.kling_hooks_db)
    assert (d["state"], d["attempts"]) == ("dead", 1)
    assert d["last_error"] == f"PermanentError: Slack answered {status}: {body.decode()}"
    assert len(sink.requests) == 1


async def test_message_refused_with_previews_is_sent_again_without_them(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        sink.answer(Answer(400, b"invalid_blocks"))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        seen = await outcomes.ended(1)
    assert [o.state for _, o in seen] == [DeliveryState.DONE]
    first, second = (q.json() for q in sink.requests)
    assert images(first) == IMAGE_URLS
    assert images(second) == []
    assert texts(second) == texts(first)


# -- the webhook URL is a secret --------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
async def test_webhook_url_appears_in_no_log_line_and_no_last_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Everything (structlog events, stdlib records of httpx, httpcore, uvicorn) at debug,
    # into the captured stderr.
    configure_logging("json", "debug")
    async with start_sink() as sink:
        echo = f"no such hook {sink.url}{HOOK_PATH} ({HOOK_PATH})".encode()
        sink.answer(Answer(500, echo), Answer(503, echo))
        sink.default = Answer(404, echo)
        async with start_receiver(slack_settings(tmp_path, sink)) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            seen = await outcomes.ended(1)
    logged = capsys.readouterr().err
    assert [o.state for _, o in seen] == [
        DeliveryState.FAILED, DeliveryState.FAILED, DeliveryState.DEAD,
    ]  # fmt: skip
    assert "delivery_dead" in logged  # the log was captured at debug level
    assert SECRET_PART not in logged
    errors = [str(d["last_error"]) for d in deliveries(r.services.settings.kling_hooks_db)]
    assert errors == ["PermanentError: Slack answered 404: no such hook *** (***)"]
    assert all(SECRET_PART not in str(o.last_error) for _, o in seen)


async def test_a_408_or_5xx_is_retried_as_a_slack_error(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(slack_settings(tmp_path, sink)) as r:
        sink.answer(Answer(408, b"timeout"), Answer(503, b"busy", headers={"Retry-After": "60"}))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        seen = await outcomes.ended(1)
    assert [(o.state, o.last_error) for _, o in seen] == [
        (DeliveryState.FAILED, "SlackError: Slack answered 408: timeout"),
        # Slack documents Retry-After for 429 only: a 503 waits on the schedule.
        (DeliveryState.FAILED, "SlackError: Slack answered 503: busy"),
        (DeliveryState.DONE, None),
    ]


async def test_unreachable_slack_error_names_the_failure_not_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}{HOOK_PATH}"
    plugin = SlackNotifier(SlackSettings(webhook_url=url))
    await plugin.start()
    try:
        with pytest.raises(SlackError) as caught:
            await plugin.handle(make_event())
    finally:
        await plugin.stop()
    assert str(caught.value) == "cannot reach Slack (ConnectError)"
    assert isinstance(caught.value, PluginError)
    assert caught.value.__suppress_context__  # httpx's error (with the URL) is not chained


def test_settings_refuse_a_webhook_url_that_is_not_http_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_plugins({"slack": {"webhook_url": f"ftp://hooks.example.com{HOOK_PATH}"}})
    assert "plugins.slack.webhook_url: Value error, must be an http(s) URL" in str(caught.value)
    assert SECRET_PART not in str(caught.value)
    with pytest.raises(ConfigError, match=r"plugins\.slack\.webhook_url: Field required"):
        load_plugins({"slack": {}})


def test_plugin_description_masks_the_webhook_url_and_defaults_to_final_statuses() -> None:
    [loaded] = load_plugins({"slack": {"webhook_url": f"https://hooks.example.com{HOOK_PATH}"}})
    described = loaded.describe(started=True).model_dump(mode="json")
    assert described["settings"]["webhook_url"] == "**********"
    assert described["statuses"] == ["failed", "succeed"]
    assert described["settings"]["timeout_s"] == 30.0
    assert SECRET_PART not in repr(described)


async def test_handle_before_start_is_an_error() -> None:
    plugin = SlackNotifier(SlackSettings(webhook_url="https://hooks.example.com" + HOOK_PATH))
    with pytest.raises(RuntimeError, match="start"):
        await plugin.handle(make_event())
