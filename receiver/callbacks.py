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

Every answer carries ``X-Request-ID`` (``receiver.request_ids``). An accepted callback is
logged only at debug level (``KLING_HOOKS_LOG_LEVEL=debug``: one ``callback`` line each);
rejections are logged at warning level.

The endpoint is a pure ASGI app, and :class:`CallbackFastPath` hands it a callback before
Starlette's routing and request objects: this is the path every Kling callback takes, and the
one the benchmarks measure (bench/README.md). Other methods on the same path (405) and
everything else go through Starlette as usual.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import Refused, StoreUnavailable, TaskConflict
from receiver.metrics import Rejection
from receiver.models import Accepted, ErrorAnswer, Verdict
from receiver.parsing import parse_callback
from receiver.request_ids import choose_request_id
from receiver.requests import read_text
from receiver.services import Services, services_of
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
_OTHER_TASK = "body belongs to another task than the URL"
#: The answer to an accepted callback, by verdict: built once from the answer's model.
_ACCEPTED = {v: Accepted(verdict=v).model_dump_json().encode() for v in Verdict}
_JSON = (b"content-type", b"application/json")
_INTERNAL_ERROR = ErrorAnswer(error="internal error").model_dump_json().encode()

#: An answer: status, body, and headers beyond content type, length and request id.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]


class _Call:
    """One callback request: what its log lines and its answer need."""

    __slots__ = ("client", "external_task_id", "request_id", "svc", "task_id")

    def __init__(self, scope: Scope, svc: Services, external_task_id: str) -> None:
        self.svc = svc
        self.request_id = choose_request_id(scope)
        self.external_task_id = external_task_id
        self.task_id: str | None = None
        client = scope.get("client")
        self.client = client[0] if client else None

    def fields(self) -> dict[str, Any]:
        found = {"request_id": self.request_id, "external_task_id": self.external_task_id[:80]}
        if self.task_id is not None:
            found["task_id"] = self.task_id
        return found

    def reject(
        self,
        status: int,
        message: str,
        reason: Rejection,
        detail: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Answer:
        """Count and log a refused callback with its reason; its answer in the error shape.

        Args:
            reason: The ``reason`` label of ``kling_hooks_callback_rejections_total``, also
                logged.
            detail: What exactly was wrong, for the log only (free text).
        """
        self.svc.metrics.rejected(reason)
        log.warning(
            "callback_rejected",
            **self.fields(),  # first, as a bound logger's fields would be
            status=status,
            reason=reason.value,
            detail=detail,
            client=self.client,
        )
        extra = list(headers or [])
        if status == 408:  # as receiver.responses.error: the rest of the body may still come
            extra.append((b"connection", b"close"))
        return status, ErrorAnswer(error=message).model_dump_json().encode(), extra


async def _read_task(
    scope: Scope, receive: Receive, ext: str, svc: Services
) -> tuple[TaskObject, str]:
    """The callback's task and raw body.

    Raises:
        Refused: 413, 408, 400 or 422 as the module docstring's table says, or 409 when the
            body names another external_task_id than the URL.
    """
    raw = await read_text(scope, receive, svc.settings)
    task = parse_callback(raw)
    if task.external_task_id is not None and task.external_task_id != ext:
        raise Refused(_OTHER_TASK, 409)
    return task, raw


class CallbackEndpoint:
    """``POST /callbacks/{external_task_id}/{token}`` as an ASGI app: see the module
    docstring's table.

    Every call is timed (``kling_hooks_callback_duration_seconds``) and counted by verdict or
    rejection reason (``receiver.metrics``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started_s = time.perf_counter()
        svc = services_of(scope)
        params = scope["path_params"]
        call = _Call(scope, svc, params["external_task_id"])
        try:
            status, body, headers = await _receive(scope, receive, call, params["token"])
        except Exception:  # a bug: still the one JSON shape (no Starlette layer is around)
            log.exception("callback_failed", **call.fields())
            status, body, headers = 500, _INTERNAL_ERROR, []
        finally:
            svc.metrics.callback_took(time.perf_counter() - started_s)
        headers += [
            _JSON,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", call.request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _receive(scope: Scope, receive: Receive, call: _Call, token: str) -> Answer:
    svc, ext = call.svc, call.external_task_id
    if not svc.credentials.tokens.verify(ext, token):
        # With more path segments than ours, the real token may sit inside "ext": log its
        # first segment only.
        call.external_task_id = ext.split("/", 1)[0]
        return call.reject(401, "invalid callback URL", Rejection.TOKEN, "token does not verify")
    try:
        task, raw = await _read_task(scope, receive, ext, svc)
    except Refused as exc:
        return call.reject(exc.status, exc.message, _REASONS[exc.status], exc.message)
    call.task_id = task.task_id
    try:
        verdict = await svc.writer.submit(IncomingCallback(ext, task, raw, svc.clock_ms()))
    except TaskConflict as exc:
        return call.reject(409, _OTHER_TASK, Rejection.OTHER_TASK, str(exc))
    except Exception as exc:  # StoreUnavailable, or anything else: never a 500
        if not isinstance(exc, StoreUnavailable):
            log.exception("callback_store_error", **call.fields())
        retry = [(b"retry-after", str(svc.settings.kling_hooks_retry_after_s).encode())]
        return call.reject(
            503,
            "database unavailable, retry later",
            Rejection.STORE_UNAVAILABLE,
            str(exc),
            retry,
        )
    svc.metrics.callback(verdict)
    if svc.settings.kling_hooks_log_level == "debug":  # asking the logger costs µs per call
        log.debug(
            "callback", verdict=verdict.value, task_status=task.task_status.value, **call.fields()
        )
    return 200, _ACCEPTED[verdict], []


#: The callback route; ``external_task_id`` may contain ``/`` (it is URL-quoted).
CALLBACK_ROUTE = Route(
    CALLBACK_PATH + "/{external_task_id:path}/{token}", CallbackEndpoint(), methods=["POST"]
)
CALLBACK_ROUTES = [CALLBACK_ROUTE]


class CallbackFastPath:
    """ASGI middleware: a request that :data:`CALLBACK_ROUTE` matches fully (the path and
    ``POST``) goes straight to its endpoint; everything else to ``app``.

    It sits inside the in-flight limit (``receiver.limits.InFlightLimit``) and outside
    Starlette's app; the endpoint sets its own ``X-Request-ID`` and answers a bug with the
    error shape's 500, as Starlette's handler would.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = CALLBACK_PATH + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            match, child = CALLBACK_ROUTE.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                await CALLBACK_ROUTE.app(scope, receive, send)
                return
        await self.app(scope, receive, send)
