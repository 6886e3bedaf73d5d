"""The built-in webhook plugin: Standard Webhooks messages to a local sink that verifies them
with the ``standardwebhooks`` library, through a real receiver; the same ``webhook-id`` on a
redelivery, Retry-After, 410 Gone, and the secret checked at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.config import ConfigError, Settings
from receiver.models import DeliveryState
from receiver.plugins import Event, PluginError
from receiver.plugins.registry import load_plugins
from receiver.plugins.webhook import WebhookError, payload
from submitter.protocol import TaskStatus
from tests.conftest import (
    Outcomes,
    Receiver,
    deliveries,
    make_settings,
    start_receiver,
    task_body,
)
from tests.sinks import Answer, Recorded, Sink, start_sink

pytestmark = pytest.mark.both_backends

FAST = [0.05, 0.05]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ=="
ROUTE = "videos/text2video"
REQUEST = {"prompt": "rain on a window", "duration": "5"}
RESULT = {"videos": [{"id": "v1", "url": "https://cdn.example.com/v1.mp4", "duration": "5.1"}]}


def webhook_settings(tmp_path: Path, sink: Sink, **table: Any) -> Settings:
    webhook = {
        "url": sink.url + "/hooks/kling",
        "secret": SECRET,
        "retry_schedule_s": FAST,
        **table,
    }
    return make_settings(tmp_path, plugins={"webhook": webhook})


def verify(request: Recorded, secret: str = SECRET) -> Any:
    """What the endpoint would do: check the signature over the bytes it got, parse them."""
    return Webhook(secret).verify(request.body, request.headers)


async def register(r: Receiver, task_id: str, ext: str) -> None:
    await r.register(task_id, ext, ROUTE, REQUEST)


def succeed(task_id: str, ext: str) -> dict[str, Any]:
    return task_body(task_id, "succeed", ext, final_unit_deduction="1", task_result=RESULT)


async def test_endpoint_verifies_a_signed_message_for_every_transition(tmp_path: Path) -> None:
    async with start_sink() as sink, start_receiver(webhook_settings(tmp_path, sink)) as r:
        outcomes = Outcomes(r)
        await register(r, "1", "kh-1")
        await r.post_callback("kh-1", task_body("1", "processing", "kh-1"))
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.ended(3)
    by_id = {q.headers["webhook-id"]: q for q in sink.requests}
    assert sorted(by_id) == ["1:processing", "1:submitted", "1:succeed"]
    for request in sink.requests:
        assert (request.method, request.path) == ("POST", "/hooks/kling")
        assert request.headers["content-type"] == "application/json"
        message = verify(request)
        assert message["type"] == f"task.{message['data']['task_status']}"
        assert message["data"]["idempotency_key"] == request.headers["webhook-id"]
        with pytest.raises(WebhookVerificationError):
            verify(request, OTHER_SECRET)
    done = verify(by_id["1:succeed"])
    assert done == {
        "type": "task.succeed",
        "timestamp": "2026-03-29T17:24:50.000Z",  # Kling's updated_at, 1774805090000
        "data": {
            "idempotency_key": "1:succeed",
            "task_id": "1",
            "external_task_id": "kh-1",
            "route": ROUTE,
            "task_status": "succeed",
            "task_status_msg": "",
            "task_result": RESULT,
            "final_unit_deduction": "1",
            "created_at": 1774805076166,
            "updated_at": 1774805090000,
            "received_at": done["data"]["received_at"],
            "request": REQUEST,
        },
    }


async def test_redelivery_after_500_has_the_same_webhook_id_and_body_and_a_valid_signature(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, start_receiver(webhook_settings(tmp_path, sink)) as r:
        sink.answer(Answer(500, b"<html>oops</html>\n"))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        seen = await outcomes.ended(1)
    assert [(j.event.attempt, o.state) for j, o in seen] == [
        (1, DeliveryState.FAILED),
        (2, DeliveryState.DONE),
    ]
    assert seen[0][1].last_error == "WebhookError: the endpoint answered 500: <html>oops</html>"
    first, second = sink.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "1:succeed"
    assert first.body == second.body
    assert verify(first) == verify(second)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_on_429_or_503_sets_the_next_attempt(tmp_path: Path, status: int) -> None:
    async with start_sink() as sink, start_receiver(webhook_settings(tmp_path, sink)) as r:
        sink.answer(Answer(status, b"slow down", headers={"Retry-After": "120"}))
        outcomes = Outcomes(r)
        await r.post_callback("kh-1", succeed("1", "kh-1"))
        await outcomes.until(lambda seen: len(seen) == 1)
        [d] = deliveries(r.services.settings.kling_hooks_db)
    expected_error = f"RetryAfter: the endpoint answered {status}: slow down"
    assert (d["state"], d["last_error"]) == ("failed", expected_error)
    assert d["next_attempt_at"] - d["updated_at"] == pytest.approx(120_000, abs=50)


async def test_410_gone_is_dead_after_one_attempt(tmp_path: Path) -> None:
    async with start_sink(Answer(410, b"unsubscribed")) as sink:
        async with start_receiver(webhook_settings(tmp_path, sink)) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(r.services.settings.kling_hooks_db)
    assert (d["state"], d["attempts"]) == ("dead", 1)
    assert d["last_error"] == "PermanentError: the endpoint answered 410: unsubscribed"
    assert len(sink.requests) == 1


async def test_an_endpoint_echoing_its_url_has_it_blanked_out_of_last_error(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink:
        url = f"{sink.url}/hooks/kling?token=T0SECRET"
        sink.default = Answer(404, f"no hook at {url}".encode())
        settings = make_settings(
            tmp_path, plugins={"webhook": {"url": url, "secret": SECRET, "retry_schedule_s": []}}
        )
        async with start_receiver(settings) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(r.services.settings.kling_hooks_db)
    assert d["last_error"] == "WebhookError: the endpoint answered 404: no hook at ***"


def test_webhook_error_is_a_plugin_error() -> None:
    assert issubclass(WebhookError, PluginError)


async def test_other_refusals_are_retried_on_the_schedule_then_dead(tmp_path: Path) -> None:
    async with start_sink(Answer(400, b"bad request")) as sink:
        async with start_receiver(webhook_settings(tmp_path, sink)) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(r.services.settings.kling_hooks_db)
    assert (d["state"], d["attempts"]) == ("dead", 3)  # 1 + len(retry_schedule_s)
    assert d["last_error"] == "WebhookError: the endpoint answered 400: bad request"
    assert [q.headers["webhook-id"] for q in sink.requests] == ["1:succeed"] * 3


@pytest.mark.parametrize(
    "secret",
    ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not*base64!", "whsec_abc=def"],
    ids=["no-prefix", "empty", "not-base64", "bad-padding"],
)
def test_bad_secret_is_a_start_up_error_naming_the_key_not_the_value(secret: str) -> None:
    table = {"url": "https://example.com/hooks", "secret": secret}
    with pytest.raises(ConfigError, match=r"plugins\.webhook\.secret: Value error") as caught:
        load_plugins({"webhook": table})
    value = secret.removeprefix("whsec_")
    assert not value or value not in str(caught.value)


def test_url_must_be_http_and_is_required() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.webhook\.url: Value error, must be an http"):
        load_plugins({"webhook": {"url": "file:///etc/passwd", "secret": SECRET}})
    with pytest.raises(ConfigError, match=r"plugins\.webhook\.url: Field required"):
        load_plugins({"webhook": {"secret": SECRET}})


def test_plugin_description_masks_the_secret_and_defaults_to_every_status() -> None:
    [loaded] = load_plugins({"webhook": {"url": "https://example.com/hooks", "secret": SECRET}})
    described = loaded.describe(started=True).model_dump(mode="json")
    assert described["settings"]["secret"] == "**********"
    assert described["statuses"] == ["failed", "processing", "submitted", "succeed"]
    assert SECRET not in repr(described)


def test_payload_timestamp_falls_back_to_the_receive_time_without_updated_at() -> None:
    event = Event(
        idempotency_key="9:failed",
        delivery_id=1,
        attempt=1,
        task_id="9",
        external_task_id="kh-9",
        route=None,
        task_status=TaskStatus.FAILED,
        task_status_msg="content safety check failed",
        task_result=None,
        final_unit_deduction=None,
        created_at=None,
        updated_at=None,
        received_at=1774805090123,
        request=None,
    )
    message = payload(event)
    assert (message["type"], message["timestamp"]) == ("task.failed", "2026-03-29T17:24:50.123Z")
    assert message["data"] == event.to_json()


async def test_an_endpoint_echoing_only_its_query_token_has_it_blanked_out_of_last_error(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink:
        url = f"{sink.url}/hooks/kling?token=T0%2FSECRET&team=t1"
        sink.default = Answer(403, b'{"error": "bad token T0/SECRET (also T0%2FSECRET)"}')
        settings = make_settings(
            tmp_path, plugins={"webhook": {"url": url, "secret": SECRET, "retry_schedule_s": []}}
        )
        async with start_receiver(settings) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", succeed("1", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(r.services.settings.kling_hooks_db)
    assert "SECRET" not in d["last_error"]
    assert d["last_error"].endswith('answered 403: {"error": "bad token *** (also ***)"}')


def test_get_plugins_masks_a_query_token_and_credentials_in_a_url() -> None:
    url = "https://user:pw@example.com/hooks?token=T0SECRET&team=t1"
    [loaded] = load_plugins({"webhook": {"url": url, "secret": SECRET}})
    described = loaded.describe(started=True).model_dump(mode="json")
    assert described["settings"]["url"] == (
        "https://**********@example.com/hooks?token=**********&team=**********"
    )
    [plain] = load_plugins({"webhook": {"url": "https://example.com/hooks", "secret": SECRET}})
    assert plain.describe(started=True).settings["url"] == "https://example.com/hooks"


def test_a_bare_query_token_and_a_broken_url_are_masked_whole() -> None:
    # "?s3cr3t" parses as a parameter name: it was shown in clear as "?s3cr3t=**********"
    from receiver.plugins.registry import masked_url

    assert (
        masked_url("https://example.com/hooks?s3cr3tTOKEN")
        == "https://example.com/hooks?**********"
    )
    assert masked_url("http://[bad") == "**********"  # urlsplit refuses it: no 500
    assert masked_url("not a url") == "not a url"


def test_a_short_secret_inside_a_long_one_does_not_split_its_redaction() -> None:
    # a query value "en" inside the whsec_ secret was blanked first, and the rest of the
    # signing secret then printed in clear
    from receiver.plugins.endpoint import Endpoint, StatusRules

    signing = "whsec_enMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    endpoint = Endpoint(
        "https://example.com/h?lang=en",
        target="the endpoint",
        error=RuntimeError,
        timeout_s=1,
        user_agent="t",
        rules=StatusRules(),
        secrets=("en", signing),
    )
    assert endpoint._excerpt(f"bad secret {signing}") == "bad secret ***"
