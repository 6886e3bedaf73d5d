"""The simulator's Kling HTTP API: create, query one, list, result files; auth; envelopes.

Every answer is Kling's envelope (PROTOCOL.md section 3): ``{"code": 0, "message":
"SUCCEED", "request_id", "data"}`` on success, ``{"code", "message", "request_id"}`` with the
HTTP status Kling pairs with the code (:data:`submitter.protocol.ERROR_CODES`) otherwise.
Handlers refuse by raising :class:`Refused`; the app's exception handler shapes the answer.
"""

from __future__ import annotations

import functools
import hmac
import json
import random
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import structlog
from starlette import routing
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from submitter.client import PAGE_NUM_MAX, PAGE_SIZE_MAX
from submitter.errors import InvalidRequest, SubmitterError
from submitter.media import mp4_bytes, png_bytes
from submitter.protocol import ERROR_CODES, Route, TaskStatus
from submitter.providers import Provider
from submitter.simulator.driver import Driver
from submitter.simulator.faults import Faults, new_request_id
from submitter.simulator.tasks import TaskTable

log = structlog.get_logger("kling_hooks.simulator")

CREATE_FIELDS = ("task_id", "task_status", "task_info", "created_at", "updated_at")
"""The fields of a create answer's ``data``."""

ExceptionHandler = Callable[[Request, Exception], Any]


class Refused(SubmitterError):
    """Raised inside a handler to answer with Kling's error envelope; never leaves the app.

    Attributes:
        code: A key of :data:`submitter.protocol.ERROR_CODES`; it picks the HTTP status.
        message: The envelope's ``message``.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KlingAPI:
    """Kling's routes for the five create routes of :class:`Route`, plus ``/files/{name}``.

    Each route is served at its ``provider``'s path; routes sharing a path share its create,
    query and list (CometAPI's multi-image bodies at ``images/generations``): a body posted
    there is checked as the route the provider recognises it as
    (:meth:`Provider.check <submitter.providers.Provider.check>`).

    Args:
        tasks: Where created tasks are kept and looked up.
        driver: Starts each created task.
        rng: The simulator's one random source (``request_id`` of each answer).
        faults: ``busy_creates`` and ``lose_create_answers`` are counted down here.
        provider: Whose paths and rules are served.
        prefix: Path prefix of the API routes, ``"/kling"`` or ``""``; slashes around it are
            ignored.
        api_key: When set, the only bearer accepted besides a valid JWT.
        access_key: With ``secret_key``: bearers are HS256 JWTs whose ``iss`` is
            ``access_key``.
        secret_key: See ``access_key``.
        clock_ms: Returns the current Unix epoch time in milliseconds (JWT ``exp``/``nbf``).
    """

    def __init__(
        self,
        *,
        tasks: TaskTable,
        driver: Driver,
        rng: random.Random,
        faults: Faults,
        provider: Provider,
        prefix: str,
        api_key: str | None,
        access_key: str | None,
        secret_key: str | None,
        clock_ms: Callable[[], int],
    ) -> None:
        self._tasks = tasks
        self._driver = driver
        self._rng = rng
        self._provider = provider
        self._prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._api_key = api_key
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock_ms = clock_ms
        self._busy_left = faults.busy_creates
        self._lost_left = faults.lose_create_answers

    def routes(self) -> list[routing.Route]:
        """Create (POST), list (GET) and query (GET ``/{id}``) per path, then the files."""
        routes: list[routing.Route] = []
        for kling_path in dict.fromkeys(self._provider.path(r) for r in Route):
            served = self._provider.routes_at(kling_path)
            path = f"{self._prefix}/v1/{kling_path}"
            routes += [
                routing.Route(path, functools.partial(self._create, served), methods=["POST"]),
                routing.Route(path, functools.partial(self._list, served), methods=["GET"]),
                routing.Route(
                    path + "/{id}", functools.partial(self._query, served), methods=["GET"]
                ),
            ]
        routes.append(routing.Route("/files/{name}", self._file, methods=["GET"]))
        return routes

    def exception_handlers(self) -> Mapping[Any, ExceptionHandler]:
        """Kling's error envelope for :class:`Refused` and for Starlette's 404 and 405."""
        return {HTTPException: self._http_error, Refused: self._refused}

    # -- answers -----------------------------------------------------------------------------

    def _ok(self, data: Any) -> JSONResponse:
        """Kling's success envelope around ``data``."""
        envelope = {"code": 0, "message": "SUCCEED", "request_id": new_request_id(self._rng)}
        return JSONResponse({**envelope, "data": data})

    def _error(self, code: int, message: str) -> JSONResponse:
        """Kling's error envelope, with the HTTP status Kling pairs with ``code``."""
        body = {"code": code, "message": message, "request_id": new_request_id(self._rng)}
        return JSONResponse(body, status_code=ERROR_CODES[code][0])

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
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
            Refused: 1001 when missing or empty, 1002 when wrong, 1003 when the JWT's ``nbf``
                is in the future, 1004 when it has expired.
        """
        scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        if not scheme or (scheme.lower() == "bearer" and not token):
            raise Refused(1001, "authorization is empty")
        if scheme.lower() != "bearer":
            raise Refused(1002, "authorization is invalid: expected a Bearer token")
        if self._api_key is None and self._access_key is None:
            return
        if self._api_key is not None and hmac.compare_digest(
            token.encode(), self._api_key.encode()
        ):
            return
        if self._access_key is None:
            raise Refused(1002, "authorization is invalid: unknown API key")
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
            raise Refused(1002, f"authorization is invalid: {exc}") from None
        now_s = self._clock_ms() / 1000
        exp, nbf = claims["exp"], claims.get("nbf", now_s)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, nbf)):
            raise Refused(1002, "authorization is invalid: exp and nbf must be numbers")
        if now_s < nbf:
            raise Refused(1003, f"authorization is not yet valid (nbf={nbf})")
        if now_s >= exp:
            raise Refused(1004, f"authorization has expired (exp={exp})")

    # -- handlers ----------------------------------------------------------------------------

    async def _create(self, served: tuple[Route, ...], request: Request) -> Response:
        self._authorize(request)
        route, body = _valid_body(self._provider, served, await request.body())
        external_task_id = body.get("external_task_id")
        if external_task_id is not None and self._tasks.has_external(external_task_id):
            raise Refused(1201, f"external_task_id already exists: {external_task_id!r}")
        if self._busy_left > 0:
            self._busy_left -= 1
            raise Refused(1303, "parallel task over resource pack limit")
        task = self._tasks.add(route, body)
        self._driver.start(task, base_url=str(request.base_url))
        if self._lost_left > 0:
            self._lost_left -= 1
            log.info("simulator.create_answer_lost", task_id=task.task_id)
            raise Refused(5000, "internal server error")
        data = task.to_object()
        return self._ok({k: data[k] for k in CREATE_FIELDS})

    async def _query(self, served: tuple[Route, ...], request: Request) -> Response:
        self._authorize(request)
        task_ref = request.path_params["id"]
        task = self._tasks.find(task_ref, served)
        if task is None:
            raise Refused(1201, f"task not found: {task_ref!r}")
        return self._ok(task.to_object())

    async def _list(self, served: tuple[Route, ...], request: Request) -> Response:
        self._authorize(request)
        page_num = _page_param(request, "pageNum", 1, PAGE_NUM_MAX, default=1)
        page_size = _page_param(request, "pageSize", 1, PAGE_SIZE_MAX, default=30)
        start = (page_num - 1) * page_size
        page = self._tasks.newest_first(served)[start : start + page_size]
        return self._ok([t.to_object() for t in page])

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        content = self._file_bytes(name)
        if content is None:
            raise Refused(1203, f"{request.url.path} does not exist")
        media_type = "image/png" if name.endswith(".png") else "video/mp4"
        return Response(content, media_type=media_type)

    def _file_bytes(self, name: str) -> bytes | None:
        """The bytes behind a result URL, or None when no succeeded task has that file."""
        stem, _, extension = name.rpartition(".")
        task_id, _, index = stem.rpartition("-") if extension == "png" else (stem, "", "")
        task = self._tasks.by_id.get(task_id)
        if task is None or task.task_status is not TaskStatus.SUCCEED:
            return None
        seed = zlib.crc32(name.encode())
        if extension == "png" and "images" in task.task_result:
            if index.isdigit() and int(index) < len(task.task_result["images"]):
                return png_bytes(*_image_size(task.body.get("aspect_ratio")), seed=seed)
        if extension == "mp4" and "videos" in task.task_result:
            return mp4_bytes(seed, duration_s=float(task.task_result["videos"][0]["duration"]))
        return None


def _valid_body(
    provider: Provider, served: tuple[Route, ...], raw: bytes
) -> tuple[Route, dict[str, Any]]:
    """The route and the create body, parsed and checked by ``provider``'s rules, for a body
    posted to the path of ``served`` (the path's own route first).

    Raises:
        Refused: 1200 when ``raw`` is not JSON, 1201 naming every broken rule.
    """
    try:
        payload = json.loads(raw)
    except ValueError:
        raise Refused(1200, "request body is not valid JSON") from None
    try:
        route, body = provider.check(served[0], payload)
    except InvalidRequest as exc:
        raise Refused(1201, str(exc)) from None
    if route not in served:  # recognised as a route this provider serves elsewhere
        raise Refused(1201, f"a {route.value} body is not accepted at this path")
    return route, body


def _page_param(request: Request, name: str, low: int, high: int, *, default: int) -> int:
    """An integer query parameter within [low, high] (PROTOCOL.md section 1).

    Raises:
        Refused: 1201 naming the parameter, its range and the value given.
    """
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise Refused(1201, f"{name}: must be an integer in [{low}, {high}] (got {raw!r})")
    return value


def _image_size(aspect_ratio: str | None) -> tuple[int, int]:
    """(width, height) in pixels for an aspect ratio such as ``"16:9"``; short side 320."""
    across, _, down = (aspect_ratio or "1:1").partition(":")
    w, h = int(across), int(down)
    return (320 * w // h, 320) if w >= h else (320, 320 * h // w)
