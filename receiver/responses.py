"""The one JSON shape of every answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": str}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def ok(status_code: int = 200, **fields: Any) -> JSONResponse:
    """``{"ok": true, **fields}`` with ``status_code``."""
    return JSONResponse({"ok": True, **fields}, status_code=status_code)


def error(status_code: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"ok": false, "error": message}`` with ``status_code``."""
    return JSONResponse({"ok": False, "error": message}, status_code=status_code, headers=headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path 404, wrong method 405) in the same shape."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Last resort for a bug: still the one JSON shape (callbacks never get here)."""
    return error(500, "internal error")
