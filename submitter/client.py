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
import builtins
from collections.abc import Awaitable, Callable
from typing import Any, Self
from urllib.parse import quote

import httpx
import structlog
from ulid import ULID

from submitter import protocol
from submitter.answers import (
    error_fields,
    is_transient,
    may_have_created,
    task_from,
    tasks_from,
)
from submitter.bodies import parse_route
from submitter.errors import InvalidRequest, KlingAPIError, Problem
from submitter.images import check_image_urls
from submitter.protocol import Route, TaskObject
from submitter.providers import Provider, infer
from submitter.registrar import Registrar, Submission
from submitter.retries import RetryPolicy
from submitter.safehttp import Guard
from submitter.tokens import CallbackTokens

log = structlog.get_logger("kling_hooks.submitter")

EXTERNAL_TASK_ID_PREFIX = "kh-"
# Kling's list query: pageNum in [1, 1000], pageSize in [1, 500] (seed 002, PROTOCOL.md 1).
PAGE_NUM_MAX, PAGE_SIZE_MAX = 1000, 500


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


def _prepare(
    provider: Provider, route: str, body: dict[str, Any], external_task_id: str | None
) -> tuple[Route, dict[str, Any]]:
    """The route and the body to send (before ``callback_url`` is added, in Kling's own
    spelling), checked by :meth:`Provider.check <submitter.providers.Provider.check>`.

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
        resolved, checked = provider.check(route, candidate)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.route, problems + exc.problems) from None
    if problems:
        raise InvalidRequest(resolved, problems)
    return resolved, checked


def _log_failure(event: str, **fields: Any) -> Callable[[int, Exception], None]:
    """A retry policy's ``failed`` callback: logs ``event`` with ``fields``, the attempt
    number and the failure."""

    def failed(attempt: int, exc: Exception) -> None:
        log.warning(event, **fields, attempt=attempt, **error_fields(exc))

    return failed


class KlingClient:
    """Creates Kling tasks whose progress comes back as callbacks; queries tasks on demand.

    Use as ``async with KlingClient(...) as client:`` or call :meth:`aclose`. The client owns
    its HTTP connection pool, not the ``registrar`` (close that yourself).

    Args:
        api_base: Kling's base URL, possibly with a reseller's path prefix
            (``https://api-singapore.klingai.com``, ``http://127.0.0.1:9000/kling``); routes
            are appended as ``/v1/<path>``. Trailing slashes are ignored; a base without a
            path gets the provider's prefix (:meth:`Provider.api_base
            <submitter.providers.Provider.api_base>`).
        auth: :class:`~submitter.auth.KlingJWTAuth` or :class:`~submitter.auth.BearerAuth`
            (:func:`~submitter.auth.auth_for` picks the provider's).
        provider: The :class:`~submitter.providers.Provider` profile: each route's path, its
            rules and wire spellings. None: inferred from ``api_base``'s host
            (:func:`~submitter.providers.infer`), ``official`` for an unknown host.
        tokens: Signs the callback URL of each task; None for a client that only queries.
        public_url: The receiver's public base URL; callbacks go to
            ``{public_url}/callbacks/{external_task_id}/{token}``. None with ``tokens``.
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
        ValueError: ``max_attempts`` < 1, ``public_url`` is not http(s), or ``api_base`` is
            not an http(s) URL with a host or ends in ``/v1``.
    """

    def __init__(
        self,
        *,
        api_base: str,
        auth: httpx.Auth,
        provider: Provider | None = None,
        tokens: CallbackTokens | None = None,
        public_url: str | None = None,
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
        if public_url is not None and not public_url.startswith(("http://", "https://")):
            raise ValueError(f"public_url={public_url!r} must be an http(s) URL")
        try:
            self.provider = provider or infer(api_base)
            self._api_base = self.provider.api_base(api_base)
        except ValueError as exc:
            raise ValueError(f"api_base: {exc}") from None
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
        url = f"{self._api_base}/v1/{self.provider.path(route)}"
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

        The body is checked against the common rules and the provider's overlay, and sent
        to the provider's path of its route, in the provider's spelling (CometAPI:
        ``images/multi-image2image`` goes to ``images/generations``, ``scene_image`` as
        ``scence_image``).

        Args:
            route: A create route, e.g. ``"images/generations"`` (PROTOCOL.md section 1).
            body: The create body without ``callback_url``; unknown fields pass through.
            external_task_id: Our id for the task; wins over ``body["external_task_id"]``.
                When neither is given, :func:`new_external_task_id` makes one.
            check_images: Also fetch the start of each URL image and check Kling's image
                rules on it (:func:`~submitter.images.check_image_urls`); Base64 images
                are always checked.

        Returns:
            The :class:`Submission`; its ``route`` is the route the body belongs to (a
            CometAPI multi-image body given for ``images/generations`` is
            ``images/multi-image2image``). A failed registration does not fail the call: it
            gives ``registered=False`` and a ``warning``.

        Raises:
            InvalidRequest: the route is unknown, ``body`` carries ``callback_url``, or a
                documented rule is broken (with ``check_images``, also a URL image that
                could not be fetched); no request at all was sent to Kling.
            KlingAPIError: Kling refused the create (final codes at once; transient ones after
                ``max_attempts``).
            KlingUnreachable: no answer after ``max_attempts``; the message says whether the
                task may exist (query it by ``external_task_id``).
        """
        parsed, checked = _prepare(self.provider, route, body, external_task_id)
        if check_images:
            await check_image_urls(parsed, checked, guard=self._image_guard)
        if self._tokens is None or self._public_url is None:
            raise ValueError("this client was made without tokens and public_url: it only queries")
        ext = checked.get("external_task_id") or new_external_task_id(self._clock_ms())
        checked["external_task_id"] = ext
        callback_url = self._tokens.callback_url(self._public_url, ext)
        checked["callback_url"] = callback_url
        wire = self.provider.to_wire(parsed, checked)
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
        """Fetch one task: ``GET {api_base}/v1/{path}/{id}``, retrying transient failures.

        ``path`` is the provider's path of ``route``; seed 002 documents ``{id}`` as either id.

        Args:
            route: The route the task was created on.
            id: Its ``task_id`` or ``external_task_id``.

        Raises:
            InvalidRequest: the route is unknown or ``id`` is empty.
            KlingAPIError: Kling answered with an error (a final one at once).
            KlingUnreachable: no answer after ``max_attempts``.
        """
        parsed = parse_route(route)
        if not id:
            raise InvalidRequest(parsed, [Problem("id", "is required")])

        failed = _log_failure("kling.query_attempt_failed", route=parsed.value, id=id)
        return await self._retry.run(
            lambda _: self._get(parsed, id), failed=failed, what=f"query {parsed.value}/{id}"
        )

    async def list(
        self, route: str, page_num: int = 1, page_size: int = 30
    ) -> builtins.list[TaskObject]:
        """One page of the tasks of ``route``: ``GET {api_base}/v1/{path}?pageNum=&pageSize=``.

        Kling's list query (seeds 001, 002), retrying transient failures. On CometAPI the
        multi-image tasks share the ``images/generations`` path and its pages.

        Args:
            route: A create route, e.g. ``"images/generations"``.
            page_num: Kling's ``pageNum``, 1 to 1000 (1 is the first page).
            page_size: Kling's ``pageSize``, 1 to 500 tasks.

        Returns:
            The page's task objects, in Kling's order; ``[]`` past the last page.

        Raises:
            InvalidRequest: the route is unknown, or a page argument is not an integer
                within its range; no request was sent.
            KlingAPIError: Kling answered with an error (a final one at once).
            KlingUnreachable: no answer after ``max_attempts``.
        """
        parsed = parse_route(route)
        problems = [
            Problem(name, f"must be an integer in [1, {high}], Kling's {kling} (got {value!r})")
            for name, kling, value, high in (
                ("page_num", "pageNum", page_num, PAGE_NUM_MAX),
                ("page_size", "pageSize", page_size, PAGE_SIZE_MAX),
            )
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high
        ]
        if problems:
            raise InvalidRequest(parsed, problems)
        params = {"pageNum": page_num, "pageSize": page_size}

        async def attempt(_: int) -> builtins.list[TaskObject]:
            return tasks_from(await self._http.get(self._url(parsed), params=params))

        failed = _log_failure("kling.list_attempt_failed", route=parsed.value, **params)
        what = f"list {parsed.value} pageNum={page_num} pageSize={page_size}"
        return await self._retry.run(attempt, failed=failed, what=what)

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
