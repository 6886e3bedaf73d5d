"""Sending the simulator's callbacks: reshaped, duplicated or dropped as planned, retried.

Each status of a task gets one callback (PROTOCOL.md section 4): Kling's bare task object,
POSTed as JSON to the task's ``callback_url``. Its :class:`~submitter.simulator.faults.
CallbackPlan` may drop it, send it twice, wrap it in Kling's envelope or strip it to the old
schema. A POST answered non-2xx, or failing at transport level, is retried with exponential
backoff; every attempt is recorded in ``SimTask.callbacks``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import structlog

from submitter.protocol import TaskStatus
from submitter.simulator.faults import CallbackPlan
from submitter.simulator.tasks import CallbackAttempt, SimTask

log = structlog.get_logger("kling_hooks.simulator")

CALLBACK_TIMEOUT_S = 10.0


def callback_body(snapshot: dict[str, Any], plan: CallbackPlan) -> dict[str, Any]:
    """The JSON to POST for a task object ``snapshot``: without ``task_info`` and
    ``final_unit_deduction`` in the old schema, wrapped as ``{"code": 0, "message":
    "SUCCEED", "request_id", "data"}`` when the plan says envelope. ``snapshot`` is not
    modified."""
    body = dict(snapshot)
    if plan.old_schema:
        body.pop("task_info", None)
        body.pop("final_unit_deduction", None)
    if plan.envelope_request_id is not None:
        body = {
            "code": 0,
            "message": "SUCCEED",
            "request_id": plan.envelope_request_id,
            "data": body,
        }
    return body


class CallbackSender:
    """POSTs callbacks through one lazily opened ``httpx.AsyncClient``.

    Args:
        transport: The httpx transport (``httpx.ASGITransport(sink)`` in tests); None for the
            network.
        retries: Extra attempts after a non-2xx answer or a transport error; 3 means at most
            4 POSTs.
        backoff_s: Wait before the first retry, seconds; doubles on each retry.
    """

    def __init__(
        self, *, transport: httpx.AsyncBaseTransport | None, retries: int, backoff_s: float
    ) -> None:
        self._transport = transport
        self._retries = retries
        self._backoff_s = backoff_s
        self._client: httpx.AsyncClient | None = None

    async def send(
        self, task: SimTask, status: TaskStatus, snapshot: dict[str, Any], plan: CallbackPlan
    ) -> None:
        """Send the callback of ``status`` (task object ``snapshot``) as ``plan`` says: maybe
        not at all, maybe twice, reshaped. Nothing is sent when the task has no
        ``callback_url``. Never raises for an unreachable or refusing receiver."""
        if task.callback_url is None or not plan.send:
            return
        body = callback_body(snapshot, plan)
        for _ in range(plan.copies):
            await self._post(task, status, task.callback_url, body)

    async def aclose(self) -> None:
        """Close the HTTP client; a later :meth:`send` opens a new one."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(
        self, task: SimTask, status: TaskStatus, url: str, body: dict[str, Any]
    ) -> None:
        """POST ``body`` until a 2xx answer, at most ``1 + retries`` times, with exponential
        backoff; every attempt is appended to ``task.callbacks``."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=CALLBACK_TIMEOUT_S)
        for attempt in range(self._retries + 1):
            outcome = await _attempt(self._client, url, body)
            task.callbacks.append(CallbackAttempt(status, outcome))
            log.info(
                "simulator.callback",
                task_id=task.task_id,
                task_status=status.value,
                attempt=attempt + 1,
                outcome=outcome,
            )
            if isinstance(outcome, int) and 200 <= outcome < 300:
                return
            if attempt < self._retries:
                await asyncio.sleep(self._backoff_s * 2**attempt)


async def _attempt(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int | str:
    """One POST: the answer's HTTP status, or ``"<ErrorType>: <message>"`` when none came."""
    try:
        response = await client.post(url, json=body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return f"{type(exc).__name__}: {exc}"
    return response.status_code
