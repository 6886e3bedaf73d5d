"""The callback endpoint: ``POST /callbacks/{external_task_id}/{token}``.

Answers (the issue's response table; every rejection is logged and counted with its
reason, a :class:`receiver.metrics.Rejection` code):

========================================  ======  ============================  =================
case                                      status  stored                        reason
========================================  ======  ============================  =================
new transition                            200     raw body + transition
same (task_id, task_status) again         200     raw body (verdict duplicate)
older than the task's state               200     raw body (verdict stale)
token wrong                               401     nothing                       token
body names another task than the URL      409     nothing                       other_task
not JSON (or not UTF-8)                   400     nothing                       not_json
JSON that is not a Kling task             422     nothing                       not_a_task
body over ``MAX_BODY_BYTES``              413     nothing (rest not read)       too_large
body slower than ``BODY_TIMEOUT_S``       408     nothing                       too_slow
headers slower than ``HEADER_TIMEOUT_S``  408     nothing; connection closed    (not counted)
``MAX_IN_FLIGHT`` requests in progress    503     nothing; ``Retry-After``      overloaded
database cannot commit                    503     nothing; ``Retry-After``      store_unavailable
========================================  ======  ============================  =================

The settings named are ``KLING_HOOKS_*`` (``KLING_HOOKS_MAX_BODY_BYTES``...).
"""

from __future__ import annotations

import time

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.typing import FilteringBoundLogger as BoundLogger

from receiver.config import Settings
from receiver.errors import Refused, StoreUnavailable, TaskConflict
from receiver.metrics import Rejection
from receiver.models import Accepted
from receiver.parsing import parse_callback
from receiver.request_ids import request_log
from receiver.requests import read_text
from receiver.responses import error, respond
from receiver.services import services
from receiver.transitions import IncomingCallback
from submitter.protocol import TaskObject
from submitter.tokens import CALLBACK_PATH

log = structlog.get_logger("kling_hooks.callbacks")


#: The rejection reason of each status a :class:`Refused` of :func:`_read_task` can carry
#: (the table above: one case per status).
_REASONS = {
    400: Rejection.NOT_JSON,
    408: Rejection.TOO_SLOW,
    409: Rejection.OTHER_TASK,
    413: Rejection.TOO_LARGE,
    422: Rejection.NOT_A_TASK,
}


def _reject(
    request: Request,
    clog: BoundLogger,
    status: int,
    message: str,
    reason: Rejection,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """Count and log a refused callback with its reason, and answer it in the error shape.

    Args:
        clog: The request's logger (its ``external_task_id``, and ``task_id`` once known).
        reason: The ``reason`` label of ``kling_hooks_callback_rejections_total``, also logged.
        detail: What exactly was wrong, for the log only (free text).
    """
    services(request).metrics.rejected(reason)
    clog.warning(
        "callback_rejected",
        status=status,
        reason=reason.value,
        detail=detail,
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
    """``POST /callbacks/{external_task_id}/{token}``: see the module docstring's table.

    Every call is timed (``kling_hooks_callback_duration_seconds``) and counted by verdict or
    rejection reason (``receiver.metrics``).
    """
    started_s = time.perf_counter()
    try:
        return await _receive(request)
    finally:
        services(request).metrics.callback_took(time.perf_counter() - started_s)


async def _receive(request: Request) -> Response:
    svc = services(request)
    ext = request.path_params["external_task_id"]
    clog = request_log(request, log, external_task_id=ext[:80])
    if not svc.credentials.tokens.verify(ext, request.path_params["token"]):
        # With more path segments than ours, the real token may sit inside "ext": log its
        # first segment only.
        clog = request_log(request, log, external_task_id=ext.split("/", 1)[0][:80])
        return _reject(
            request, clog, 401, "invalid callback URL", Rejection.TOKEN, "token does not verify"
        )
    try:
        task, raw = await _read_task(request, ext, svc.settings)
    except Refused as exc:
        reason = _REASONS[exc.status]
        return _reject(request, clog, exc.status, exc.message, reason, exc.message)
    clog = clog.bind(task_id=task.task_id)
    try:
        verdict = await svc.writer.submit(IncomingCallback(ext, task, raw, svc.clock_ms()))
    except TaskConflict as exc:
        return _reject(request, clog, 409, _OTHER_TASK, Rejection.OTHER_TASK, str(exc))
    except Exception as exc:  # StoreUnavailable, or anything else: never a 500
        if not isinstance(exc, StoreUnavailable):
            clog.exception("callback_store_error")
        retry = {"Retry-After": str(svc.settings.kling_hooks_retry_after_s)}
        return _reject(
            request,
            clog,
            503,
            "database unavailable, retry later",
            Rejection.STORE_UNAVAILABLE,
            str(exc),
            retry,
        )
    svc.metrics.callback(verdict)
    clog.info("callback", verdict=verdict.value, task_status=task.task_status.value)
    return respond(Accepted(verdict=verdict))


#: The callback route; ``external_task_id`` may contain ``/`` (it is URL-quoted).
CALLBACK_ROUTES = [
    Route(CALLBACK_PATH + "/{external_task_id:path}/{token}", receive_callback, methods=["POST"]),
]
