"""The status API: what happened to each task, and to its deliveries to plugins.

Every ``/tasks``, ``/deliveries``, ``/plugins`` and ``/prune`` route needs
``Authorization: Bearer <KLING_HOOKS_API_TOKEN>`` (401 without it). ``/metrics`` needs
``KLING_HOOKS_METRICS_TOKEN`` when that is set, else the same token. ``/healthz``, ``/readyz``
and ``/openapi.json`` need no token. Answers are the models of ``receiver.models``; errors
have one shape, ``{"ok": false, "error": "..."}``. The document at ``/openapi.json``
(``receiver.openapi``) lists every route's answers and status codes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.errors import (
    DeliveryNotFound,
    DeliveryRunning,
    PluginNotLoaded,
    Refused,
    StoreUnavailable,
    TaskConflict,
)
from receiver.metrics import CONTENT_TYPE
from receiver.models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_ROW_ID,
    Accepted,
    DeliveryPage,
    DeliveryState,
    Ok,
    PluginList,
    PruneRequest,
    Redelivered,
    RedeliveryFilter,
    Registered,
    RegistrationBody,
    TransitionSource,
)
from receiver.openapi import openapi_document, query_names
from receiver.parsing import parse_callback
from receiver.pruning import prune
from receiver.request_ids import request_log
from receiver.requests import choice, parse_body, query_values, read_text, whole
from receiver.responses import error, respond, respond_json
from receiver.services import Services, services
from receiver.transitions import IncomingCallback, Registration
from submitter import protocol

log = structlog.get_logger("kling_hooks.api")

Handler = Callable[[Request], Awaitable[Response]]


#: Which bearer token a route wants, from the running receiver's parts.
TokenOf = Callable[[Services], str]


def api_token(svc: Services) -> str:
    """The status API's token: ``KLING_HOOKS_API_TOKEN``, or the generated one."""
    return svc.credentials.api_token


def metrics_token(svc: Services) -> str:
    """``GET /metrics``' token: ``KLING_HOOKS_METRICS_TOKEN`` when set, else :func:`api_token`
    (so with a metrics token set, the API token does not open ``/metrics``)."""
    token = svc.settings.kling_hooks_metrics_token
    return api_token(svc) if token is None else token.get_secret_value()


def _authorized(request: Request, expected: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.encode(), expected.encode())


def guarded(handler: Handler, token: TokenOf = api_token) -> Handler:
    """Wrap ``handler``: 401 without the bearer ``token`` (by default the API token), 503 when
    the database does not answer, and :class:`~receiver.errors.Refused` in the error shape."""

    async def run(request: Request) -> Response:
        svc = services(request)
        if not _authorized(request, token(svc)):
            request_log(request, log).warning("api_unauthorized", path=request.url.path)
            return error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except Refused as exc:
            return error(exc.status, exc.message)
        except StoreUnavailable as exc:
            request_log(request, log).error("api_store_unavailable", error=str(exc))
            retry = {"Retry-After": str(svc.settings.kling_hooks_retry_after_s)}
            return error(503, "database unavailable, retry later", retry)

    return run


def _query(request: Request, path: str, method: str = "get") -> dict[str, str]:
    """The query parameters of ``request``: only those ``OPERATIONS`` declares for
    ``method path`` (``receiver.openapi``), each given once, none empty (400 otherwise)."""
    return query_values(request, query_names(path, method), path)


def _page(query: dict[str, str]) -> tuple[int, int | None]:
    """``(limit, before_id)`` from the ``limit`` (default DEFAULT_LIMIT) and ``cursor``
    parameters.

    Raises:
        Refused: 400, ``limit`` outside [1, MAX_LIMIT] or ``cursor`` not a row id.
    """
    limit = whole(query, "limit", 1, MAX_LIMIT)
    return DEFAULT_LIMIT if limit is None else limit, whole(query, "cursor", 0, MAX_ROW_ID)


def _cursor(value: int | None) -> str | None:
    return None if value is None else str(value)


async def get_task(request: Request) -> Response:
    """``GET /tasks/{id}``: one task by task_id or external_task_id (404 when unknown)."""
    answer = await services(request).reader.task_answer(request.path_params["id"])
    if answer is None:
        return error(404, "no task with that task_id or external_task_id")
    return respond_json(answer)


async def list_tasks(request: Request) -> Response:
    """``GET /tasks?task_status=&route=&limit=&cursor=``: tasks, newest first."""
    query = _query(request, "/tasks")
    limit, before = _page(query)
    page = await services(request).reader.task_page(
        task_status=choice(query, "task_status", protocol.TaskStatus),
        route=choice(query, "route", protocol.Route),
        limit=limit,
        before_id=before,
        transition_before=whole(query, "transition_before", 0, MAX_ROW_ID),
    )
    return respond_json(page)


async def register(request: Request) -> Response:
    """``POST /tasks``: record a submission (409 when its ids name two tasks)."""
    svc = services(request)
    body = await parse_body(request, RegistrationBody, svc.settings)
    reg = Registration(
        task_id=body.task_id,
        external_task_id=body.external_task_id,
        route=body.route.value,
        request_json=None if body.request is None else json.dumps(body.request),
        task_status=body.task_status,
        created_at=body.created_at,
        received_at_ms=svc.clock_ms(),
    )
    try:
        verdict = await svc.writer.submit(reg)
    except TaskConflict as exc:
        return error(409, str(exc))
    return respond(Registered(verdict=verdict, task_id=body.task_id))


async def reconcile(request: Request) -> Response:
    """``POST /tasks/{id}/reconcile``: record Kling's answer to a query for a known task, as
    its callback would have been recorded (same dedupe, state machine and outbox), with
    ``source`` ``reconcile``. 404 when no task has that id; 409 when the body is another task.
    """
    svc = services(request)
    known = await svc.reader.get_task(request.path_params["id"])
    if known is None:
        return error(404, "no task with that task_id or external_task_id")
    raw = await read_text(request.scope, request.receive, svc.settings)
    task = parse_callback(raw)
    if task.task_id != known.task_id:
        return error(409, f"body is task {task.task_id}, not {known.task_id}")
    op = IncomingCallback(
        known.external_task_id, task, raw, svc.clock_ms(), source=TransitionSource.RECONCILE
    )
    try:
        verdict = await svc.writer.submit(op)
    except TaskConflict as exc:
        return error(409, str(exc))
    request_log(request, log).info(
        "task_reconciled", task_id=task.task_id, task_status=task.task_status.value
    )
    return respond(Accepted(verdict=verdict))


async def list_deliveries(request: Request) -> Response:
    """``GET /deliveries?state=&plugin=&limit=&cursor=``: deliveries, newest first."""
    query = _query(request, "/deliveries")
    limit, before = _page(query)
    deliveries, cursor = await services(request).reader.list_deliveries(
        state=choice(query, "state", DeliveryState),
        plugin=query.get("plugin"),
        limit=limit,
        before_id=before,
    )
    return respond(DeliveryPage(deliveries=deliveries, next_cursor=_cursor(cursor)))


async def redeliver_one(request: Request) -> Response:
    """``POST /deliveries/{id}/redeliver``: replay one delivery (404 unknown or not a whole
    number, 409 running now or its plugin not loaded)."""
    svc = services(request)
    raw_id = request.path_params["id"]
    if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) < 20) or int(raw_id) > MAX_ROW_ID:
        return error(404, f"no delivery with id {raw_id!r}")
    try:
        count = await svc.replay(delivery_id=int(raw_id))
    except DeliveryNotFound as exc:
        return error(404, str(exc))
    except (DeliveryRunning, PluginNotLoaded) as exc:
        return error(409, str(exc))
    _log_replay(request, count, delivery_id=int(raw_id))
    return respond(Redelivered(redelivered=count))


async def redeliver_many(request: Request) -> Response:
    """``POST /deliveries/redeliver``: replay every delivery matching the body's filter (409
    when it names a plugin not loaded, as for one delivery)."""
    svc = services(request)
    body = await parse_body(request, RedeliveryFilter, svc.settings, empty=RedeliveryFilter())
    try:
        count = await svc.replay(
            state=DeliveryState(body.state), plugin=body.plugin, since_ms=body.since
        )
    except PluginNotLoaded as exc:
        return error(409, str(exc))
    _log_replay(request, count, state=body.state, plugin=body.plugin, since_ms=body.since)
    return respond(Redelivered(redelivered=count))


def _log_replay(request: Request, count: int, **selection: object) -> None:
    request_log(request, log).info("deliveries_replayed", count=count, **selection)


async def list_plugins(request: Request) -> Response:
    """``GET /plugins``: the enabled plugins, settings with secrets masked, and whether each
    started (a plugin whose ``start()`` failed gets no deliveries; they wait, pending)."""
    svc = services(request)
    started = svc.started_plugins()
    return respond(
        PluginList(
            plugins=[loaded.describe(started=loaded.name in started) for loaded in svc.plugins]
        )
    )


async def prune_old(request: Request) -> Response:
    """``POST /prune``: remove raw callbacks and done deliveries older than the body's
    ``older_than_ms`` (by this receiver's clock), batch by batch through the writer; with
    ``vacuum``, then give the free pages back (``receiver.pruning``). It ends early, between
    two batches, when the receiver begins to stop or the client goes away (``complete``
    false)."""
    svc = services(request)
    body = await parse_body(request, PruneRequest, svc.settings)
    cutoff_ms = svc.clock_ms() - body.older_than_ms
    answer = await prune(
        svc.writer,
        svc.reader,
        cutoff_ms=cutoff_ms,
        dry_run=body.dry_run,
        vacuum=body.vacuum,
        should_stop=request.is_disconnected,
        logger=request_log(request, log),
    )
    return respond(answer)


async def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is up."""
    return respond(Ok())


async def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 while the writer runs, the database answers and takes writes,
    else 503 (with ``Retry-After``). Takes writes: the writer's last commit succeeded, or,
    after a failed one, its write probe did (at most one probe a second, whoever asks)."""
    svc = services(request)
    retry = {"Retry-After": str(svc.settings.kling_hooks_retry_after_s)}
    if not svc.writer.running:
        return error(503, "not started")
    if not await svc.writer.writable():
        return error(503, "the database takes no writes (the last commit failed)", retry)
    try:
        await svc.reader.ping()
    except StoreUnavailable as exc:
        return error(503, f"database does not answer: {exc}")
    return respond(Ok())


async def metrics(request: Request) -> Response:
    """``GET /metrics``: every metric of ``receiver.metrics`` in Prometheus' text format
    (``text/plain; version=0.0.4``); 503 when the outbox query gets no answer."""
    svc = services(request)
    return Response(await svc.metrics.scrape(svc.reader), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document, generated from the models."""
    return JSONResponse(openapi_document())


def by_method(**handlers: Handler) -> Handler:
    """One handler for a path that several methods serve: the request's method picks one of
    ``handlers`` (by method name; the route's ``methods`` are exactly these)."""

    async def run(request: Request) -> Response:
        return await handlers[request.method if request.method != "HEAD" else "GET"](request)

    return run


#: The status API's routes.
API_ROUTES = [
    # One route per path, so that a 405 lists every method of the path in ``Allow``.
    Route("/tasks", guarded(by_method(GET=list_tasks, POST=register)), methods=["GET", "POST"]),
    Route("/tasks/{id:path}/reconcile", guarded(reconcile), methods=["POST"]),
    Route("/tasks/{id:path}", guarded(get_task), methods=["GET"]),
    Route("/deliveries", guarded(list_deliveries), methods=["GET"]),
    Route("/deliveries/redeliver", guarded(redeliver_many), methods=["POST"]),
    Route("/deliveries/{id}/redeliver", guarded(redeliver_one), methods=["POST"]),
    Route("/plugins", guarded(list_plugins), methods=["GET"]),
    Route("/metrics", guarded(metrics, metrics_token), methods=["GET"]),
    Route("/prune", guarded(prune_old), methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]
