"""The status API: what happened to each task, and to its deliveries to plugins.

Every ``/tasks``, ``/deliveries`` and ``/plugins`` route needs
``Authorization: Bearer <KLING_HOOKS_API_TOKEN>`` (401 without it). ``/healthz``, ``/readyz``
and ``/openapi.json`` need no token. Errors have one shape: ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.openapi import openapi_document
from receiver.outbox import (
    DeliveryNotFound,
    DeliveryRunning,
    DeliveryState,
    PluginNotLoaded,
    Redeliver,
)
from receiver.responses import error, ok
from receiver.routes import BodyTooLarge, read_bounded
from receiver.runtime import Runtime
from receiver.store import StoreUnavailable
from receiver.transitions import Registration, TaskConflict
from submitter.protocol import Millis, TaskStatus
from submitter.protocol import Route as KlingRoute

log = structlog.get_logger("kling_hooks.api")

Handler = Callable[[Request], Awaitable[Response]]
Body = TypeVar("Body", bound=BaseModel)
MAX_LIMIT = 500
#: A delivery id in a path: SQLite's INTEGER is 64-bit, so at most 18 digits are accepted.
MAX_ID_DIGITS = 18


class RegistrationBody(BaseModel):
    """``POST /tasks``: a submission made by the submitter."""

    model_config = ConfigDict(extra="forbid")

    route: KlingRoute
    task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    external_task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    task_status: TaskStatus = TaskStatus.SUBMITTED
    created_at: Millis | None = None
    request: dict[str, Any] | None = None


class RedeliveryFilter(BaseModel):
    """``POST /deliveries/redeliver``: which deliveries to replay (an empty body: every
    ``dead`` one)."""

    model_config = ConfigDict(extra="forbid")

    plugin: StrictStr | None = None
    state: Literal["dead", "failed", "done", "pending"] = "dead"
    since: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None = Field(
        default=None, description="only deliveries created at or after this time, Unix ms"
    )


class Refused(Exception):
    """A request the API refuses: answered ``status`` with ``message`` in the error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _page(request: Request) -> tuple[int, int | None]:
    """``(limit, before_id)`` from the ``limit`` and ``cursor`` query parameters.

    Raises:
        Refused: 400, either is not a whole number or ``limit`` is outside [1, MAX_LIMIT].
    """
    q = request.query_params
    try:
        limit = int(q.get("limit", "50"))
        before = int(q["cursor"]) if q.get("cursor") else None
    except ValueError:
        raise Refused(400, "limit and cursor must be whole numbers") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Refused(400, f"limit={limit} is outside [1, {MAX_LIMIT}]")
    if before is not None and not 0 <= before < 2**63:  # a row id is a signed 64-bit integer
        raise Refused(400, f"cursor={before} is not a cursor this API gave")
    return limit, before


async def _parse_body(
    request: Request, model: type[Body], *, max_bytes: int, empty: Body | None = None
) -> Body:
    """The JSON body validated by ``model``; ``empty`` (when given) stands for an empty body.

    Raises:
        Refused: 413 too large; 400 not JSON; 422 naming the first bad field.
    """
    try:
        raw = await read_bounded(request, max_bytes)
        if empty is not None and not raw.strip():
            return empty
        doc = json.loads(raw)
    except BodyTooLarge:
        raise Refused(413, "body is too large") from None
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise Refused(422, f"{field}: {first['msg']}") from None


class StatusAPI:
    """Handlers of the status API, sharing one :class:`Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _authorized(self, request: Request) -> bool:
        assert self.rt.credentials is not None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = self.rt.credentials.api_token
        if not token or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.encode(), expected.encode())

    def guarded(self, handler: Handler) -> Handler:
        """Wrap ``handler``: 401 without the token, 503 when the database does not answer,
        and :class:`Refused` in the error shape."""

        async def run(request: Request) -> Response:
            if not self._authorized(request):
                log.warning("api_unauthorized", path=request.url.path)
                return error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except Refused as exc:
                return error(exc.status, exc.message)
            except StoreUnavailable as exc:
                log.error("api_store_unavailable", error=str(exc))
                return error(
                    503,
                    "database unavailable, retry later",
                    {"Retry-After": str(self.rt.settings.kling_hooks_retry_after_s)},
                )

        return run

    async def get_task(self, request: Request) -> Response:
        assert self.rt.reader is not None
        task = await self.rt.reader.get_task(request.path_params["id"])
        if task is None:
            return error(404, "no task with that task_id or external_task_id")
        return JSONResponse(task)

    async def list_tasks(self, request: Request) -> Response:
        assert self.rt.reader is not None
        q = request.query_params
        status = q.get("task_status") or None
        if status is not None and status not in TaskStatus.__members__.values():
            return error(
                400,
                f"task_status={status!r} is not one of " + ", ".join(s.value for s in TaskStatus),
            )
        limit, before = _page(request)
        route = q.get("route") or None
        if route is not None and route not in KlingRoute.__members__.values():
            return error(
                400, f"route={route!r} is not one of " + ", ".join(r.value for r in KlingRoute)
            )
        tasks, cursor = await self.rt.reader.list_tasks(
            task_status=status, route=route, limit=limit, before_id=before
        )
        return JSONResponse(
            {"tasks": tasks, "next_cursor": None if cursor is None else str(cursor)}
        )

    async def register(self, request: Request) -> Response:
        assert self.rt.writer is not None
        body = await _parse_body(
            request, RegistrationBody, max_bytes=self.rt.settings.kling_hooks_max_body_bytes
        )
        reg = Registration(
            task_id=body.task_id,
            external_task_id=body.external_task_id,
            route=body.route.value,
            request_json=None if body.request is None else json.dumps(body.request),
            task_status=body.task_status,
            created_at=body.created_at,
            received_at_ms=self.rt.clock_ms(),
        )
        try:
            verdict = await self.rt.writer.submit(reg)
        except TaskConflict as exc:
            return error(409, str(exc))
        return ok(verdict=verdict.value, task_id=body.task_id)

    async def list_deliveries(self, request: Request) -> Response:
        """``GET /deliveries?state=&plugin=&limit=&cursor=``: deliveries, newest first."""
        assert self.rt.reader is not None
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in DeliveryState.__members__.values():
            return error(
                400, f"state={state!r} is not one of " + ", ".join(s.value for s in DeliveryState)
            )
        limit, before = _page(request)
        deliveries, cursor = await self.rt.reader.list_deliveries(
            state=state, plugin=q.get("plugin") or None, limit=limit, before_id=before
        )
        return JSONResponse(
            {"deliveries": deliveries, "next_cursor": None if cursor is None else str(cursor)}
        )

    async def redeliver_one(self, request: Request) -> Response:
        """``POST /deliveries/{id}/redeliver``: replay one delivery (404 unknown or not a
        whole number, 409 running now)."""
        raw_id = request.path_params["id"]
        if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= MAX_ID_DIGITS):
            return error(404, f"no delivery with id {raw_id!r}")
        op = Redeliver(now_ms=self.rt.clock_ms(), delivery_id=int(raw_id), loaded=self._loaded())
        try:
            count = await self._redeliver(op)
        except DeliveryNotFound as exc:
            return error(404, str(exc))
        except (DeliveryRunning, PluginNotLoaded) as exc:
            return error(409, str(exc))
        return ok(redelivered=count)

    def _loaded(self) -> frozenset[str]:
        """The plugins that can run a replay now: enabled, and their ``start()`` succeeded."""
        dispatcher = self.rt.dispatcher
        return frozenset(
            p.name
            for p in self.rt.plugins
            if dispatcher is not None and dispatcher.is_started(p.name)
        )

    async def redeliver_many(self, request: Request) -> Response:
        """``POST /deliveries/redeliver``: replay every delivery matching the body's filter."""
        body = await _parse_body(
            request,
            RedeliveryFilter,
            max_bytes=self.rt.settings.kling_hooks_max_body_bytes,
            empty=RedeliveryFilter(),
        )
        loaded = self._loaded()
        if body.plugin is not None and body.plugin not in loaded:
            names = ", ".join(sorted(loaded)) or "none"
            return error(400, f"plugin={body.plugin!r} is not loaded (loaded: {names})")
        op = Redeliver(
            now_ms=self.rt.clock_ms(),
            state=DeliveryState(body.state),
            plugin=body.plugin,
            since_ms=body.since,
            loaded=loaded,
        )
        return ok(redelivered=await self._redeliver(op))

    async def _redeliver(self, op: Redeliver) -> int:
        """Run ``op`` through the writer, then wake the dispatcher; returns how many."""
        assert self.rt.writer is not None and self.rt.dispatcher is not None
        count = await self.rt.writer.execute(op)
        log.info(
            "deliveries_replayed",
            count=count,
            delivery_id=op.delivery_id,
            state=op.state,
            plugin=op.plugin,
            since_ms=op.since_ms,
        )
        self.rt.dispatcher.wake()
        return count

    async def list_plugins(self, request: Request) -> Response:
        """``GET /plugins``: the enabled plugins, settings with secrets masked, and whether each
        started (a plugin whose ``start()`` failed gets no deliveries; they wait, pending)."""
        dispatcher = self.rt.dispatcher
        return JSONResponse(
            {
                "plugins": [
                    {
                        **loaded.describe(),
                        "started": dispatcher is not None and dispatcher.is_started(loaded.name),
                    }
                    for loaded in self.rt.plugins
                ]
            }
        )

    async def healthz(self, request: Request) -> Response:
        return ok()

    async def readyz(self, request: Request) -> Response:
        rt = self.rt
        if rt.reader is None or rt.writer is None or not rt.writer.running:
            return error(503, "not started")
        try:
            await rt.reader.ping()
        except StoreUnavailable as exc:
            return error(503, f"database does not answer: {exc}")
        return ok()

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(RegistrationBody, RedeliveryFilter))


def api_routes(runtime: Runtime) -> list[Route]:
    """The status API's routes."""
    api = StatusAPI(runtime)
    return [
        Route("/tasks", api.guarded(api.list_tasks), methods=["GET"]),
        Route("/tasks", api.guarded(api.register), methods=["POST"]),
        Route("/tasks/{id:path}", api.guarded(api.get_task), methods=["GET"]),
        Route("/deliveries", api.guarded(api.list_deliveries), methods=["GET"]),
        Route("/deliveries/redeliver", api.guarded(api.redeliver_many), methods=["POST"]),
        Route("/deliveries/{id}/redeliver", api.guarded(api.redeliver_one), methods=["POST"]),
        Route("/plugins", api.guarded(api.list_plugins), methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
