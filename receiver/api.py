"""The status API: what happened to each task.

Every ``/tasks`` route needs ``Authorization: Bearer <KLING_HOOKS_API_TOKEN>`` (401 without
it). ``/healthz``, ``/readyz`` and ``/openapi.json`` need no token. Errors have one shape:
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.openapi import openapi_document
from receiver.responses import error, ok
from receiver.routes import BodyTooLarge, read_bounded
from receiver.runtime import Runtime
from receiver.store import StoreUnavailable
from receiver.transitions import Registration, TaskConflict
from submitter.protocol import Millis, TaskStatus
from submitter.protocol import Route as KlingRoute

log = structlog.get_logger("kling_hooks.api")

Handler = Callable[[Request], Awaitable[Response]]
MAX_LIMIT = 500


class RegistrationBody(BaseModel):
    """``POST /tasks``: a submission made by the submitter."""

    model_config = ConfigDict(extra="forbid")

    route: KlingRoute
    task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    external_task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    task_status: TaskStatus = TaskStatus.SUBMITTED
    created_at: Millis | None = None
    request: dict[str, Any] | None = None


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
        """Wrap ``handler``: 401 without the token, 503 when the database does not answer."""

        async def run(request: Request) -> Response:
            if not self._authorized(request):
                log.warning("api_unauthorized", path=request.url.path)
                return error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
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
        try:
            limit = int(q.get("limit", "50"))
            before = int(q["cursor"]) if q.get("cursor") else None
        except ValueError:
            return error(400, "limit and cursor must be whole numbers")
        if not 1 <= limit <= MAX_LIMIT:
            return error(400, f"limit={limit} is outside [1, {MAX_LIMIT}]")
        tasks, cursor = await self.rt.reader.list_tasks(
            task_status=status, route=q.get("route") or None, limit=limit, before_id=before
        )
        return JSONResponse(
            {"tasks": tasks, "next_cursor": None if cursor is None else str(cursor)}
        )

    async def register(self, request: Request) -> Response:
        assert self.rt.writer is not None
        try:
            raw = await read_bounded(request, self.rt.settings.kling_hooks_max_body_bytes)
            doc = json.loads(raw)
        except BodyTooLarge:
            return error(413, "body is too large")
        except ValueError:
            return error(400, "body is not JSON")
        try:
            body = RegistrationBody.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            return error(422, f"{field}: {first['msg']}")
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
        return JSONResponse(openapi_document(RegistrationBody))


def api_routes(runtime: Runtime) -> list[Route]:
    """The status API's routes."""
    api = StatusAPI(runtime)
    return [
        Route("/tasks", api.guarded(api.list_tasks), methods=["GET"]),
        Route("/tasks", api.guarded(api.register), methods=["POST"]),
        Route("/tasks/{id:path}", api.guarded(api.get_task), methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
