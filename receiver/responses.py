"""The one JSON shape of every answer: a model of ``receiver.models`` (``{"ok": true, ...}``
or a page), or :class:`~receiver.models.ErrorAnswer` (``{"ok": false, "error": str}``).

The status API's two hottest reads come as JSON text already, rendered by the store from the
same models' fields (``receiver.store.reads``); :func:`respond_json` sends such text."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from receiver.models import ErrorAnswer


def respond(
    model: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``model`` as JSON with ``status_code``."""
    return Response(
        model.model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def respond_json(text: str) -> Response:
    """200 with ``text``, the JSON of a model of ``receiver.models`` rendered by the store."""
    return Response(text, media_type="application/json")


def error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """``{"ok": false, "error": message}`` with ``status_code``.

    A 408 (the body did not arrive in time) also says ``Connection: close``, and uvicorn
    closes the connection after it: the rest of the body may still come, and would otherwise
    keep the connection open after its deadline (uvicorn's keep-alive timer does not run while
    bytes arrive)."""
    if status_code == 408:
        headers = {**(headers or {}), "Connection": "close"}
    return respond(ErrorAnswer(error=message), status_code, headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path 404, wrong method 405) in the same shape."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a bug: still the one JSON shape (callbacks never get here)."""
    return error(500, "internal error")
