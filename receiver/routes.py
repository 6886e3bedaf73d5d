"""The callback endpoint: ``POST /callbacks/{external_task_id}/{token}``.

Answers (the issue's response table; every rejection is logged with its reason):

====================================================  ======  ===========================
case                                                  status  stored
====================================================  ======  ===========================
new transition                                        200     raw body + transition
same (task_id, task_status) again                     200     raw body (verdict duplicate)
older than the task's state                           200     raw body (verdict stale)
token wrong                                           401     nothing
body names another task than the URL                  409     nothing
not JSON (or not UTF-8)                               400     nothing
JSON that is not a Kling task                         422     nothing
body over ``KLING_HOOKS_MAX_BODY_BYTES``              413     nothing (rest not read)
database cannot commit                                503     nothing; ``Retry-After`` set
====================================================  ======  ===========================
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.callback import CallbackError, parse_callback
from receiver.responses import error, ok
from receiver.runtime import Runtime
from receiver.store import StoreUnavailable
from submitter.tokens import CALLBACK_PATH
from receiver.transitions import IncomingCallback, TaskConflict

log = structlog.get_logger("kling_hooks.callbacks")


class BodyTooLarge(Exception):
    pass


async def read_bounded(request: Request, max_bytes: int) -> bytes:
    """Read the body, stopping as soon as it exceeds ``max_bytes`` (the rest is never read).

    Raises:
        BodyTooLarge: ``Content-Length`` or the bytes received exceed ``max_bytes``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class CallbackEndpoint:
    """Receives Kling's status-change callbacks; see the module docstring for the answers."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def _reject(
        self,
        request: Request,
        status: int,
        message: str,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        log.warning(
            "callback_rejected",
            status=status,
            reason=reason,
            client=request.client.host if request.client else None,
            external_task_id=request.path_params.get("external_task_id", "")[:80],
        )
        return error(status, message, headers)

    async def handle(self, request: Request) -> Response:
        rt = self.rt
        assert rt.credentials is not None and rt.writer is not None
        ext = request.path_params["external_task_id"]
        if not rt.credentials.tokens.verify(ext, request.path_params["token"]):
            return self._reject(request, 401, "invalid callback URL", "token does not verify")
        limit = rt.settings.kling_hooks_max_body_bytes
        try:
            raw = (await read_bounded(request, limit)).decode("utf-8")
        except BodyTooLarge:
            return self._reject(request, 413, f"body is over {limit} bytes", "body too large")
        except UnicodeDecodeError:
            return self._reject(request, 400, "body is not UTF-8 JSON", "not UTF-8")
        try:
            task = parse_callback(raw)
        except CallbackError as exc:
            return self._reject(request, exc.status, str(exc), str(exc))
        if task.external_task_id is not None and task.external_task_id != ext:
            return self._reject(
                request,
                409,
                "body belongs to another task than the URL",
                "external_task_id differs from the URL's",
            )
        op = IncomingCallback(ext, task, raw, rt.clock_ms())
        try:
            verdict = await rt.writer.submit(op)
        except TaskConflict as exc:
            return self._reject(request, 409, "body belongs to another task than the URL", str(exc))
        except Exception as exc:  # StoreUnavailable, or anything else: never a 500
            if not isinstance(exc, StoreUnavailable):
                log.exception("callback_store_error")
            retry = str(rt.settings.kling_hooks_retry_after_s)
            return self._reject(
                request,
                503,
                "database unavailable, retry later",
                str(exc),
                headers={"Retry-After": retry},
            )
        log.info(
            "callback",
            verdict=verdict.value,
            task_id=task.task_id,
            task_status=task.task_status.value,
            external_task_id=ext,
        )
        return ok(verdict=verdict.value)


def callback_routes(runtime: Runtime) -> list[Route]:
    """The callback route; ``external_task_id`` may contain ``/`` (it is URL-quoted)."""
    return [
        Route(
            CALLBACK_PATH + "/{external_task_id:path}/{token}",
            CallbackEndpoint(runtime).handle,
            methods=["POST"],
        ),
    ]
