"""Distinct, valid Kling callbacks sent at a fixed concurrency, retried as Kling retries.

Every callback is its own task (``succeed``, about 1 KB, the body of ``bench/callbacks.py``)
with a valid callback URL token. A callback that gets no 200 (a 503, a refused or broken
connection) is sent again after ``retry_pause_s``, until it is acknowledged or the load stops;
each answer is recorded with its time, so a suite can tell what happened during a fault.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bench.workload import succeed_body
from submitter.tokens import CallbackTokens

#: ``(index, external_task_id) -> body``.
BodyOf = Callable[[int, str], bytes]


@dataclass(frozen=True)
class Sent:
    """One attempt: when it started and ended (monotonic s), its status (0: no answer, the
    connection failed) and whether a 503 carried ``Retry-After``."""

    started_s: float
    ended_s: float
    status: int
    retry_after: bool


async def poll_until(pred: Callable[[], bool], timeout_s: float, every_s: float = 0.025) -> bool:
    """Check ``pred`` every ``every_s`` until it holds (True) or ``timeout_s`` passed (False):
    for state outside this process (a database file, a subprocess's answers)."""
    for _ in range(math.ceil(timeout_s / every_s)):
        if pred():
            return True
        await asyncio.sleep(every_s)
    return pred()


def default_body(index: int, external_task_id: str) -> bytes:
    """A ``succeed`` body with five images, task_id derived from ``index``."""
    return succeed_body(f"9{index:012d}", external_task_id, int(time.time() * 1000))


@dataclass
class CallbackLoad:
    """Callbacks to ``url`` (the receiver's base URL) over ``concurrency`` connections.

    Args:
        count: How many distinct callbacks; None: new ones until :meth:`stop`.
        prefix: The external_task_ids are ``{prefix}-{index}``.
    """

    url: str
    secret: str
    prefix: str
    count: int | None
    concurrency: int
    body_of: BodyOf = default_body
    retry_pause_s: float = 0.05
    acked: set[str] = field(default_factory=set)
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tokens = CallbackTokens([self.secret])
        self._retry: collections.deque[int] = collections.deque()
        self._next = 0
        self._in_flight: set[int] = set()
        self._stopped = asyncio.Event()
        self.acked_changed = asyncio.Event()

    def external_task_id(self, index: int) -> str:
        return f"{self.prefix}-{index}"

    def stop(self) -> None:
        """Send nothing more (attempts in flight finish)."""
        self._stopped.set()

    def _take(self) -> int | None:
        if self._retry:
            return self._retry.popleft()
        if self.count is None or self._next < self.count:
            self._next += 1
            return self._next - 1
        return None

    async def run(self) -> None:
        """Send until every callback is acknowledged (``count`` given) or :meth:`stop`."""
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
            await asyncio.gather(*(self._worker(http) for _ in range(self.concurrency)))

    async def _worker(self, http: httpx.AsyncClient) -> None:
        in_flight = self._in_flight
        while not self._stopped.is_set():
            index = self._take()
            if index is None:
                if not in_flight:
                    return
                await asyncio.sleep(self.retry_pause_s)  # others may still need a retry
                continue
            in_flight.add(index)
            try:
                ok = await self._send(http, index)
            finally:
                in_flight.discard(index)
            if not ok:
                self._retry.append(index)
                await asyncio.sleep(self.retry_pause_s)

    async def _send(self, http: httpx.AsyncClient, index: int) -> bool:
        ext = self.external_task_id(index)
        url = self._tokens.callback_url(self.url, ext)
        started = time.monotonic()
        try:
            answer = await http.post(
                url,
                content=self.body_of(index, ext),
                headers={"Content-Type": "application/json"},
            )
            status, retry_after = answer.status_code, "retry-after" in answer.headers
        except httpx.HTTPError:
            status, retry_after = 0, False
        self.sent.append(Sent(started, time.monotonic(), status, retry_after))
        if status == 200:
            self.acked.add(ext)
            self.acked_changed.set()
        return status == 200
