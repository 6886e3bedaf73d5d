"""Forward every task transition to an HTTP endpoint as a signed Standard Webhooks message.

Configure with a ``[plugins.webhook]`` table::

    [plugins.webhook]
    url = "https://example.com/hooks/kling"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"   # base64 after "whsec_"
    statuses = ["submitted", "processing", "succeed", "failed"]   # the default

Each event is one ``POST`` (Standard Webhooks specification, standardwebhooks.com: payload
structure, signature scheme, headers, and "Retries" for the status codes)::

    Content-Type: application/json
    webhook-id: <task_id>:<task_status>     the event's idempotency key: the same on every
                                            redelivery and replay, so receivers deduplicate
    webhook-timestamp: <Unix seconds>       when this attempt was sent
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

    {"type": "task.<task_status>",          task.submitted, task.processing, task.succeed,
                                            task.failed (Kling's spelling)
     "timestamp": "2026-03-29T17:24:50.000Z",  when the transition happened (Kling's
                                            updated_at, else when kling-hooks received it)
     "data": {<Event.to_json()>}}           idempotency_key, task_id, external_task_id, route,
                                            task_status, task_status_msg, task_result,
                                            final_unit_deduction, created_at, updated_at,
                                            received_at, request

The body is the same on every attempt; only ``webhook-timestamp`` and the signature change.
Receivers verify it with any Standard Webhooks library, e.g. in Python
``Webhook(secret).verify(body, headers)``.

Answers: ``2xx`` is done; ``410 Gone`` raises :class:`PermanentError` (the convention for
"stop sending"); ``429`` or ``503`` with ``Retry-After`` raise :class:`RetryAfter`; any other
status, a timeout or a network error raise :class:`WebhookError` (retried on
``retry_schedule_s``). Error messages carry the status and the start of the body, never the
secret, nor the URL (it may carry a token in its query).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

import receiver
from receiver.plugins import Event, Plugin, PluginError, PluginSettings, SavedFile
from receiver.plugins.endpoint import Endpoint, HttpURL, StatusRules

__all__ = ["WebhookError", "WebhookForwarder", "WebhookSettings", "payload"]

SECRET_PREFIX = "whsec_"
#: ``410 Gone`` is the convention for "stop sending"; ``429`` and ``503`` may say when to retry.
RULES = StatusRules(permanent=frozenset({410}), retry_after=frozenset({429, 503}))


class WebhookError(PluginError):
    """The endpoint could not be reached or answered a status other than 2xx, 410, or
    429/503 with ``Retry-After``; the delivery is retried."""


class WebhookSettings(PluginSettings):
    """The ``[plugins.webhook]`` table: the common plugin keys, and:

    Attributes:
        url: The endpoint (``http`` or ``https``).
        secret: The signing secret, ``whsec_`` followed by base64 (the Standard Webhooks
            form; the specification recommends 24 to 64 random bytes).
        timeout_s: Seconds one attempt may take (connect, send, answer); default 30.
    """

    url: HttpURL
    secret: SecretStr
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr) -> SecretStr:
        # The messages must not echo the secret.
        text = value.get_secret_value()
        if not text.startswith(SECRET_PREFIX):
            raise ValueError(f"must be a Standard Webhooks secret: {SECRET_PREFIX} + base64")
        encoded = text[len(SECRET_PREFIX) :]
        if not encoded:
            raise ValueError(f"the part after {SECRET_PREFIX} is empty")
        try:
            # The library's own decoding skips stray characters; a typo must not pass.
            base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            Webhook(text)
        except (binascii.Error, EmptyWebhookSecretError, RuntimeError):
            raise ValueError(f"the part after {SECRET_PREFIX} is not valid base64") from None
        return value


class WebhookForwarder(Plugin):
    """Sends each wanted event, signed, to the configured endpoint.

    Args:
        settings: A validated :class:`WebhookSettings`.
        transport: An httpx transport to send through (tests); by default httpx's own.
        clock_s: The wall clock, Unix seconds (for ``webhook-timestamp``).

    Raises:
        TypeError: ``settings`` is not a :class:`WebhookSettings`.
    """

    name = "webhook"
    version = receiver.__version__
    settings_model = WebhookSettings

    def __init__(
        self,
        settings: PluginSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(settings, WebhookSettings):
            raise TypeError(f"webhook needs WebhookSettings, not {type(settings).__name__}")
        super().__init__(settings)
        signing_secret = settings.secret.get_secret_value()
        self._signer = Webhook(signing_secret)
        self._clock_s = clock_s
        self._endpoint = Endpoint(
            settings.url,
            target="the endpoint",
            error=WebhookError,
            timeout_s=settings.timeout_s,
            user_agent=f"kling-hooks/{self.version}",
            rules=RULES,
            # An answer may echo what it was sent: the URL (its query may carry a token: the
            # whole query, and each value alone) and the signing secret, with or without its
            # whsec_ prefix.
            secrets=(
                settings.url,
                urlsplit(settings.url).query,
                *(value for _, value in parse_qsl(urlsplit(settings.url).query) if value),
                signing_secret,
                signing_secret.removeprefix("whsec_"),
            ),
            transport=transport,
        )

    async def start(self) -> None:
        """Open the HTTP client (one connection pool for every event)."""
        await self._endpoint.start()

    async def stop(self) -> None:
        """Close the HTTP client."""
        await self._endpoint.stop()

    def signed_headers(self, msg_id: str, body: str) -> dict[str, str]:
        """The Standard Webhooks headers for ``body`` sent now as message ``msg_id``."""
        sent_at = datetime.fromtimestamp(int(self._clock_s()), UTC)
        return {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, sent_at, body),
        }

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        """Send ``event``; returns None once the endpoint answered 2xx.

        Raises:
            PermanentError: the endpoint answered ``410 Gone``.
            RetryAfter: ``429`` or ``503`` with a readable ``Retry-After``.
            WebhookError: any other status, a timeout or a network error.
            RuntimeError: :meth:`start` was not called.
        """
        body = json.dumps(payload(event), ensure_ascii=False, separators=(",", ":"))
        headers = self.signed_headers(event.idempotency_key, body)
        answer = await self._endpoint.post(content=body.encode(), headers=headers)
        self._endpoint.raise_for_status(answer)
        return None


def payload(event: Event) -> dict[str, Any]:
    """The message body for ``event`` (see the module docstring for its shape)."""
    at_ms = event.updated_at if event.updated_at is not None else event.received_at
    timestamp = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return {
        "type": f"task.{event.task_status.value}",
        "timestamp": timestamp.replace("+00:00", "Z"),
        "data": event.to_json(),
    }
