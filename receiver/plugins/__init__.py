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
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from receiver.errors import ReceiverError
from receiver.models import Event, ResultURL, SavedFile
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


class PluginError(ReceiverError):
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
