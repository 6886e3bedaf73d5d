"""A Kling-compatible API that runs offline: it creates tasks, drives them, sends callbacks.

The simulator answers Kling's create, query and list routes (PROTOCOL.md sections 1 and 3) for
the five routes of :class:`submitter.protocol.Route`, and drives every task it creates through
``submitted -> processing -> succeed | failed``, POSTing Kling's bare task object (section 4)
to the task's ``callback_url`` at each step. Result files are real PNG and MP4 bytes
(:mod:`submitter.media`) served from ``GET /files/{name}``. :class:`Faults` injects the
misbehaviour a receiver must survive: failures, duplicate, reordered, enveloped, old-schema and
lost callbacks, create answers lost after the task was made, and 1303 refusals.

Routes (``prefix`` such as ``"/kling"`` goes first, as with resellers)::

    POST {prefix}/v1/{family}/{route}               create   -> envelope, data = new task
    GET  {prefix}/v1/{family}/{route}/{id}          query    -> envelope, data = task object
    GET  {prefix}/v1/{family}/{route}?pageNum&pageSize  list -> envelope, data = [task, ...]
    GET  /files/{name}                              result file (no authorization)

Choices where Kling documents nothing:

* an unknown query id answers HTTP 400, code 1201, ``"task not found: '<id>'"``; a task is
  found only under the route it was created on;
* an unknown path answers HTTP 404, code 1203; a known path with the wrong method answers
  HTTP 404, code 1202 (Kling's "Error Code" page pairs both codes with 404);
* a list is newest first;
* with :attr:`Faults.reorder_rate`, that share of tasks send all their callbacks after they
  end, newest first
  (terminal, processing, submitted);
* when both an API key and a JWT key pair are configured, either kind of bearer is accepted.

All randomness (ids, delays, faults, request ids) comes from one ``random.Random(seed)`` and is
drawn while a request is handled, so one sequence of requests always gives the same tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import random
import string
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import httpx
import jwt
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from submitter.errors import InvalidRequest
from submitter.media import mp4_bytes, png_bytes
from submitter.protocol import ERROR_CODES, Route, TaskStatus
from submitter.routes import validate_body

log = structlog.get_logger("kling_hooks.simulator")

OLD_STYLE_ID_EVERY = 4
"""Every 4th task gets an old-style id such as ``CjI17WevH1IAAAAAAHmgsw``; the others get
long digit ids such as ``867283741759111202`` (PROTOCOL.md section 4)."""

FAILURE_REASONS = (
    "content safety check failed",
    "image recognition failed, please check the input image",
    "internal error, please retry later",
)
_CALLBACK_TIMEOUT_S = 10.0
_CREATE_FIELDS = ("task_id", "task_status", "task_info", "created_at", "updated_at")
_ALNUM = string.ascii_letters + string.digits


def _now_ms() -> int:
    """Wall-clock time, Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Faults:
    """Misbehaviour to inject; the defaults inject none. Rates are shares in [0, 1].

    Attributes:
        failure_rate: Share of tasks that end ``failed``; ``task_status_msg`` gives a reason,
            ``task_info`` and ``task_result`` are ``{}``, ``final_unit_deduction`` is ``"0"``.
        duplicate_rate: Share of callbacks sent twice in a row.
        reorder_rate: Share of tasks whose callbacks are all sent after the task ends,
            newest first (terminal, processing, submitted).
        envelope_rate: Share of callbacks wrapped as ``{"code": 0, "message": "SUCCEED",
            "request_id": ..., "data": <task>}``.
        old_schema_rate: Share of callbacks without ``task_info`` and ``final_unit_deduction``.
        drop_nonterminal_rate: Share of ``submitted``/``processing`` callbacks never sent.
        lose_create_answers: The first N creates make their task but answer HTTP 500, code 5000.
        busy_creates: The first N creates are refused with HTTP 429, code 1303; nothing is made.
            Counted before ``lose_create_answers``.

    Raises:
        ValueError: a rate is outside [0, 1] or a count is negative.
    """

    failure_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    envelope_rate: float = 0.0
    old_schema_rate: float = 0.0
    drop_nonterminal_rate: float = 0.0
    lose_create_answers: int = 0
    busy_creates: int = 0

    def __post_init__(self) -> None:
        for name in (
            "failure_rate",
            "duplicate_rate",
            "reorder_rate",
            "envelope_rate",
            "old_schema_rate",
            "drop_nonterminal_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is outside [0, 1]")
        for name in ("lose_create_answers", "busy_creates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received, recorded before it was handled.

    Attributes:
        method: ``"POST"``, ``"GET"``...
        path: The URL path, e.g. ``"/kling/v1/images/generations"``.
        query: The raw query string, ``""`` when none.
        headers: Header names lower-cased; the last value wins when a name repeats.
        json: The parsed JSON body, or None when the body was empty or not JSON.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any


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


@dataclass(frozen=True)
class _CallbackPlan:
    """What happens to one status's callback: sent at all, how many copies, which shape."""

    send: bool
    copies: int
    envelope_request_id: str | None
    old_schema: bool


@dataclass(frozen=True)
class _Plan:
    """Every random choice about one task, drawn when it is created."""

    fails: bool
    reorder: bool
    reason: str
    delays_s: tuple[float, float, float]
    video_id: str
    callbacks: tuple[_CallbackPlan, _CallbackPlan, _CallbackPlan]


class _Recorder:
    """ASGI middleware: reads each HTTP request's body, records the request, then replays it."""

    def __init__(self, app: ASGIApp, sink: list[RecordedRequest]) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        self.sink.append(
            RecordedRequest(scope["method"], scope["path"], query, headers, _json_or_none(body))
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _json_or_none(body: bytes | bytearray) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class _Refused(Exception):
    """Raised inside a handler to answer with Kling's error envelope."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Simulator:
    """The Kling simulator: an ASGI app plus what it recorded.

    Args:
        faults: Misbehaviour to inject (:class:`Faults`); none by default.
        delay_s: (min, max) seconds between a task's steps, drawn uniformly per step.
        seed: Seed of the one ``random.Random`` behind every random choice; None for a
            random seed.
        prefix: Path prefix of the API routes (``"/kling"``); ``""`` for Kling's own layout.
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
        requests: Every request received, in arrival order (:class:`RecordedRequest`).
        tasks: Every task created, by ``task_id`` (:class:`SimTask`).

    Raises:
        ValueError: ``delay_s`` is not ``0 <= min <= max``, only one of ``access_key`` and
            ``secret_key`` is given, or ``callback_retries`` is negative.
    """

    def __init__(
        self,
        *,
        faults: Faults = Faults(),
        delay_s: tuple[float, float] = (0.2, 1.0),
        seed: int | None = None,
        prefix: str = "",
        api_key: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        callback_retries: int = 3,
        callback_backoff_s: float = 0.05,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        if not 0 <= delay_s[0] <= delay_s[1]:
            raise ValueError(f"delay_s={delay_s} must satisfy 0 <= min <= max")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key must be given together")
        if callback_retries < 0:
            raise ValueError(f"callback_retries={callback_retries} must not be negative")
        self.faults = faults
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, SimTask] = {}
        self._delay_s = delay_s
        self._rng = random.Random(seed)
        self._prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._api_key = api_key
        self._access_key = access_key
        self._secret_key = secret_key
        self._transport = callback_transport
        self._retries = callback_retries
        self._backoff_s = callback_backoff_s
        self._clock_ms = clock_ms
        self._by_external: dict[str, SimTask] = {}
        self._created = 0
        self._busy_left = self.faults.busy_creates
        self._lost_left = self.faults.lose_create_answers
        self._drivers: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once no task is being driven: every task has reached its terminal state and
        its callbacks were delivered (or given up after the retries), or was cancelled."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Cancel every task still being driven, await them, and close the callback client.

        The simulator stays usable: a later create starts over with a new client.
        """
        drivers = list(self._drivers)
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()

    def _build_app(self) -> Starlette:
        routes: list[HttpRoute] = []
        for route in Route:
            path = f"{self._prefix}/v1/{route.value}"
            routes += [
                HttpRoute(path, functools.partial(self._create, route), methods=["POST"]),
                HttpRoute(path, functools.partial(self._list, route), methods=["GET"]),
                HttpRoute(path + "/{id}", functools.partial(self._query, route), methods=["GET"]),
            ]
        routes.append(HttpRoute("/files/{name}", self._file, methods=["GET"]))
        return Starlette(
            routes=routes,
            middleware=[Middleware(_Recorder, sink=self.requests)],
            exception_handlers={HTTPException: self._http_error, _Refused: self._refused},
            lifespan=self._lifespan,
        )

    # -- answers -----------------------------------------------------------------------------

    def _request_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _ok(self, data: Any) -> JSONResponse:
        """Kling's success envelope around ``data``."""
        envelope = {"code": 0, "message": "SUCCEED", "request_id": self._request_id()}
        return JSONResponse({**envelope, "data": data})

    def _error(self, code: int, message: str) -> JSONResponse:
        """Kling's error envelope, with the HTTP status Kling pairs with ``code``."""
        body = {"code": code, "message": message, "request_id": self._request_id()}
        return JSONResponse(body, status_code=ERROR_CODES[code][0])

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return self._error(exc.code, exc.message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return self._error(1202, f"method {request.method} is not allowed here")
        return self._error(1203, f"{request.url.path} does not exist")

    # -- authorization -----------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """Check ``Authorization`` as Kling does (PROTOCOL.md sections 2 and 3).

        Raises:
            _Refused: 1001 when missing or empty, 1002 when wrong, 1003 when the JWT's ``nbf``
                is in the future, 1004 when it has expired.
        """
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if not scheme or (scheme.lower() == "bearer" and not token):
            raise _Refused(1001, "authorization is empty")
        if scheme.lower() != "bearer":
            raise _Refused(1002, "authorization is invalid: expected a Bearer token")
        if self._api_key is None and self._access_key is None:
            return
        if self._api_key is not None and hmac.compare_digest(
            token.encode(), self._api_key.encode()
        ):
            return
        if self._access_key is None:
            raise _Refused(1002, "authorization is invalid: unknown API key")
        self._check_jwt(token)

    def _check_jwt(self, token: str) -> None:
        assert self._secret_key is not None
        try:
            claims = jwt.decode(
                token,
                self._secret_key,
                algorithms=["HS256"],
                issuer=self._access_key,
                options={
                    "require": ["iss", "exp"],
                    "verify_exp": False,  # checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise _Refused(1002, f"authorization is invalid: {exc}") from None
        now_s = self._clock_ms() / 1000
        exp, nbf = claims["exp"], claims.get("nbf", now_s)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf)):
            raise _Refused(1002, "authorization is invalid: exp and nbf must be numbers")
        if now_s < nbf:
            raise _Refused(1003, f"authorization is not yet valid (nbf={nbf})")
        if now_s >= exp:
            raise _Refused(1004, f"authorization has expired (exp={exp})")

    # -- API handlers ------------------------------------------------------------------------

    async def _create(self, route: Route, request: Request) -> Response:
        self._authorize(request)
        try:
            payload = json.loads(await request.body())
        except ValueError:
            raise _Refused(1200, "request body is not valid JSON") from None
        try:
            body = validate_body(route, payload)
        except InvalidRequest as exc:
            raise _Refused(1201, str(exc)) from None
        external_task_id = body.get("external_task_id")
        if external_task_id is not None and external_task_id in self._by_external:
            raise _Refused(1201, f"external_task_id already exists: {external_task_id!r}")
        if self._busy_left > 0:
            self._busy_left -= 1
            raise _Refused(1303, "parallel task over resource pack limit")
        task = self._new_task(route, body)
        self._start(task, self._new_plan(), base_url=str(request.base_url))
        if self._lost_left > 0:
            self._lost_left -= 1
            log.info("simulator.create_answer_lost", task_id=task.task_id)
            raise _Refused(5000, "internal server error")
        data = task.to_object()
        return self._ok({k: data[k] for k in _CREATE_FIELDS})

    async def _query(self, route: Route, request: Request) -> Response:
        self._authorize(request)
        task_ref = request.path_params["id"]
        task = self.tasks.get(task_ref) or self._by_external.get(task_ref)
        if task is None or task.route is not route:
            raise _Refused(1201, f"task not found: {task_ref!r}")
        return self._ok(task.to_object())

    async def _list(self, route: Route, request: Request) -> Response:
        self._authorize(request)
        page_num = _page_param(request, "pageNum", 1, 1000, default=1)
        page_size = _page_param(request, "pageSize", 1, 500, default=30)
        newest_first = [t for t in reversed(self.tasks.values()) if t.route is route]
        start = (page_num - 1) * page_size
        return self._ok([t.to_object() for t in newest_first[start : start + page_size]])

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        content = self._file_bytes(name)
        if content is None:
            raise HTTPException(404)
        media_type = "image/png" if name.endswith(".png") else "video/mp4"
        return Response(content, media_type=media_type)

    def _file_bytes(self, name: str) -> bytes | None:
        """The bytes behind a result URL, or None when no succeeded task has that file."""
        stem, _, extension = name.rpartition(".")
        task_id, _, index = stem.rpartition("-") if extension == "png" else (stem, "", "")
        task = self.tasks.get(task_id)
        if task is None or task.task_status is not TaskStatus.SUCCEED:
            return None
        seed = zlib.crc32(name.encode())
        if extension == "png" and "images" in task.task_result:
            if index.isdigit() and int(index) < len(task.task_result["images"]):
                return png_bytes(*_image_size(task.body.get("aspect_ratio")), seed=seed)
        if extension == "mp4" and "videos" in task.task_result:
            return mp4_bytes(seed, duration_s=float(task.task_result["videos"][0]["duration"]))
        return None

    # -- tasks -------------------------------------------------------------------------------

    def _new_task(self, route: Route, body: dict[str, Any]) -> SimTask:
        self._created += 1
        task_id = self._new_task_id(old_style=self._created % OLD_STYLE_ID_EVERY == 0)
        now_ms = self._clock_ms()
        task = SimTask(
            task_id=task_id,
            route=route,
            body=body,
            external_task_id=body.get("external_task_id"),
            callback_url=body.get("callback_url"),
            created_at=now_ms,
            updated_at=now_ms,
        )
        self.tasks[task_id] = task
        if task.external_task_id is not None:
            self._by_external[task.external_task_id] = task
        log.info(
            "simulator.task_created",
            task_id=task_id,
            route=route.value,
            external_task_id=task.external_task_id,
        )
        return task

    def _new_task_id(self, *, old_style: bool) -> str:
        while True:
            if old_style:
                task_id = "Cj" + "".join(self._rng.choice(_ALNUM) for _ in range(20))
            else:
                task_id = str(self._rng.randrange(10**17, 10**19))  # 18 or 19 digits
            if task_id not in self.tasks:
                return task_id

    def _new_plan(self) -> _Plan:
        rng, faults = self._rng, self.faults
        fails = rng.random() < faults.failure_rate
        reason = rng.choice(FAILURE_REASONS)
        delays = (
            rng.uniform(*self._delay_s),
            rng.uniform(*self._delay_s),
            rng.uniform(*self._delay_s),
        )
        video_id = str(rng.randrange(10**17, 10**19))

        def callback(terminal: bool) -> _CallbackPlan:
            dropped = rng.random() < faults.drop_nonterminal_rate
            copies = 2 if rng.random() < faults.duplicate_rate else 1
            envelope = rng.random() < faults.envelope_rate
            request_id = self._request_id()
            old_schema = rng.random() < faults.old_schema_rate
            return _CallbackPlan(
                terminal or not dropped, copies, request_id if envelope else None, old_schema
            )

        return _Plan(
            fails=fails,
            reorder=rng.random() < faults.reorder_rate,
            reason=reason,
            delays_s=delays,
            video_id=video_id,
            callbacks=(callback(False), callback(False), callback(True)),
        )

    def _start(self, task: SimTask, plan: _Plan, *, base_url: str) -> None:
        """Drive ``task`` in a background asyncio task, kept referenced until it ends."""
        driver = asyncio.create_task(
            self._drive(task, plan, base_url.rstrip("/")), name=f"simulator:{task.task_id}"
        )
        self._drivers.add(driver)
        self._idle.clear()
        driver.add_done_callback(self._driver_done)

    def _driver_done(self, driver: asyncio.Task[None]) -> None:
        self._drivers.discard(driver)
        if not self._drivers:
            self._idle.set()

    async def _drive(self, task: SimTask, plan: _Plan, base_url: str) -> None:
        """Move ``task`` through its states, sending a callback after each one."""
        terminal = TaskStatus.FAILED if plan.fails else TaskStatus.SUCCEED
        steps = (TaskStatus.SUBMITTED, TaskStatus.PROCESSING, terminal)
        held: list[tuple[TaskStatus, dict[str, Any], _CallbackPlan]] = []
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

    def _transition(self, task: SimTask, status: TaskStatus, plan: _Plan, base_url: str) -> None:
        task.task_status = status
        task.updated_at = max(self._clock_ms(), task.updated_at + 1)
        if status is TaskStatus.FAILED:
            task.task_status_msg = plan.reason
            task.final_unit_deduction = "0"
        elif status is TaskStatus.SUCCEED:
            task.task_result = _result(task, plan, base_url)
            task.final_unit_deduction = _deduction(task)
        log.info("simulator.transition", task_id=task.task_id, task_status=status.value)

    # -- callbacks ---------------------------------------------------------------------------

    async def _send(
        self, task: SimTask, status: TaskStatus, snapshot: dict[str, Any], plan: _CallbackPlan
    ) -> None:
        """Send one status's callback as planned: maybe not at all, maybe twice, reshaped."""
        if task.callback_url is None or not plan.send:
            return
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
        for _ in range(plan.copies):
            await self._deliver(task, status, task.callback_url, body)

    async def _deliver(
        self, task: SimTask, status: TaskStatus, url: str, body: dict[str, Any]
    ) -> None:
        """POST ``body`` until a 2xx answer, at most ``1 + callback_retries`` times, with
        exponential backoff; every attempt is appended to ``task.callbacks``."""
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, timeout=_CALLBACK_TIMEOUT_S)
        for attempt in range(self._retries + 1):
            outcome: int | str
            try:
                response = await self._client.post(url, json=body)
                outcome = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
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


def _page_param(request: Request, name: str, low: int, high: int, *, default: int) -> int:
    """An integer query parameter within [low, high] (PROTOCOL.md section 1).

    Raises:
        _Refused: 1201 naming the parameter, its range and the value given.
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _Refused(1201, f"{name}: must be an integer in [{low}, {high}] (got {raw!r})")
    return value


def _image_size(aspect_ratio: str | None) -> tuple[int, int]:
    """(width, height) in pixels for an aspect ratio such as ``"16:9"``; short side 320."""
    across, _, down = (aspect_ratio or "1:1").partition(":")
    w, h = int(across), int(down)
    return (320 * w // h, 320) if w >= h else (320, 320 * h // w)


def _result(task: SimTask, plan: _Plan, base_url: str) -> dict[str, Any]:
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
