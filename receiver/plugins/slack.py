"""Slack notifications: one Block Kit message per task transition, through an incoming webhook.

Configure with a ``[plugins.slack]`` table::

    [plugins.slack]
    webhook_url = "https://hooks.slack.com/services/T000/B000/XXXX"   # a secret
    statuses = ["succeed", "failed"]                                  # the default

The message (:func:`build_message`) has a header (status and route), the task's fields
(route, ``external_task_id``, ``task_status``, ``final_unit_deduction``), the prompt of the
registered request (truncated), the reason of a failure (``task_status_msg``), links to every
result URL, a preview (image block) of each result image, and a context line with Kling's
``task_id``, the event's idempotency key (``event 1234:succeed``) and Kling's ``updated_at``.
The top-level ``text`` is the notification fallback. Slack's limits are kept: at most 50
blocks, 3,000 characters per section text, 2,000 per field, 150 per header, and ``&``, ``<``,
``>`` are escaped in mrkdwn (Slack: "Formatting text for app surfaces", "Block Kit"
reference: header, section, context and image blocks).

Answers (Slack: "Sending messages using incoming webhooks", errors table; "Rate limits"):
2xx is done; ``429`` raises :class:`RetryAfter` with its ``Retry-After``; ``5xx``, a timeout
or a network error raise :class:`SlackError` (retried on ``retry_schedule_s``); any other
``4xx`` (``400 invalid_payload``, ``403 action_prohibited``, ``404 no_service``,
``410 channel_is_archived``) raises :class:`PermanentError`. A message with image previews
that Slack refuses with ``400`` (``invalid_blocks`` when it cannot download an image) is sent
once more without them before the answer counts.

The webhook URL is a secret (anyone holding it can post to the channel): it is kept as a
``SecretStr``, and no log event or error message of this module contains it. httpx's own
exception texts include request URLs, so they are never passed on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field

import receiver
from receiver.plugins import Event, Plugin, PluginError, PluginSettings, SavedFile
from receiver.plugins.endpoint import Endpoint, SecretHttpURL, StatusRules
from submitter.protocol import TaskStatus

__all__ = ["SlackError", "SlackNotifier", "SlackSettings", "build_message"]

# Slack's Block Kit limits (Block Kit reference pages of each block type).
MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_FIELD_CHARS = 2000
MAX_HEADER_CHARS = 150
MAX_IMAGE_URL_CHARS = 3000
MAX_ALT_TEXT_CHARS = 2000
# Our own limits: a long prompt is cut, and at most this many previews are shown.
MAX_PROMPT_CHARS = 1000
MAX_IMAGE_BLOCKS = 10
#: Every 4xx but 408 (a timeout) and 429 (rate limited) is a refusal no retry can change.
RULES = StatusRules(permanent=frozenset(range(400, 500)) - {408, 429}, retry_after=frozenset({429}))

_ICONS = {
    TaskStatus.SUBMITTED: ":inbox_tray:",
    TaskStatus.PROCESSING: ":hourglass_flowing_sand:",
    TaskStatus.SUCCEED: ":white_check_mark:",
    TaskStatus.FAILED: ":x:",
}


class SlackError(PluginError):
    """Slack could not be reached or answered ``5xx`` (or another retryable status); the
    delivery is retried. The message never contains the webhook URL."""


class SlackSettings(PluginSettings):
    """The ``[plugins.slack]`` table: the common plugin keys, and:

    Attributes:
        webhook_url: The incoming webhook's URL (``http`` or ``https``), a secret.
        timeout_s: Seconds one attempt may take (connect, send, answer); default 30.
    """

    webhook_url: SecretHttpURL
    timeout_s: float = Field(default=30.0, gt=0)


class SlackNotifier(Plugin):
    """Posts a Block Kit message to a Slack incoming webhook for each wanted transition.

    Args:
        settings: A validated :class:`SlackSettings`.
        transport: An httpx transport to send through (tests); by default httpx's own.

    Raises:
        TypeError: ``settings`` is not a :class:`SlackSettings`.
    """

    name = "slack"
    version = receiver.__version__
    settings_model = SlackSettings
    default_statuses = frozenset({TaskStatus.SUCCEED, TaskStatus.FAILED})

    def __init__(
        self, settings: PluginSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        if not isinstance(settings, SlackSettings):
            raise TypeError(f"slack needs SlackSettings, not {type(settings).__name__}")
        super().__init__(settings)
        url = settings.webhook_url.get_secret_value()
        self._endpoint = Endpoint(
            url,
            target="Slack",
            error=SlackError,
            timeout_s=settings.timeout_s,
            user_agent=f"kling-hooks/{self.version}",
            rules=RULES,
            # The URL, and its path (the secret part), in case a proxy echoes them.
            secrets=(url, urlsplit(url).path),
            transport=transport,
        )

    async def start(self) -> None:
        """Open the HTTP client (one connection pool for every message)."""
        await self._endpoint.start()

    async def stop(self) -> None:
        """Close the HTTP client."""
        await self._endpoint.stop()

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        """Post the message for ``event``; returns None once Slack answered 2xx.

        If Slack refuses a message with image previews with ``400`` (it answers
        ``invalid_blocks`` when it cannot download an image), the message is sent once more
        without them.

        Raises:
            RetryAfter: Slack answered ``429``; ``seconds`` is its ``Retry-After``.
            PermanentError: Slack answered a ``4xx`` other than ``408``/``429`` (bad payload,
                revoked or unknown webhook, archived channel).
            SlackError: a timeout, a network error, ``5xx`` or another status.
            RuntimeError: :meth:`start` was not called.
        """
        message = build_message(event)
        answer = await self._endpoint.post(json=message)
        if answer.status == 400 and _has_images(message):
            answer = await self._endpoint.post(json=build_message(event, previews=False))
        self._endpoint.raise_for_status(answer)
        return None


# -- the message ----------------------------------------------------------------------------


def build_message(event: Event, *, previews: bool = True) -> dict[str, Any]:
    """The incoming-webhook body for ``event``.

    Args:
        event: The transition to announce.
        previews: Add an image block per result image (at most 10).

    Returns:
        ``{"text": <fallback, mrkdwn>, "blocks": [<at most 50 Block Kit blocks>]}``.
    """
    blocks: list[dict[str, Any]] = [_header(event), _fields(event)]
    if event.prompt:
        blocks.append(_section(_quoted("Prompt", event.prompt)))
    if event.task_status is TaskStatus.FAILED or event.task_status_msg:
        label = "Reason" if event.task_status is TaskStatus.FAILED else "Message"
        blocks.append(_section(_quoted(label, event.task_status_msg or "(Kling gave no reason)")))
    blocks += [_section(text) for text in _link_sections(event)]
    blocks = blocks[: MAX_BLOCKS - 1]  # room for the context block
    if previews:
        room = min(MAX_BLOCKS - 1 - len(blocks), MAX_IMAGE_BLOCKS)
        blocks += list(_images(event))[:room]
    return {"text": _fallback(event), "blocks": [*blocks, _context(event)]}


def _has_images(message: dict[str, Any]) -> bool:
    return any(block["type"] == "image" for block in message["blocks"])


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn reserves: ``&``, ``<``, ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _quoted(label: str, text: str) -> str:
    """``*label*`` and ``text`` as a block quote: escaped, cut to fit one section."""
    limit = MAX_PROMPT_CHARS
    while True:
        lines = _truncate(text, limit).splitlines() or [""]
        quoted = f"*{label}*\n" + "\n".join(f">{escape(line)}" for line in lines)
        if len(quoted) <= MAX_SECTION_CHARS:
            return quoted
        limit //= 2  # escaping made it too long (``&`` -> ``&amp;``)


def _title(event: Event) -> str:
    return f"{event.route or 'Kling task'}: {event.task_status.value}"


def _fallback(event: Event) -> str:
    text = f"Kling task {event.external_task_id} ({_title(event)})"
    if event.task_status is TaskStatus.FAILED and event.task_status_msg:
        text += f": {event.task_status_msg}"
    return escape(_truncate(text, MAX_SECTION_CHARS))


def _header(event: Event) -> dict[str, Any]:
    text = _truncate(f"{_ICONS[event.task_status]} {_title(event)}", MAX_HEADER_CHARS)
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _fields(event: Event) -> dict[str, Any]:
    pairs = [
        ("Route", f"`{escape(event.route)}`" if event.route else "unknown (not registered)"),
        ("Task", f"`{escape(event.external_task_id)}`"),
        ("Status", event.task_status.value),
    ]
    if event.final_unit_deduction:
        pairs.append(("Units charged", escape(event.final_unit_deduction)))
    fields = [
        {"type": "mrkdwn", "text": _truncate(f"*{name}*\n{value}", MAX_FIELD_CHARS)}
        for name, value in pairs
    ]
    return {"type": "section", "fields": fields}


def _link(url: str, label: str) -> str:
    # In <url|label>, a "|" would end the URL and "<", ">", "&" must be escaped.
    return f"<{escape(url.replace('|', '%7C'))}|{escape(label)}>"


def _link_sections(event: Event) -> Iterator[str]:
    """``*Results*`` and one line per result URL, split into texts of at most 3,000 chars."""
    links = (_link(r.url, f"{r.kind.replace('_', ' ')} {r.index + 1}") for r in event.result_urls())
    lines = [line for line in links if len(line) < MAX_SECTION_CHARS - len("*Results*")]
    text = "*Results*"
    for line in lines:
        if len(text) + 1 + len(line) > MAX_SECTION_CHARS:
            yield text
            text = ""
        text = f"{text}\n{line}" if text else line
    if lines:
        yield text


def _images(event: Event) -> Iterator[dict[str, Any]]:
    for r in event.result_urls():
        if r.kind == "image" and len(r.url) <= MAX_IMAGE_URL_CHARS:
            alt = _truncate(f"image {r.index + 1} of {event.external_task_id}", MAX_ALT_TEXT_CHARS)
            yield {"type": "image", "image_url": r.url, "alt_text": alt}


def _context(event: Event) -> dict[str, Any]:
    parts = [f"Kling task_id `{escape(event.task_id)}`", f"event {escape(event.idempotency_key)}"]
    if event.updated_at is not None:
        seconds = event.updated_at // 1000
        fallback = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(f"updated <!date^{seconds}^{{date_short_pretty}} {{time}}|{fallback}>")
    parts.append("kling-hooks")
    text = _truncate(" \u00b7 ".join(parts), MAX_SECTION_CHARS)
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}
