"""The plugin interface: what a kling-hooks plugin is, and what it is given.

A plugin is a subclass of :class:`Plugin` with a ``name``, a ``version``, the events it wants
(``default_statuses``, overridable per deployment with ``statuses`` and ``routes``), a pydantic
``settings_model`` for its ``[plugins.NAME]`` table, and an async :meth:`Plugin.handle` that
receives one :class:`Event`. The built-in downloader, Slack and webhook plugins are written and
registered exactly this way.

Discovery (``receiver.plugins.registry``):

* an installed distribution advertises the class in the entry-point group
  ``kling_hooks.plugins`` (``myplugin = "my_package.module:MyPlugin"``);
* a single file in ``--plugins-dir`` defines ``plugin = MyPlugin`` at module level.

A plugin runs only when the config file has a ``[plugins.NAME]`` table (``enabled`` defaults
to true there). Delivery is at least once: a handler may see the same event again (after a
crash, a timeout or a replay), with the same :attr:`Event.idempotency_key`.

How a handler ends decides what happens to the delivery:

* returns (``None``, or the :class:`SavedFile` records of files it saved): ``done``;
* raises :class:`RetryAfter`: retried no earlier than the given delay (at most 24 h);
* raises :class:`PermanentError`: ``dead`` at once (no retry can help);
* raises anything else, or exceeds ``timeout_s``: retried on ``retry_schedule_s`` with
  +/-20% jitter, then ``dead`` with the last error kept.

A :class:`PluginError` (the base of the two above) may carry the files the attempt saved
before it failed (``saved_files=``); they are stored as a success's would be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from submitter.protocol import Route, TaskStatus

__all__ = [
    "DEFAULT_RETRY_SCHEDULE_S",
    "MAX_RETRY_AFTER_S",
    "Event",
    "PermanentError",
    "Plugin",
    "PluginError",
    "PluginSettings",
    "ResultURL",
    "RetryAfter",
    "Route",
    "SavedFile",
    "TaskStatus",
    "retry_after_s",
]

#: Seconds to wait before attempts 2, 3, ... (so 8 attempts in all, over about 28 hours),
#: close to the schedule Standard Webhooks senders use. Each wait gets +/-20% jitter.
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


class PluginError(Exception):
    """Base of the errors a handler raises on purpose (:class:`RetryAfter`,
    :class:`PermanentError`, or a plugin's own subclass).

    Args:
        message: Kept as the delivery's ``last_error``.
        saved_files: Files the attempt saved before it failed; stored like a success's (so
            ``GET /tasks/{id}`` shows them, and the next attempt sees them in
            ``event.saved_files``).
    """

    def __init__(self, message: str = "", *, saved_files: Iterable[SavedFile] = ()) -> None:
        super().__init__(message)
        self.saved_files = tuple(saved_files)


#: The longest wait a :class:`RetryAfter` may ask for: 24 hours.
MAX_RETRY_AFTER_S = 86_400.0


class RetryAfter(PluginError):
    """Raise from :meth:`Plugin.handle` to be retried no earlier than ``seconds`` from now.

    Used for a target's ``429`` or ``503`` with ``Retry-After``. The attempt still counts
    towards ``retry_schedule_s``; after the last one the delivery is ``dead``.

    Args:
        seconds: The delay; clamped to [0, :data:`MAX_RETRY_AFTER_S`] (a target's absurd
            ``Retry-After`` cannot park a delivery for ever).
        message: Kept as the delivery's ``last_error``.
        saved_files: As for :class:`PluginError`.
    """

    def __init__(
        self, seconds: float, message: str = "", *, saved_files: Iterable[SavedFile] = ()
    ) -> None:
        wait_s = float(seconds)
        if not math.isfinite(wait_s) or wait_s > MAX_RETRY_AFTER_S:
            wait_s = MAX_RETRY_AFTER_S
        self.seconds = max(0.0, wait_s)
        super().__init__(message or f"retry after {self.seconds:g} s", saved_files=saved_files)


def retry_after_s(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 section 10.2.3): either
    delay-seconds or an HTTP-date (compared with ``now``, default the current UTC time).

    Returns:
        Seconds, never negative (a past date gives 0); None when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class PermanentError(PluginError):
    """Raise from :meth:`Plugin.handle` when no retry can succeed (a refused URL, a revoked
    webhook): the delivery goes straight to ``dead``, with this message as ``last_error``.
    It can still be replayed by hand once the cause is fixed."""


class PluginSettings(BaseModel):
    """The keys every ``[plugins.NAME]`` table accepts. Subclass it to add a plugin's own.

    Unknown keys are refused at start-up, with the plugin and the key named. Mark secrets
    ``SecretStr``: ``GET /plugins`` and the logs show them masked.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    retry_schedule_s: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_S), max_length=100
    )
    timeout_s: float = Field(default=60.0, gt=0)
    concurrency: int = Field(default=4, ge=1, le=256)
    statuses: list[TaskStatus] | None = None
    routes: list[Route] | None = None


@dataclass(frozen=True)
class SavedFile:
    """A file a plugin saved for a task; returned by :meth:`Plugin.handle`, stored with the
    delivery, shown under ``files`` in ``GET /tasks/{id}``.

    Attributes:
        url: Where it was fetched from (Kling's result URL).
        path: Where it is now (absolute path on the receiver's machine).
        bytes: Size in bytes.
        sha256: Hex digest of the content.
    """

    url: str
    path: str
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResultURL:
    """One URL in ``task_result``: ``kind`` is the list's name made singular, with the URL
    field's prefix (``image``, ``image_watermark``, ``video``, ``video_watermark``, ``audio``),
    ``index`` its position in that list."""

    kind: str
    index: int
    url: str

    @property
    def media(self) -> str:
        """``image``, ``video``, ``audio`` or ``other``: what content type to expect."""
        head = self.kind.split("_", 1)[0]
        return head if head in ("image", "video", "audio") else "other"


@dataclass(frozen=True)
class Event:
    """One task transition, as a plugin receives it.

    Attributes:
        idempotency_key: ``"{task_id}:{task_status}"``; the same on every redelivery and
            replay of this transition, to every plugin.
        delivery_id: The outbox row (``GET /deliveries``); attempt: 1 for the first try.
        task_id, external_task_id, task_status, task_status_msg, final_unit_deduction: Kling's
            fields (PROTOCOL.md section 4), as the transition's callback carried them.
        route: The Kling route (``videos/text2video``...), or None when the task was never
            registered by the submitter.
        task_result: Kling's ``task_result`` (``{"images": [...], "videos": [...]}``), or None.
        created_at, updated_at: Kling's timestamps, Unix ms (None when not sent).
        received_at: When kling-hooks accepted the transition, Unix ms.
        request: The body the task was created with, when registered (large Base64 images
            redacted), else None.
        saved_files: Files already recorded for this task by earlier deliveries.
    """

    idempotency_key: str
    delivery_id: int
    attempt: int
    task_id: str
    external_task_id: str
    route: str | None
    task_status: TaskStatus
    task_status_msg: str | None
    task_result: dict[str, Any] | None
    final_unit_deduction: str | None
    created_at: int | None
    updated_at: int | None
    received_at: int
    request: dict[str, Any] | None
    saved_files: tuple[SavedFile, ...] = field(default_factory=tuple)

    @property
    def prompt(self) -> str | None:
        """The registered request's ``prompt``, when known."""
        value = (self.request or {}).get("prompt")
        return value if isinstance(value, str) else None

    def result_urls(self) -> list[ResultURL]:
        """Every URL in ``task_result``, in order: for each list (``images``, ``videos``,
        ``audios``...), each item's ``url`` and then its other ``*_url`` fields."""
        return list(_result_urls(self.task_result or {}))

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (what the webhook plugin sends), without delivery details."""
        return {
            "idempotency_key": self.idempotency_key,
            "task_id": self.task_id,
            "external_task_id": self.external_task_id,
            "route": self.route,
            "task_status": self.task_status.value,
            "task_status_msg": self.task_status_msg,
            "task_result": self.task_result,
            "final_unit_deduction": self.final_unit_deduction,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "received_at": self.received_at,
            "request": self.request,
        }


def _result_urls(task_result: dict[str, Any]) -> Iterator[ResultURL]:
    for key, items in task_result.items():
        if not isinstance(items, list):
            continue
        singular = key[:-1] if key.endswith("s") else key
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            index = item.get("index", position)
            index = index if isinstance(index, int) else position
            names = sorted(k for k in item if k == "url" or k.endswith("_url"))
            names.sort(key=lambda k: k != "url")
            for name in names:
                url = item[name]
                if isinstance(url, str) and url:
                    kind = singular if name == "url" else f"{singular}_{name[: -len('_url')]}"
                    yield ResultURL(kind, index, url)


class Plugin:
    """Base class of every plugin (built-in or installed).

    Class attributes to set:
        name: The ``[plugins.NAME]`` table and the name in ``GET /plugins``; [a-z0-9_-]+.
        version: Shown by ``GET /plugins``.
        settings_model: A :class:`PluginSettings` subclass for the plugin's table.
        default_statuses: The statuses wanted when the table sets no ``statuses``.

    The registry constructs the plugin with its validated settings; then the dispatcher calls
    :meth:`start` once, :meth:`handle` per delivery (concurrently, up to ``concurrency``, each
    under ``timeout_s``), and :meth:`stop` at shutdown.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    settings_model: ClassVar[type[PluginSettings]] = PluginSettings
    default_statuses: ClassVar[frozenset[TaskStatus]] = frozenset(TaskStatus)

    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings

    @property
    def statuses(self) -> frozenset[TaskStatus]:
        """The task statuses this plugin gets events for."""
        if self.settings.statuses is not None:
            return frozenset(self.settings.statuses)
        return self.default_statuses

    @property
    def routes(self) -> frozenset[Route] | None:
        """The routes it gets events for; None means every route, including unknown ones."""
        return None if self.settings.routes is None else frozenset(self.settings.routes)

    def wants(self, task_status: str, route: str | None) -> bool:
        """Whether a transition to ``task_status`` of a task on ``route`` is for this plugin.

        Decided when the transition is written, from the route known then: with a
        ``routes`` filter, a task not (yet) registered by the submitter gets no event.
        """
        routes = self.routes
        return task_status in self.statuses and (routes is None or route in routes)

    async def start(self) -> None:
        """Open clients or check directories; an exception here disables only this plugin."""

    async def stop(self) -> None:
        """Close what :meth:`start` opened."""

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        """Act on one event. See the module docstring for what each outcome means."""
        raise NotImplementedError
