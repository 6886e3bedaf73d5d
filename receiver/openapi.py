"""The OpenAPI 3.1 document served at ``/openapi.json``, generated from ``receiver.models``.

Every request body and JSON answer is a pydantic model (``GET /metrics`` answers text), so
the document is what the server sends and accepts: the schemas come from
``model_json_schema`` (their ``$defs`` hoisted into ``components/schemas``), and
:data:`OPERATIONS` lists each route's parameters, answers and status codes once.
tests/test_openapi.py checks live answers of a real server against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from receiver.models import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_ROW_ID,
    Accepted,
    DeliveryPage,
    DeliveryState,
    ErrorAnswer,
    Ok,
    PluginList,
    Pruned,
    PruneRequest,
    Redelivered,
    RedeliveryFilter,
    Registered,
    RegistrationBody,
    Task,
    TaskPage,
)
from submitter.protocol import Route, TaskObject, TaskStatus

_REF = "#/components/schemas/{model}"
_STRING: dict[str, Any] = {"type": "string"}


@dataclass(frozen=True)
class TextAnswer:
    """A 200 answer that is text, not JSON (``GET /metrics``): its media type, and what the
    text is."""

    media_type: str
    description: str


@dataclass(frozen=True)
class Operation:
    """One route and method: what it takes and what it answers (a model's JSON, or text)."""

    path: str
    method: str
    summary: str
    answer: type[BaseModel] | TextAnswer
    errors: tuple[int, ...]
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    secured: bool = True


def _enum(values: type[Any]) -> dict[str, Any]:
    return {"type": "string", "enum": [v.value for v in values]}


def _whole(low: int, high: int, description: str, **more: Any) -> dict[str, Any]:
    """A query parameter that is a whole number in [low, high], ASCII digits."""
    return {"type": "integer", "minimum": low, "maximum": high, "description": description, **more}


_PAGE: dict[str, dict[str, Any]] = {
    "limit": _whole(1, MAX_LIMIT, "items per page", default=DEFAULT_LIMIT),
    "cursor": _whole(0, MAX_ROW_ID, "a page's next_cursor"),
}

#: Every route of the receiver, in the document's order.
OPERATIONS = (
    Operation(
        "/callbacks/{external_task_id}/{token}",
        "post",
        "Receive a Kling callback (bare task, envelope or old schema)",
        Accepted,
        # 404: a path no callback URL has (a line break in external_task_id, no token)
        (400, 401, 404, 409, 413, 422, 503),
        body=TaskObject,
        secured=False,
    ),
    Operation(
        "/tasks",
        "get",
        "List tasks, newest first",
        TaskPage,
        (400, 401, 503),
        query={
            "task_status": _enum(TaskStatus),
            "route": _enum(Route),
            "transition_before": _whole(
                0, MAX_ROW_ID, "only tasks whose latest transition was received before, Unix ms"
            ),
            **_PAGE,
        },
    ),
    Operation(
        "/tasks",
        "post",
        "Register a submission (the submitter calls this)",
        Registered,
        (400, 401, 409, 413, 422, 503),
        body=RegistrationBody,
    ),
    Operation(
        "/tasks/{id}", "get", "One task by task_id or external_task_id", Task, (401, 404, 503)
    ),
    Operation(
        "/tasks/{id}/reconcile",
        "post",
        "Record Kling's answer to a query for a task whose callback was lost",
        Accepted,
        (400, 401, 404, 409, 413, 422, 503),
        body=TaskObject,
    ),
    Operation(
        "/deliveries",
        "get",
        "List deliveries to plugins, newest first",
        DeliveryPage,
        (400, 401, 503),
        query={"state": _enum(DeliveryState), "plugin": {**_STRING, "minLength": 1}, **_PAGE},
    ),
    Operation(
        "/deliveries/{id}/redeliver",
        "post",
        "Replay one delivery (not while it runs)",
        Redelivered,
        (401, 404, 409, 503),
    ),
    Operation(
        "/deliveries/redeliver",
        "post",
        "Replay every delivery matching a filter (default: the dead ones)",
        Redelivered,
        (400, 401, 409, 413, 422, 503),
        body=RedeliveryFilter,
        body_required=False,
    ),
    Operation("/plugins", "get", "The enabled plugins, secrets masked", PluginList, (401, 503)),
    Operation(
        "/metrics",
        "get",
        "Prometheus metrics (bearer KLING_HOOKS_METRICS_TOKEN, else the API token)",
        TextAnswer("text/plain", "Prometheus text exposition format, version 0.0.4"),
        (401, 503),
    ),
    Operation(
        "/prune",
        "post",
        "Remove raw callbacks and done deliveries older than a duration, in small batches",
        Pruned,
        (400, 401, 413, 422, 503),
        body=PruneRequest,
    ),
    Operation("/healthz", "get", "The process is up", Ok, (), secured=False),
    Operation("/readyz", "get", "The database answers", Ok, (503,), secured=False),
)


def query_names(path: str, method: str) -> tuple[str, ...]:
    """The query parameters :data:`OPERATIONS` declares for ``method path``, in order (none
    for a route not listed)."""
    for op in OPERATIONS:
        if (op.path, op.method) == (path, method):
            return tuple(op.query)
    return ()


Refs = dict[tuple[Any, JsonSchemaMode], dict[str, Any]]


def _schemas() -> tuple[Refs, dict[str, Any]]:
    """Each answer model's schema for serialization and each body's for validation, as
    ``$ref``s, and the schemas they refer to."""
    answers: set[type[BaseModel]] = {ErrorAnswer}
    answers |= {o.answer for o in OPERATIONS if not isinstance(o.answer, TextAnswer)}
    bodies: set[type[BaseModel]] = {o.body for o in OPERATIONS if o.body is not None}
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "serialization") for m in answers]
    pairs += [(m, "validation") for m in bodies]
    pairs.sort(key=lambda p: (p[0].__name__, p[1]))
    refs, top = models_json_schema(pairs, ref_template=_REF)
    return refs, top.get("$defs", {})


def _content(
    schema: dict[str, Any], description: str, media_type: str = "application/json"
) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _answer(op: Operation, refs: Refs) -> dict[str, Any]:
    if isinstance(op.answer, TextAnswer):
        return _content(_STRING, op.answer.description, op.answer.media_type)
    return _content(refs[(op.answer, "serialization")], "ok")


def _parameters(op: Operation) -> list[dict[str, Any]]:
    names = [p.strip("{}") for p in op.path.split("/") if p.startswith("{")]
    path = [{"name": n, "in": "path", "required": True, "schema": _STRING} for n in names]
    return path + [{"name": n, "in": "query", "schema": s} for n, s in op.query.items()]


def _operation(op: Operation, refs: Refs) -> dict[str, Any]:
    error = refs[(ErrorAnswer, "serialization")]
    # Every route: 503 past KLING_HOOKS_MAX_IN_FLIGHT; with a body: 408 past its deadline.
    codes = {*op.errors, 503, *((408,) if op.body is not None else ())}
    out: dict[str, Any] = {
        "summary": op.summary,
        "operationId": re.sub(r"\W+", "_", f"{op.method}{op.path}").strip("_"),
        "responses": {
            "200": _answer(op, refs),
            **{str(code): _content(error, "error") for code in sorted(codes)},
        },
    }
    if op.secured:
        out["security"] = [{"bearer": []}]
    if params := _parameters(op):
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    return out


@cache
def openapi_document() -> dict[str, Any]:
    """The whole document (built once)."""
    refs, schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "kling-hooks", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
