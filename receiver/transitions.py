"""The task state machine: what one callback or registration does to the stored state.

Pure functions over an in-memory view of the rows a batch touches; ``receiver.writer`` loads
that view, applies a whole batch and writes the result in one transaction.

Rules (PROTOCOL.md section 4 and the receiver's response table):

* ``(task_id, task_status)`` is the deduplication key: seen before -> ``duplicate``.
* States are ordered ``submitted < processing < succeed | failed``. A status at or below the
  task's current rank is ``stale``: a terminal state never moves, and ``processing`` after
  ``succeed`` does not reopen the task.
* Otherwise the transition is ``new`` and the task takes the callback's ``task_status_msg``,
  ``task_result``, ``final_unit_deduction`` and timestamps.
* The URL's ``external_task_id`` and the body's ``task_id`` must belong to the same task:
  otherwise :class:`TaskConflict` (answered 409, nothing stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from receiver.errors import TaskConflict
from receiver.models import TransitionSource, Verdict
from submitter.protocol import TaskObject, TaskStatus


@dataclass
class TaskRow:
    """One row of ``tasks``; JSON columns are kept as text."""

    task_id: str
    external_task_id: str
    task_status: TaskStatus
    first_seen_at: int
    last_received_at: int
    route: str | None = None
    request_json: str | None = None
    task_status_msg: str | None = None
    task_result_json: str | None = None
    task_info_json: str | None = None
    final_unit_deduction: str | None = None
    created_at: int | None = None
    updated_at: int | None = None


class Applies(Protocol):
    """What applies a callback or a registration: the in-memory :class:`Batch` (SQLite), or a
    backend that decides in the database (``receiver.store.postgres.records``)."""

    def apply_callback(self, cb: IncomingCallback) -> Verdict:
        """Record one callback; returns its verdict. Raises :class:`TaskConflict`."""
        ...

    def apply_registration(self, reg: Registration) -> Verdict:
        """Record one registration; returns its verdict. Raises :class:`TaskConflict`."""
        ...


class HasBatch(Protocol):
    """What an operation of this module needs of the writer's transaction: its batch."""

    @property
    def batch(self) -> Applies: ...


@dataclass(frozen=True)
class IncomingCallback:
    """An authenticated, parsed callback: the URL's external_task_id, the task, the raw body;
    ``source`` is ``reconcile`` when the task object is Kling's answer to a query instead.

    A write operation (``receiver.writer.Writer.submit``): its verdict is returned once the
    transaction that recorded it has committed.
    """

    external_task_id: str
    task: TaskObject
    body: str
    received_at_ms: int
    source: TransitionSource = TransitionSource.CALLBACK

    @property
    def task_keys(self) -> tuple[str, str]:
        """``(task_id, external_task_id)``: the task rows the writer loads for it."""
        return self.task.task_id, self.external_task_id

    def run(self, tx: HasBatch) -> Verdict:
        """Apply it to the transaction's batch. Raises :class:`TaskConflict`."""
        return tx.batch.apply_callback(self)


@dataclass(frozen=True)
class Registration:
    """A submission reported by the submitter (``POST /tasks``); a write operation like
    :class:`IncomingCallback`."""

    task_id: str
    external_task_id: str
    route: str
    request_json: str | None
    task_status: TaskStatus
    created_at: int | None
    received_at_ms: int

    @property
    def task_keys(self) -> tuple[str, str]:
        """``(task_id, external_task_id)``: the task rows the writer loads for it."""
        return self.task_id, self.external_task_id

    def run(self, tx: HasBatch) -> Verdict:
        """Apply it to the transaction's batch. Raises :class:`TaskConflict`."""
        return tx.batch.apply_registration(self)


@dataclass(frozen=True)
class TransitionRow:
    """One accepted state change, with the event it carries as it was when accepted."""

    id: int
    task_id: str
    task_status: TaskStatus
    updated_at: int | None
    received_at: int
    source: TransitionSource
    task_status_msg: str | None = None
    task_result_json: str | None = None
    final_unit_deduction: str | None = None


@dataclass(frozen=True)
class CallbackRow:
    """One row of ``callbacks``: the raw body of an accepted callback (or of a reconciled
    query answer), with its verdict."""

    task_id: str
    task_status: TaskStatus
    verdict: Verdict
    received_at: int
    body: str
    source: TransitionSource = TransitionSource.CALLBACK


@dataclass
class Batch:
    """The stored view a batch starts from, and the writes it has produced so far.

    Args:
        tasks: Every existing task the batch names, by task_id.
        seen: The ``(task_id, task_status)`` pairs already stored for those tasks.
        next_transition_id: The id the next new transition gets (ids are the event ids that
            outbox rows will refer to, so they are assigned here, inside the transaction).
    """

    tasks: dict[str, TaskRow]
    seen: set[tuple[str, TaskStatus]]
    next_transition_id: int
    by_external: dict[str, str] = field(init=False)
    changed: dict[str, TaskRow] = field(default_factory=dict)
    transitions: list[TransitionRow] = field(default_factory=list)
    callbacks: list[CallbackRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_external = {t.external_task_id: t.task_id for t in self.tasks.values()}

    def _task_for(self, task_id: str, external_task_id: str) -> TaskRow | None:
        task = self.tasks.get(task_id)
        owner = self.by_external.get(external_task_id)
        if (task is not None and task.external_task_id != external_task_id) or (
            owner is not None and owner != task_id
        ):
            raise TaskConflict(
                f"task_id {task_id} and external_task_id {external_task_id} belong to "
                "different tasks"
            )
        return task

    def _add(self, task: TaskRow) -> None:
        self.tasks[task.task_id] = task
        self.by_external[task.external_task_id] = task.task_id
        self.changed[task.task_id] = task

    def _transition(
        self,
        task: TaskRow,
        status: TaskStatus,
        updated_at: int | None,
        now: int,
        source: TransitionSource,
    ) -> None:
        self.seen.add((task.task_id, status))
        by_callback = source is not TransitionSource.REGISTRATION  # Kling's task object
        self.transitions.append(
            TransitionRow(
                self.next_transition_id,
                task.task_id,
                status,
                updated_at,
                now,
                source,
                task.task_status_msg if by_callback else None,
                task.task_result_json if by_callback else None,
                task.final_unit_deduction if by_callback else None,
            )
        )
        self.next_transition_id += 1

    def _judge(self, task: TaskRow | None, status: TaskStatus) -> Verdict:
        if task is None:
            return Verdict.NEW
        if (task.task_id, status) in self.seen:
            return Verdict.DUPLICATE
        if status.rank <= task.task_status.rank:
            return Verdict.STALE
        return Verdict.NEW

    def apply_callback(self, cb: IncomingCallback) -> Verdict:
        """Apply one callback; returns its verdict. Raises :class:`TaskConflict`."""
        t = cb.task
        task = self._task_for(t.task_id, cb.external_task_id)
        verdict = self._judge(task, t.task_status)
        now = cb.received_at_ms
        if verdict is Verdict.NEW:
            if task is None:
                task = TaskRow(t.task_id, cb.external_task_id, t.task_status, now, now)
            task.task_status = t.task_status
            task.task_status_msg = t.task_status_msg
            task.task_result_json = _dump(t.task_result)
            info = t.task_info.model_dump(exclude_none=True) if t.task_info else {}
            if info:  # failed tasks often send task_info {}: keep what earlier ones said
                task.task_info_json = _dump(info)
            task.final_unit_deduction = t.final_unit_deduction
            task.created_at = task.created_at or t.created_at
            task.updated_at = t.updated_at if t.updated_at is not None else now
            self._transition(task, task.task_status, t.updated_at, now, cb.source)
        if task is not None:
            task.last_received_at = now
            self._add(task)
        self.callbacks.append(
            CallbackRow(t.task_id, t.task_status, verdict, now, cb.body, cb.source)
        )
        return verdict

    def apply_registration(self, reg: Registration) -> Verdict:
        """Apply one registration: fills in route and request, and records ``submitted`` when
        the task has no state yet. Raises :class:`TaskConflict`."""
        task = self._task_for(reg.task_id, reg.external_task_id)
        verdict = self._judge(task, reg.task_status)
        now = reg.received_at_ms
        if task is None:
            task = TaskRow(reg.task_id, reg.external_task_id, reg.task_status, now, now)
            task.updated_at = reg.created_at or now
            self._transition(
                task, task.task_status, reg.created_at, now, TransitionSource.REGISTRATION
            )
        elif verdict is Verdict.NEW:
            task.task_status = reg.task_status
            self._transition(
                task, task.task_status, reg.created_at, now, TransitionSource.REGISTRATION
            )
        task.route = task.route or reg.route
        task.request_json = task.request_json or reg.request_json
        task.created_at = task.created_at or reg.created_at
        self._add(task)
        return verdict


#: Compact JSON; one encoder for every call (``json.dumps`` with ``separators`` builds one
#: each time).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dump(value: object) -> str | None:
    return None if value is None else _ENCODER.encode(value)
