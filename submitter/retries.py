"""The client's retry policy: which failures are tried again, and how long it waits.

Source: ``docs/kling/PROTOCOL.md`` section 3 and Kling's "Rate Limits" page, which advises
exponential backoff starting at 1 s. Transient failures (:func:`submitter.answers.is_transient`,
and every ``httpx.TransportError``) are retried; final ones are raised at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from submitter.answers import is_transient
from submitter.errors import KlingAPIError, KlingUnreachable, SubmitterError

RATE_LIMIT_CODES = frozenset({1302, 1303})
"""Kling's "too many requests" codes: the wait is never shorter than ``backoff_base_s``."""

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per call and the backoff between them.

    Attributes:
        max_attempts: Attempts in total per call, at least 1.
        backoff_base_s: First retry delay, seconds; it doubles per retry.
        backoff_max_s: Upper bound of one retry delay, seconds.
        sleep: Awaited with each retry delay in seconds; tests inject a recorder.

    Raises:
        ValueError: ``max_attempts`` < 1.
    """

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be at least 1")

    async def run(
        self,
        attempt: Callable[[int], Awaitable[T]],
        *,
        failed: Callable[[int, Exception], None],
        what: str,
        note: Callable[[], str] = lambda: "",
    ) -> T:
        """Await ``attempt(n)`` for n = 1, 2... until one returns, waiting :meth:`delay_s`
        between attempts.

        Args:
            attempt: One try; its number (1 = first) is passed for logging.
            failed: Called with the number and the failure after each transient failure,
                the last one included.
            what: Names the call in the :class:`KlingUnreachable` message.
            note: Called once every attempt failed; its text ends that message.

        Raises:
            KlingAPIError: a final answer, at once; or the last answer when every attempt
                failed and the last failure was Kling's.
            KlingUnreachable: every attempt failed and the last had no answer; caused by
                that transport error.
        """
        last: Exception | None = None
        for number in range(1, self.max_attempts + 1):
            if last is not None:
                await self.sleep(self.delay_s(number - 1, last))
            try:
                return await attempt(number)
            except KlingAPIError as exc:
                if not is_transient(exc):
                    raise
                last = exc
            except httpx.TransportError as exc:
                last = exc
            failed(number, last)
        raise self._gave_up(last, what, note())

    def delay_s(self, retry: int, last: Exception) -> float:
        """Seconds before retry number ``retry`` (1 = first): exponential, jittered in
        [50 %, 100 %], capped at ``backoff_max_s``; at least ``backoff_base_s`` after
        1302/1303, since Kling advises backing off from 1 s (Rate Limits page)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (retry - 1))
        delay *= random.uniform(0.5, 1.0)
        if isinstance(last, KlingAPIError) and last.code in RATE_LIMIT_CODES:
            delay = max(delay, min(self.backoff_base_s, self.backoff_max_s))
        return delay

    def _gave_up(self, last: Exception | None, what: str, note: str) -> SubmitterError:
        """The error to raise once every attempt failed: the last Kling error as is, else
        :class:`KlingUnreachable` caused by the last transport error."""
        if isinstance(last, KlingAPIError):
            return last
        error = KlingUnreachable(
            f"{what}: no answer from Kling after {self.max_attempts} attempts "
            f"(last: {type(last).__name__}: {last}){note}"
        )
        error.__cause__ = last
        return error
