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
body not all sent in ``KLING_HOOKS_BODY_TIMEOUT_S``   408     nothing
headers not sent in ``KLING_HOOKS_HEADER_TIMEOUT_S``  408     nothing; connection closed
``KLING_HOOKS_MAX_IN_FLIGHT`` requests handled now    503     nothing; ``Retry-After`` set
database cannot commit                                503     nothing; ``Retry-After`` set
====================================================  ======  ===========================
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.config import Settings
from receiver.errors import Refused, StoreUnavailable, TaskConflict
from receiver.models import Accepted
from receiver.parsing import parse_callback
from receiver.requests import read_text
from receiver.responses import error, respond
from receiver.services import services
from receiver.transitions import IncomingCallback
from submitter.protocol import TaskObject
from submitter.tokens import CALLBACK_PATH

log = structlog.get_logger("kling_hooks.callbacks")


def _reject(
    request: Request,
    status: int,
    message: str,
    reason: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """Log a refused callback with its reason, and answer it in the error shape."""
    log.warning(
        "callback_rejected",
        status=status,
        reason=reason,
        client=request.client.host if request.client else None,
    )
    return error(status, message, headers)


_OTHER_TASK = "body belongs to another task than the URL"


async def _read_task(request: Request, ext: str, settings: Settings) -> tuple[TaskObject, str]:
    """The callback's task and raw body.

    Raises:
        Refused: 413, 400 or 422 as the module docstring's table says, or 409 when the body
            names another external_task_id than the URL.
    """
    raw = await read_text(request, settings)
    task = parse_callback(raw)
    if task.external_task_id is not None and task.external_task_id != ext:
        raise Refused(_OTHER_TASK, 409)
    return task, raw


async def receive_callback(request: Request) -> Response:
    """``POST /callbacks/{external_task_id}/{token}``: see the module docstring's table."""
    svc = services(request)
    ext = request.path_params["external_task_id"]
    structlog.contextvars.bind_contextvars(external_task_id=ext[:80])
    if not svc.credentials.tokens.verify(ext, request.path_params["token"]):
        return _reject(request, 401, "invalid callback URL", "token does not verify")
    try:
        task, raw = await _read_task(request, ext, svc.settings)
    except Refused as exc:
        return _reject(request, exc.status, exc.message, exc.message)
    structlog.contextvars.bind_contextvars(task_id=task.task_id)
    try:
        verdict = await svc.writer.submit(IncomingCallback(ext, task, raw, svc.clock_ms()))
    except TaskConflict as exc:
        return _reject(request, 409, _OTHER_TASK, str(exc))
    except Exception as exc:  # StoreUnavailable, or anything else: never a 500
        if not isinstance(exc, StoreUnavailable):
            log.exception("callback_store_error")
        retry = {"Retry-After": str(svc.settings.kling_hooks_retry_after_s)}
        return _reject(request, 503, "database unavailable, retry later", str(exc), retry)
    log.info("callback", verdict=verdict.value, task_status=task.task_status.value)
    return respond(Accepted(verdict=verdict))


#: The callback route; ``external_task_id`` may contain ``/`` (it is URL-quoted).
CALLBACK_ROUTES = [
    Route(CALLBACK_PATH + "/{external_task_id:path}/{token}", receive_callback, methods=["POST"]),
]
