"""Creating Kling tasks with a callback URL: validation, retries and idempotent create.

Source of the rules: ``docs/kling/PROTOCOL.md`` sections 1 (routes, ``callback_url``,
``external_task_id``, query by either id) and 3 (error codes; 1302/1303 and 5000-5002 are
transient, Kling advises exponential backoff from 1 s). Nothing here polls: a task's progress
arrives at the receiver as callbacks.

A create is made idempotent by its ``external_task_id``, which Kling keeps unique per account
and accepts as a query id. When a create may have reached Kling but its answer was lost (a read
timeout, a dropped connection, a 5xx answer), the client looks the task up by that id before it
creates again, so a retry never makes a second task::

    POST create ──ok──▶ Submission
        │ lost answer (ReadTimeout, ReadError, RemoteProtocolError, Write*, 5xx)
        ▼ back off
    GET {route}/{external_task_id} ──task──▶ Submission (the first create worked)
        │ 4xx (not found)            │ transient failure
        ▼                            ▼ back off, query again
    POST create again            (never create blindly)

Connect errors (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``) mean nothing was sent,
so the create is simply repeated. Which failures are transient, and how long to wait, is
:mod:`submitter.retries`; reading each answer is :mod:`submitter.answers`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import quote

import httpx
import structlog
from ulid import ULID

from submitter import protocol
from submitter.answers import error_fields, is_transient, may_have_created, task_from
from submitter.bodies import parse_route, validate_body
from submitter.errors import InvalidRequest, KlingAPIError, Problem
from submitter.images import check_image_urls
from submitter.protocol import Route, TaskObject
from submitter.registrar import Registrar, Submission
from submitter.retries import RetryPolicy
from submitter.safehttp import Guard
from submitter.tokens import CallbackTokens

log = structlog.get_logger("kling_hooks.submitter")

EXTERNAL_TASK_ID_PREFIX = "kh-"


def new_external_task_id(now_ms: int | None = None) -> str:
    """A fresh ``external_task_id``: ``"kh-"`` + a ULID (26 Crockford Base32 characters).

    Args:
        now_ms: Creation time, Unix epoch milliseconds; the current time when None.

    Returns:
        e.g. ``"kh-01JD0000000000000000000000"``; unique, and sorting the strings sorts them by
        creation millisecond.
    """
    ulid = ULID() if now_ms is None else ULID.from_timestamp(now_ms)
    return f"{EXTERNAL_TASK_ID_PREFIX}{ulid}"


def _prepare(route: Route, body: dict[str, Any], external_task_id: str | None) -> dict[str, Any]:
    """The body to send (before ``callback_url`` is added), checked by :func:`validate_body`.

    ``external_task_id``, when given, replaces the body's. A caller's ``callback_url`` is a
    problem: kling-hooks sets it, signed, for every task.

    Raises:
        InvalidRequest: every broken rule, the ``callback_url`` one first.
    """
    problems: list[Problem] = []
    candidate: Any = body
    if isinstance(body, dict):
        if "callback_url" in body:
            problems.append(Problem("callback_url", "is set by kling-hooks; leave it out"))
        candidate = {k: v for k, v in body.items() if k != "callback_url"}
        if external_task_id is not None:
            candidate["external_task_id"] = external_task_id
    try:
        wire = validate_body(route, candidate)
    except InvalidRequest as exc:
        raise InvalidRequest(route, problems + exc.problems) from None
    if problems:
        raise InvalidRequest(route, problems)
    return wire


class KlingClient:
    """Creates Kling tasks whose progress comes back as callbacks; queries one task on demand.

    Use as ``async with KlingClient(...) as client:`` or call :meth:`aclose`. The client owns
    its HTTP connection pool, not the ``registrar`` (close that yourself).

    Args:
        api_base: Kling's base URL, possibly with a reseller's path prefix
            (``https://api-singapore.klingai.com``, ``http://127.0.0.1:9000/kling``); routes
            are appended as ``/v1/<route>``. Trailing slashes are ignored.
        auth: :class:`~submitter.auth.KlingJWTAuth` or :class:`~submitter.auth.BearerAuth`
            (see :func:`~submitter.auth.auth_from_keys`).
        tokens: Signs the callback URL of each task.
        public_url: The receiver's public base URL; callbacks go to
            ``{public_url}/callbacks/{external_task_id}/{token}``.
        registrar: Tells the receiver about each new task; None to skip.
        transport: An httpx transport (tests pass ``httpx.MockTransport``).
        timeout_s: Timeout of each HTTP request, seconds.
        max_attempts: Attempts in total per call (creates and the look-ups that guard them).
        backoff_base_s: First retry delay, seconds; it doubles per retry.
        backoff_max_s: Upper bound of one retry delay, seconds.
        clock_ms: Current time, Unix epoch milliseconds; stamps generated external_task_ids.
        sleep: Awaited with each retry delay in seconds; tests inject a recorder.
        image_guard: The SSRF rules of ``submit(..., check_images=True)``'s image fetches;
            ``Guard()`` (public hosts only) by default.

    Raises:
        ValueError: ``max_attempts`` < 1, or a URL is not http(s).
    """

    def __init__(
        self,
        *,
        api_base: str,
        auth: httpx.Auth,
        tokens: CallbackTokens,
        public_url: str,
        registrar: Registrar | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        clock_ms: Callable[[], int] = protocol.now_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        image_guard: Guard | None = None,
    ) -> None:
        for name, url in (("api_base", api_base), ("public_url", public_url)):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name}={url!r} must be an http(s) URL")
        self._api_base = api_base.rstrip("/")
        self._tokens = tokens
        self._public_url = public_url
        self._registrar = registrar
        self._retry = RetryPolicy(max_attempts, backoff_base_s, backoff_max_s, sleep)
        self._clock_ms = clock_ms
        self._http = httpx.AsyncClient(auth=auth, transport=transport, timeout=timeout_s)
        self._image_guard = image_guard

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    def _url(self, route: Route, task_id: str | None = None) -> str:
        url = f"{self._api_base}/v1/{route.value}"
        return url if task_id is None else f"{url}/{quote(task_id, safe='')}"

    async def submit(
        self,
        route: str,
        body: dict[str, Any],
        external_task_id: str | None = None,
        *,
        check_images: bool = False,
    ) -> Submission:
        """Validate ``body``, create the task with our callback URL, then register it.

        Args:
            route: A create route, e.g. ``"images/generations"`` (PROTOCOL.md section 1).
            body: The create body without ``callback_url``; unknown fields pass through.
            external_task_id: Our id for the task; wins over ``body["external_task_id"]``.
                When neither is given, :func:`new_external_task_id` makes one.
            check_images: Also fetch the start of each URL image and check Kling's image
                rules on it (:func:`~submitter.images.check_image_urls`); Base64 images
                are always checked.

        Returns:
            The :class:`Submission`. A failed registration does not fail the call: it gives
            ``registered=False`` and a ``warning``.

        Raises:
            InvalidRequest: the route is unknown, ``body`` carries ``callback_url``, or a
                documented rule is broken (with ``check_images``, also a URL image that
                could not be fetched); no request at all was sent to Kling.
            KlingAPIError: Kling refused the create (final codes at once; transient ones after
                ``max_attempts``).
            KlingUnreachable: no answer after ``max_attempts``; the message says whether the
                task may exist (query it by ``external_task_id``).
        """
        parsed = parse_route(route)
        wire = _prepare(parsed, body, external_task_id)
        if check_images:
            await check_image_urls(parsed, wire, guard=self._image_guard)
        ext = wire.get("external_task_id") or new_external_task_id(self._clock_ms())
        wire["external_task_id"] = ext
        callback_url = self._tokens.callback_url(self._public_url, ext)
        wire["callback_url"] = callback_url
        task = await self._create(parsed, wire)
        submission = Submission(
            task_id=task.task_id,
            external_task_id=ext,
            callback_url=callback_url,
            task_status=task.task_status.value,
            created_at=task.created_at,
            route=parsed.value,
        )
        log.info(
            "kling.task_created", route=parsed.value, task_id=task.task_id, external_task_id=ext
        )
        if self._registrar is None:
            return submission
        return await self._registrar.register_or_warn(submission, wire)

    async def query(self, route: str, id: str) -> TaskObject:
        """Fetch one task: ``GET {api_base}/v1/{route}/{id}``, retrying transient failures.

        Args:
            route: The route the task was created on.
            id: Its ``task_id`` or ``external_task_id`` (Kling accepts either).

        Raises:
            InvalidRequest: the route is unknown or ``id`` is empty.
            KlingAPIError: Kling answered with an error (a final one at once).
            KlingUnreachable: no answer after ``max_attempts``.
        """
        parsed = parse_route(route)
        if not id:
            raise InvalidRequest(parsed, [Problem("id", "is required")])

        def failed(attempt: int, exc: Exception) -> None:
            log.warning(
                "kling.query_attempt_failed",
                route=parsed.value,
                id=id,
                attempt=attempt,
                **error_fields(exc),
            )

        return await self._retry.run(
            lambda _: self._get(parsed, id), failed=failed, what=f"query {parsed.value}/{id}"
        )

    async def _get(self, route: Route, id: str) -> TaskObject:
        return task_from(await self._http.get(self._url(route, id)))

    async def _create(self, route: Route, wire: dict[str, Any]) -> TaskObject:
        """POST the create, retrying; after a lost answer, look the task up before re-creating."""
        ext: str = wire["external_task_id"]
        maybe_created = False

        async def attempt(number: int) -> TaskObject:
            nonlocal maybe_created
            if maybe_created:
                found = await self._find(route, ext, attempt=number)
                if found is not None:
                    return found
                maybe_created = False
            return task_from(await self._http.post(self._url(route), json=wire))

        def failed(number: int, exc: Exception) -> None:
            nonlocal maybe_created
            maybe_created = maybe_created or may_have_created(exc)
            fields = {"route": route.value, "external_task_id": ext}
            log.warning(
                "kling.create_attempt_failed",
                **fields,
                attempt=number,
                maybe_created=maybe_created,
                **error_fields(exc),
            )
            if number == self._retry.max_attempts:
                log.warning("kling.create_gave_up", **fields, maybe_created=maybe_created)

        def note() -> str:
            return "; the task may exist: query it by external_task_id" if maybe_created else ""

        what = f"create {route.value} external_task_id={ext}"
        return await self._retry.run(attempt, failed=failed, what=what, note=note)

    async def _find(self, route: Route, ext: str, *, attempt: int) -> TaskObject | None:
        """The task with this external_task_id, or None when Kling answers 4xx (not found).

        Raises:
            KlingAPIError: a transient answer (5xx, 1302/1303); look again later.
            httpx.TransportError: no answer; look again later.
        """
        try:
            found = await self._get(route, ext)
        except KlingAPIError as exc:
            if is_transient(exc):
                raise
            log.info(
                "kling.create_not_found",
                route=route.value,
                external_task_id=ext,
                **error_fields(exc),
            )
            return None
        log.info(
            "kling.create_recovered",
            route=route.value,
            external_task_id=ext,
            task_id=found.task_id,
            attempt=attempt,
        )
        return found
