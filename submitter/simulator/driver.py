"""Moving each simulated task through its states: ``submitted -> processing -> succeed | failed``.

Every created task gets a background asyncio task that sleeps the planned delay before each
step, applies the transition, and hands a snapshot of the task object to the callback sender
(:mod:`submitter.simulator.delivery`). With ``Plan.reorder`` the snapshots are held and sent
after the task ends, newest first. A succeeded task gets result URLs under
``{base_url}/files/`` and Kling's unit deduction.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import structlog

from submitter.protocol import TaskStatus
from submitter.simulator.faults import CallbackPlan, Faults, Plan, draw_plan
from submitter.simulator.tasks import SimTask

log = structlog.get_logger("kling_hooks.simulator")

SendCallback = Callable[[SimTask, TaskStatus, dict[str, Any], CallbackPlan], Awaitable[None]]
"""``send(task, status, snapshot, plan)``: delivers one status's callback (never raises)."""


class Driver:
    """Runs one background asyncio task per simulated task and knows when all have ended.

    Args:
        rng: The simulator's one random source; each task's :class:`Plan` is drawn from it
            when the task starts.
        faults: The misbehaviour to draw plans against.
        delay_s: (min, max) seconds between a task's steps.
        clock_ms: Returns the current Unix epoch time in milliseconds (``updated_at``).
        send: Delivers each callback.
    """

    def __init__(
        self,
        *,
        rng: random.Random,
        faults: Faults,
        delay_s: tuple[float, float],
        clock_ms: Callable[[], int],
        send: SendCallback,
    ) -> None:
        self._rng = rng
        self._faults = faults
        self._delay_s = delay_s
        self._clock_ms = clock_ms
        self._send = send
        self._running: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self, task: SimTask, *, base_url: str) -> None:
        """Draw ``task``'s plan now, then drive it in a background asyncio task, kept
        referenced until it ends. ``base_url`` prefixes its result file URLs."""
        plan = draw_plan(self._rng, self._faults, self._delay_s)
        running = asyncio.create_task(
            self._drive(task, plan, base_url.rstrip("/")), name=f"simulator:{task.task_id}"
        )
        self._running.add(running)
        self._idle.clear()
        running.add_done_callback(self._ended)

    async def wait_idle(self) -> None:
        """Return once no task is being driven."""
        await self._idle.wait()

    async def cancel_all(self) -> None:
        """Cancel every task still being driven and await them."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _ended(self, running: asyncio.Task[None]) -> None:
        self._running.discard(running)
        if not self._running:
            self._idle.set()

    async def _drive(self, task: SimTask, plan: Plan, base_url: str) -> None:
        """Move ``task`` through its states, sending a callback after each one."""
        terminal = TaskStatus.FAILED if plan.fails else TaskStatus.SUCCEED
        steps = (TaskStatus.SUBMITTED, TaskStatus.PROCESSING, terminal)
        held: list[tuple[TaskStatus, dict[str, Any], CallbackPlan]] = []
        try:
            for status, delay_s, callback in zip(steps, plan.delays_s, plan.callbacks, strict=True):
                await asyncio.sleep(delay_s)
                if status is not TaskStatus.SUBMITTED:
                    self._transition(task, status, plan, base_url)
                held.append((status, task.to_object(), callback))
                if not plan.reorder:
                    await self._send(task, *held.pop())
            for status, snapshot, callback in reversed(held):
                await self._send(task, status, snapshot, callback)
        except Exception:
            log.exception("simulator.driver_failed", task_id=task.task_id)

    def _transition(self, task: SimTask, status: TaskStatus, plan: Plan, base_url: str) -> None:
        task.task_status = status
        task.updated_at = max(self._clock_ms(), task.updated_at + 1)
        if status is TaskStatus.FAILED:
            task.task_status_msg = plan.reason
            task.final_unit_deduction = "0"
        elif status is TaskStatus.SUCCEED:
            task.task_result = _result(task, plan, base_url)
            task.final_unit_deduction = _deduction(task)
        log.info("simulator.transition", task_id=task.task_id, task_status=status.value)


def _result(task: SimTask, plan: Plan, base_url: str) -> dict[str, Any]:
    """``task_result`` of a succeeded task: one URL per image (``n``, default 1), or one video
    whose ``duration`` is the request's string (default ``"5"``)."""
    if task.route.value.startswith("images/"):
        count = task.body.get("n") or 1
        return {
            "images": [
                {"index": i, "url": f"{base_url}/files/{task.task_id}-{i}.png"}
                for i in range(count)
            ]
        }
    video = {
        "id": plan.video_id,
        "url": f"{base_url}/files/{task.task_id}.mp4",
        "duration": task.body.get("duration") or "5",
    }
    return {"videos": [video]}


def _deduction(task: SimTask) -> str:
    """Units charged for a succeeded task, as Kling's decimal string: 0.2 per image; for a
    video 1 per 5 seconds, doubled in ``pro`` mode."""
    if task.route.value.startswith("images/"):
        units = Decimal("0.2") * (task.body.get("n") or 1)
    else:
        units = Decimal(task.body.get("duration") or "5") / 5
        if task.body.get("mode") == "pro":
            units *= 2
    return f"{units.normalize():f}"
