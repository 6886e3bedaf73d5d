"""The shapes that cross a boundary of the receiver, each defined once.

* The status API's answers (:class:`Task`, :class:`TaskSummary`, :class:`Delivery`, ...) and
  request bodies (:class:`RegistrationBody`, :class:`RedeliveryFilter`,
  :class:`PruneRequest`): handlers return and accept these, ``/openapi.json`` is generated
  from them (``receiver.openapi``), and the store's reads build them from rows
  (``receiver.store.reads``).
* The plugin event (:class:`Event`, :class:`SavedFile`, :class:`ResultURL`), re-exported by
  the plugin API ``receiver.plugins``; the store builds events from the same row mapping.

Field names are Kling's wherever the value is Kling's (PROTOCOL.md section 4, Kling's
"Callback Protocol" page); every time is Unix epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from receiver.results import ResultURL as ResultURL
from receiver.results import result_urls
from submitter.protocol import INTEGRAL, Millis, Route, TaskId, TaskStatus

#: The most ids a path or cursor may name: SQLite's INTEGER is a signed 64-bit number.
MAX_ROW_ID = 2**63 - 1
#: A page of ``GET /tasks`` or ``GET /deliveries``: ``limit`` is 1 to MAX_LIMIT, by default
#: DEFAULT_LIMIT.
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


class Verdict(StrEnum):
    """What a callback did: recorded a transition, repeated one, or arrived too late."""

    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"


class DeliveryState(StrEnum):
    """Where one delivery (a transition to one plugin) stands; see ``receiver.store.deliveries``.

    ``pending`` waits for its first attempt, ``running`` is claimed, ``failed`` waits for a
    retry, ``done`` and ``dead`` are final until replayed.
    """

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class TransitionSource(StrEnum):
    """What recorded a transition: Kling's callback, the submitter's registration, or
    ``kling-hooks reconcile`` (Kling's answer to a query, for a task whose callback was lost)."""

    CALLBACK = "callback"
    REGISTRATION = "registration"
    RECONCILE = "reconcile"


class _Shape(BaseModel):
    """An answer of the status API: every field declared and always sent, nothing else."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )


@dataclass(frozen=True)
class SavedFile:
    """A file a plugin saved for a task; returned by ``Plugin.handle``, stored with the
    delivery, shown under ``files`` in ``GET /tasks/{id}``.

    Attributes:
        url: Where it was fetched from (Kling's result URL).
        path: Where it is now (absolute path on the receiver's machine).
        bytes: Size in bytes.
        sha256: Hex digest of the content.
        content_type: The media type it was served with (``image/png``), or None.
    """

    url: str
    path: str
    bytes: int
    sha256: str
    content_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """``{url, path, bytes, sha256, content_type}``."""
        return asdict(self)


class Transition(_Shape):
    """One accepted state change of a task."""

    task_status: TaskStatus
    updated_at: int | None = Field(description="Kling's, Unix ms")
    received_at: int = Field(description="ours, Unix ms")


class Delivery(_Shape):
    """One delivery of a transition to one plugin (an outbox row)."""

    id: int
    plugin: str
    state: DeliveryState
    attempts: int = Field(description="attempts started")
    next_attempt_at: int | None = Field(description="Unix ms; null unless pending or failed")
    last_error: str | None
    task_status: TaskStatus = Field(description="the transition delivered")
    created_at: int = Field(description="ours, Unix ms")
    updated_at: int = Field(description="ours, Unix ms")


class ListedDelivery(Delivery):
    """A delivery in ``GET /deliveries``, with the task it belongs to."""

    task_id: str
    external_task_id: str


@dataclass(frozen=True)
class Backlog:
    """One plugin's outbox, counted at scrape time (``GET /metrics``, ``receiver.metrics``).

    Attributes:
        plugin: The plugin's name (as stored in its deliveries).
        pending: Deliveries not yet done or dead: waiting for their first attempt
            (``pending``), running, or waiting for a retry (``failed``).
        oldest_pending_at: ``created_at`` of the oldest of those, our clock, Unix ms; None
            when there is none.
        dead: Deliveries in ``dead`` (until replayed).
    """

    plugin: str
    pending: int = 0
    oldest_pending_at: int | None = None
    dead: int = 0


class TaskSummary(_Shape):
    """A task as ``GET /tasks`` lists it (no transitions, request or task_info)."""

    task_id: str
    external_task_id: str
    route: Route | None = Field(description="known once the submitter registered the task")
    task_status: TaskStatus
    task_status_msg: str | None
    task_result: dict[str, Any] | None
    final_unit_deduction: str | None = Field(description='Kling\'s string, e.g. "0.2"')
    created_at: int | None = Field(description="Kling's, Unix ms")
    updated_at: int | None = Field(description="Kling's, of the latest transition, Unix ms")
    first_seen_at: int = Field(description="ours, Unix ms")
    last_received_at: int = Field(description="ours, Unix ms")


class Task(TaskSummary):
    """One task with everything known of it (``GET /tasks/{id}``)."""

    task_info: dict[str, Any] | None
    request: dict[str, Any] | None = Field(description="the registered body, images redacted")
    transitions: list[Transition] = Field(description="oldest first")
    callbacks: dict[Verdict, int] = Field(description="callbacks received, by verdict")
    deliveries: list[Delivery] = Field(description="by id")
    files: list[SavedFile] = Field(description="files plugins saved for the task, by id")


class PluginInfo(_Shape):
    """An enabled plugin (``GET /plugins``)."""

    name: str
    version: str
    origin: str = Field(description="entry point or file")
    statuses: list[TaskStatus]
    routes: list[Route] | None = Field(description="null: every route")
    settings: dict[str, Any] = Field(description="secrets shown as **********")
    started: bool = Field(description="false when its start() failed")


class TaskPage(_Shape):
    """``GET /tasks``: newest first; ``next_cursor`` is null on the last page."""

    tasks: list[TaskSummary]
    next_cursor: str | None


class DeliveryPage(_Shape):
    """``GET /deliveries``: newest first; ``next_cursor`` is null on the last page."""

    deliveries: list[ListedDelivery]
    next_cursor: str | None


class PluginList(_Shape):
    """``GET /plugins``."""

    plugins: list[PluginInfo]


class Ok(_Shape):
    """``{"ok": true}``: the answer of ``/healthz`` and ``/readyz``."""

    ok: Literal[True] = True


class Accepted(Ok):
    """A callback's answer: what it did."""

    verdict: Verdict


class Registered(Accepted):
    """``POST /tasks``: what the registration did, for which task."""

    task_id: str


class Redelivered(Ok):
    """A replay's answer: how many deliveries are due again."""

    redelivered: int


class Pruned(Ok):
    """``POST /prune``: what was removed (or, with ``dry_run``, would be), and the space.

    Sizes are the database's pages (``page_count * page_size``), as committed; the file on
    disk follows at the next WAL checkpoint, which a vacuum runs at its end. On Postgres they
    are ``pg_database_size``, and ``free_bytes_after`` is 0 (not counted there).

    ``complete`` is False when the prune ended early, between two batches, because the
    receiver began to stop or the client went away: the counts are what was removed until
    then (every batch counted is committed), and the next prune goes on where it ended.
    """

    dry_run: bool
    complete: bool = Field(
        default=True,
        description="false: ended early between batches (the receiver stopping, or the client "
        "gone); the counts are what was removed until then, and a vacuum asked for may not have "
        "run or finished",
    )
    cutoff_ms: int = Field(description="rows older than this were removed, Unix ms")
    callbacks: int = Field(description="raw callback bodies removed")
    deliveries: int = Field(description="done deliveries removed")
    dead_kept: int = Field(description="dead deliveries older than the cutoff, kept")
    kept_for_files: int = Field(description="old done deliveries kept: a saved file names them")
    batches: int = Field(description="write operations the removal and the vacuum took")
    longest_batch_ms: float = Field(description="the slowest one, queued to committed")
    vacuum: Literal["none", "incremental", "full"] = Field(
        description="how free pages were given back: incremental steps, or one full VACUUM "
        "(a database made before schema 4); none without vacuum, and on Postgres (autovacuum "
        "makes the space reusable by itself)"
    )
    size_bytes_before: int
    size_bytes_after: int
    free_bytes_after: int = Field(description="free pages left inside the file")


class ErrorAnswer(_Shape):
    """Every refusal, with any status: ``{"ok": false, "error": "..."}``."""

    ok: Literal[False] = False
    error: str


class RegistrationBody(BaseModel):
    """``POST /tasks``: a submission made by the submitter."""

    model_config = ConfigDict(extra="forbid")

    route: Route
    task_id: TaskId
    external_task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    task_status: TaskStatus = TaskStatus.SUBMITTED
    created_at: Millis | None = None
    request: dict[str, Any] | None = None


#: The states a replay may select: every state but ``running``.
ReplayableState = Literal["dead", "failed", "done", "pending"]


class RedeliveryFilter(BaseModel):
    """``POST /deliveries/redeliver``: which deliveries to replay (an empty body: every
    ``dead`` one)."""

    model_config = ConfigDict(extra="forbid")

    plugin: StrictStr | None = None
    state: ReplayableState = "dead"
    since: Annotated[StrictInt, Field(ge=0, le=MAX_ROW_ID), INTEGRAL] | None = Field(
        default=None, description="only deliveries created at or after this time, Unix ms"
    )


class PruneRequest(BaseModel):
    """``POST /prune``: remove raw callbacks and done deliveries older than ``older_than_ms``
    (by the receiver's clock); see ``receiver.store.retention`` for what stays."""

    model_config = ConfigDict(extra="forbid")

    older_than_ms: Annotated[StrictInt, Field(ge=1, le=MAX_ROW_ID), INTEGRAL]
    dry_run: StrictBool = Field(default=False, description="count only; remove nothing")
    vacuum: StrictBool = Field(default=False, description="then give the free pages back")


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_status", TaskStatus(self.task_status))  # from a row

    @property
    def prompt(self) -> str | None:
        """The registered request's ``prompt``, when known."""
        value = (self.request or {}).get("prompt")
        return value if isinstance(value, str) else None

    def result_urls(self) -> list[ResultURL]:
        """Every URL in ``task_result``, in order: for each list (``images``, ``videos``,
        ``audios``...), each item's ``url`` and then its other ``*_url`` fields."""
        return list(result_urls(self.task_result or {}))

    def to_json(self) -> dict[str, Any]:
        """The event as JSON (what the webhook plugin sends): every field but the delivery's
        own (``delivery_id``, ``attempt``, ``saved_files``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _DELIVERY_ONLY}


_DELIVERY_ONLY = frozenset({"delivery_id", "attempt", "saved_files"})
