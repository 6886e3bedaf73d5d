"""The OpenAPI 3.1 document served at ``/openapi.json``.

Request bodies come from the pydantic models that validate them, so the document cannot drift
from what the server accepts; answers are described by small JSON schemas here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from receiver.outbox import DeliveryState
from submitter.protocol import TaskObject, TaskStatus

_ERROR = {
    "type": "object",
    "required": ["ok", "error"],
    "properties": {"ok": {"const": False}, "error": {"type": "string"}},
}
_VERDICT = {
    "type": "object",
    "required": ["ok", "verdict"],
    "properties": {"ok": {"const": True}, "verdict": {"enum": ["new", "duplicate", "stale"]}},
}
_TRANSITION = {
    "type": "object",
    "properties": {
        "task_status": {"enum": [s.value for s in TaskStatus]},
        "updated_at": {"type": ["integer", "null"], "description": "Kling's, Unix ms"},
        "received_at": {"type": "integer", "description": "ours, Unix ms"},
    },
}
_DELIVERY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "plugin": {"type": "string"},
    "state": {"enum": [s.value for s in DeliveryState]},
    "attempts": {"type": "integer", "description": "attempts started"},
    "next_attempt_at": {"type": ["integer", "null"], "description": "Unix ms"},
    "last_error": {"type": ["string", "null"]},
    "task_status": {
        "enum": [s.value for s in TaskStatus],
        "description": "the transition delivered",
    },
    "created_at": {"type": "integer", "description": "ours, Unix ms"},
    "updated_at": {"type": "integer", "description": "ours, Unix ms"},
}
_DELIVERY_REQUIRED = ["id", "plugin", "state", "attempts", "next_attempt_at", "last_error"]
_DELIVERY = {"type": "object", "required": _DELIVERY_REQUIRED, "properties": _DELIVERY_PROPERTIES}
_LISTED_DELIVERY = {
    "type": "object",
    "required": [*_DELIVERY_REQUIRED, "task_id", "external_task_id"],
    "properties": {
        **_DELIVERY_PROPERTIES,
        "task_id": {"type": "string"},
        "external_task_id": {"type": "string"},
    },
}
_FILE = {
    "type": "object",
    "required": ["url", "path", "bytes", "sha256"],
    "properties": {
        "url": {"type": "string", "description": "where it was fetched from"},
        "path": {"type": "string", "description": "where it is on the receiver's machine"},
        "bytes": {"type": "integer"},
        "sha256": {"type": "string"},
    },
}
_REDELIVERED = {
    "type": "object",
    "required": ["ok", "redelivered"],
    "properties": {"ok": {"const": True}, "redelivered": {"type": "integer"}},
}
_PLUGIN = {
    "type": "object",
    "required": ["name", "version", "origin", "statuses", "routes", "settings", "started"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "origin": {"type": "string", "description": "entry point or file"},
        "statuses": {"type": "array", "items": {"enum": [s.value for s in TaskStatus]}},
        "routes": {"type": ["array", "null"], "items": {"type": "string"}},
        "settings": {"type": "object", "description": "secrets shown as **********"},
        "started": {"type": "boolean", "description": "false when its start() failed"},
    },
}
_TASK = {
    "type": "object",
    "required": ["task_id", "external_task_id", "task_status", "transitions"],
    "properties": {
        "task_id": {"type": "string"},
        "external_task_id": {"type": "string"},
        "route": {"type": ["string", "null"]},
        "task_status": {"enum": [s.value for s in TaskStatus]},
        "task_status_msg": {"type": ["string", "null"]},
        "task_result": {"type": ["object", "null"]},
        "final_unit_deduction": {"type": ["string", "null"]},
        "created_at": {"type": ["integer", "null"], "description": "Unix ms"},
        "updated_at": {"type": ["integer", "null"], "description": "Unix ms"},
        "transitions": {"type": "array", "items": _TRANSITION},
        "deliveries": {"type": "array", "items": _DELIVERY},
        "files": {"type": "array", "items": _FILE},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
        for c in codes
    }


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(*names: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": t}} for n, t in names]


@cache
def openapi_document(registration: type[BaseModel], redelivery: type[BaseModel]) -> dict[str, Any]:
    """The whole document; ``registration`` is the ``POST /tasks`` body model, ``redelivery``
    the ``POST /deliveries/redeliver`` one."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "kling-hooks", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/callbacks/{external_task_id}/{token}": {
                "post": {
                    "summary": "Receive a Kling callback (bare task, envelope or old schema)",
                    "requestBody": {
                        "content": {"application/json": {"schema": TaskObject.model_json_schema()}}
                    },
                    "responses": {"200": _json(_VERDICT), **_errors(400, 401, 409, 413, 422, 503)},
                }
            },
            "/tasks": {
                "get": {
                    "summary": "List tasks, newest first",
                    "security": bearer,
                    "parameters": _query(
                        ("task_status", "string"),
                        ("route", "string"),
                        ("limit", "integer"),
                        ("cursor", "string"),
                    ),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "tasks": {"type": "array", "items": _TASK},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        ),
                        **_errors(400, 401, 503),
                    },
                },
                "post": {
                    "summary": "Register a submission (the submitter calls this)",
                    "security": bearer,
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": registration.model_json_schema()}
                        }
                    },
                    "responses": {"200": _json(_VERDICT), **_errors(400, 401, 409, 413, 422)},
                },
            },
            "/tasks/{id}": {
                "get": {
                    "summary": "One task by task_id or external_task_id",
                    "security": bearer,
                    "responses": {"200": _json(_TASK), **_errors(401, 404, 503)},
                }
            },
            "/deliveries": {
                "get": {
                    "summary": "List deliveries to plugins, newest first",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"enum": [s.value for s in DeliveryState]},
                        },
                        *_query(("plugin", "string"), ("limit", "integer"), ("cursor", "string")),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "deliveries": {"type": "array", "items": _LISTED_DELIVERY},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        ),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/deliveries/{id}/redeliver": {
                "post": {
                    "summary": "Replay one delivery (not while it runs)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {"200": _json(_REDELIVERED), **_errors(401, 404, 409, 503)},
                }
            },
            "/deliveries/redeliver": {
                "post": {
                    "summary": "Replay every delivery matching a filter (default: the dead ones)",
                    "security": bearer,
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": redelivery.model_json_schema()}},
                    },
                    "responses": {"200": _json(_REDELIVERED), **_errors(400, 401, 413, 422, 503)},
                }
            },
            "/plugins": {
                "get": {
                    "summary": "The enabled plugins, secrets masked",
                    "security": bearer,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"plugins": {"type": "array", "items": _PLUGIN}},
                            }
                        ),
                        **_errors(401, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is up",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "The database answers",
                    "responses": {"200": _json({"type": "object"}), **_errors(503)},
                }
            },
        },
    }
