"""The :class:`Simulator`: wires the API, the task driver and callback delivery into one app."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware

from submitter.protocol import now_ms
from submitter.providers import OFFICIAL, Provider
from submitter.simulator.api import KlingAPI
from submitter.simulator.delivery import CallbackSender
from submitter.simulator.driver import Driver
from submitter.simulator.faults import Faults
from submitter.simulator.recorder import RecordedRequest, Recorder
from submitter.simulator.tasks import SimTask, TaskTable

_NO_FAULTS = Faults()


class Simulator:
    """The Kling simulator: an ASGI app plus what it recorded.

    Args:
        faults: Misbehaviour to inject (:class:`Faults`); none by default.
        delay_s: (min, max) seconds between a task's steps, drawn uniformly per step.
        seed: Seed of the one ``random.Random`` behind every random choice; None for a
            random seed.
        provider: Whose paths and body rules the API serves (:mod:`submitter.providers`):
            CometAPI's multi-image bodies at ``images/generations``, its 2 to 4 subjects...
            Kling's own (``official``) by default.
        prefix: Path prefix of the API routes (``"/kling"``); ``""`` for Kling's own layout.
            None: the provider's prefix (``""`` for ``official``, ``"/kling"`` for the
            resellers).
        api_key: When set, the only bearer accepted besides a valid JWT (reseller style).
        access_key: With ``secret_key``: bearers are HS256 JWTs signed with ``secret_key``
            whose ``iss`` is ``access_key`` (Kling's "General Information" page).
        secret_key: See ``access_key``.
        callback_transport: The httpx transport for callbacks (``httpx.ASGITransport(sink)``
            in tests); None for the network.
        callback_retries: Extra attempts for a callback answered non-2xx or failing at
            transport level; 3 means at most 4 POSTs.
        callback_backoff_s: Wait before the first retry, seconds; doubles on each retry.
        clock_ms: Returns the current Unix epoch time in milliseconds (timestamps and JWT
            ``exp``/``nbf`` checks).

    With no key configured, any non-empty bearer is accepted.

    Attributes:
        app: The Starlette app. Its lifespan closes the simulator on shutdown; it also works
            without a lifespan (``httpx.ASGITransport`` runs none).
        faults: The ``faults`` given.
        requests: Every request received, in arrival order (:class:`RecordedRequest`).
        tasks: Every task created, by ``task_id`` (:class:`SimTask`).

    Raises:
        ValueError: ``delay_s`` is not ``0 <= min <= max``, only one of ``access_key`` and
            ``secret_key`` is given, or ``callback_retries`` is negative.
    """

    def __init__(
        self,
        *,
        faults: Faults = _NO_FAULTS,
        delay_s: tuple[float, float] = (0.2, 1.0),
        seed: int | None = None,
        provider: Provider = OFFICIAL,
        prefix: str | None = None,
        api_key: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        callback_retries: int = 3,
        callback_backoff_s: float = 0.05,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        _check(delay_s, access_key, secret_key, callback_retries)
        rng = random.Random(seed)
        table = TaskTable(rng, clock_ms)
        self.faults = faults
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, SimTask] = table.by_id
        self._sender = CallbackSender(
            transport=callback_transport, retries=callback_retries, backoff_s=callback_backoff_s
        )
        self._driver = Driver(
            rng=rng, faults=faults, delay_s=delay_s, clock_ms=clock_ms, send=self._sender.send
        )
        api = KlingAPI(
            tasks=table,
            driver=self._driver,
            rng=rng,
            faults=faults,
            provider=provider,
            prefix=provider.prefix if prefix is None else prefix,
            api_key=api_key,
            access_key=access_key,
            secret_key=secret_key,
            clock_ms=clock_ms,
        )
        self.app = self._build_app(api)

    async def wait_idle(self) -> None:
        """Return once no task is being driven: every task has reached its terminal state and
        its callbacks were delivered (or given up after the retries), or was cancelled."""
        await self._driver.wait_idle()

    async def aclose(self) -> None:
        """Cancel every task still being driven, await them, and close the callback client.

        The simulator stays usable: a later create starts over with a new client.
        """
        await self._driver.cancel_all()
        await self._sender.aclose()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _build_app(self, api: KlingAPI) -> Starlette:
        return Starlette(
            routes=api.routes(),
            middleware=[Middleware(Recorder, sink=self.requests)],
            exception_handlers=api.exception_handlers(),
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()


def _check(
    delay_s: tuple[float, float],
    access_key: str | None,
    secret_key: str | None,
    callback_retries: int,
) -> None:
    """Raises ValueError naming the first bad argument (see :class:`Simulator`)."""
    if not 0 <= delay_s[0] <= delay_s[1]:
        raise ValueError(f"delay_s={delay_s} must satisfy 0 <= min <= max")
    if (access_key is None) != (secret_key is None):
        raise ValueError("access_key and secret_key must be given together")
    if callback_retries < 0:
        raise ValueError(f"callback_retries={callback_retries} must not be negative")
