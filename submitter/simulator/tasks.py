"""The tasks the simulator holds: one :class:`SimTask` each, kept in a :class:`TaskTable`.

Task ids follow Kling's two styles (PROTOCOL.md section 4): long digit strings such as
``867283741759111202``, and for every 4th task an old-style id such as
``CjI17WevH1IAAAAAAHmgsw``. Ids are drawn from the simulator's one ``random.Random``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import structlog

from submitter.protocol import Route, TaskStatus

log = structlog.get_logger("kling_hooks.simulator")

OLD_STYLE_ID_EVERY = 4
"""Every 4th task gets an old-style id such as ``CjI17WevH1IAAAAAAHmgsw``; the others get
long digit ids such as ``867283741759111202`` (PROTOCOL.md section 4)."""

_ALNUM = string.ascii_letters + string.digits


class CallbackAttempt(NamedTuple):
    """One POST of a callback: the status it carried and the outcome, an HTTP status (int) or
    the transport error (``"ConnectError: ..."``)."""

    task_status: TaskStatus
    outcome: int | str


@dataclass
class SimTask:
    """A task as the simulator holds it; :meth:`to_object` gives Kling's task object.

    Attributes:
        task_id: Kling's id, always a string.
        route: The route the task was created on.
        body: The create body as validated (aliases rewritten).
        external_task_id: The caller's id, or None.
        callback_url: Where callbacks go, or None (then none are sent).
        created_at: Unix epoch milliseconds.
        updated_at: Unix epoch milliseconds; strictly increases with each transition.
        task_status: The current status.
        task_status_msg: The failure reason, ``""`` otherwise.
        task_result: ``{"images": [...]}`` or ``{"videos": [...]}`` once succeeded, else ``{}``.
        final_unit_deduction: A decimal string once terminal (``"0"`` when failed), else None.
        callbacks: Every callback POST in the order made, retries included.
    """

    task_id: str
    route: Route
    body: dict[str, Any]
    external_task_id: str | None
    callback_url: str | None
    created_at: int
    updated_at: int
    task_status: TaskStatus = TaskStatus.SUBMITTED
    task_status_msg: str = ""
    task_result: dict[str, Any] = field(default_factory=dict)
    final_unit_deduction: str | None = None
    callbacks: list[CallbackAttempt] = field(default_factory=list)

    def to_object(self) -> dict[str, Any]:
        """Kling's task object (PROTOCOL.md section 4), as a query answer's ``data``.

        A failed task has ``task_info == {}`` and ``task_result == {}``, as Kling sends them.
        """
        failed = self.task_status is TaskStatus.FAILED
        info = (
            {}
            if failed or self.external_task_id is None
            else {"external_task_id": self.external_task_id}
        )
        obj: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.task_status.value,
            "task_status_msg": self.task_status_msg,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "task_info": info,
            "task_result": {} if failed else self.task_result,
        }
        if self.final_unit_deduction is not None:
            obj["final_unit_deduction"] = self.final_unit_deduction
        return obj


class TaskTable:
    """Every task the simulator made, by ``task_id`` and by ``external_task_id``.

    Args:
        rng: The simulator's one random source (task ids).
        clock_ms: Returns the current Unix epoch time in milliseconds (``created_at``).

    Attributes:
        by_id: Every task, by ``task_id``, in creation order.
    """

    def __init__(self, rng: random.Random, clock_ms: Callable[[], int]) -> None:
        self.by_id: dict[str, SimTask] = {}
        self._by_external: dict[str, SimTask] = {}
        self._rng = rng
        self._clock_ms = clock_ms
        self._created = 0

    def add(self, route: Route, body: dict[str, Any]) -> SimTask:
        """Make a ``submitted`` task for a validated create ``body`` and keep it."""
        self._created += 1
        task_id = self._new_id(old_style=self._created % OLD_STYLE_ID_EVERY == 0)
        created_ms = self._clock_ms()
        task = SimTask(
            task_id=task_id,
            route=route,
            body=body,
            external_task_id=body.get("external_task_id"),
            callback_url=body.get("callback_url"),
            created_at=created_ms,
            updated_at=created_ms,
        )
        self.by_id[task_id] = task
        if task.external_task_id is not None:
            self._by_external[task.external_task_id] = task
        log.info(
            "simulator.task_created",
            task_id=task_id,
            route=route.value,
            external_task_id=task.external_task_id,
        )
        return task

    def has_external(self, external_task_id: str) -> bool:
        """True when a task was already created with this ``external_task_id``."""
        return external_task_id in self._by_external

    def find(self, task_ref: str, routes: Collection[Route]) -> SimTask | None:
        """The task whose ``task_id`` or ``external_task_id`` is ``task_ref``, or None when
        there is none or it was created on a route not in ``routes``."""
        task = self.by_id.get(task_ref) or self._by_external.get(task_ref)
        return task if task is not None and task.route in routes else None

    def newest_first(self, routes: Collection[Route]) -> list[SimTask]:
        """The tasks created on any of ``routes``, newest first."""
        return [t for t in reversed(self.by_id.values()) if t.route in routes]

    def _new_id(self, *, old_style: bool) -> str:
        while True:
            if old_style:
                task_id = "Cj" + "".join(self._rng.choice(_ALNUM) for _ in range(20))
            else:
                task_id = str(self._rng.randrange(10**17, 10**19))  # 18 or 19 digits
            if task_id not in self.by_id:
                return task_id
