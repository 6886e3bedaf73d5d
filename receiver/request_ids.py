"""Request ids: every log line written while a request is handled carries its ``request_id``.

:class:`RequestIds` (ASGI middleware) takes the caller's ``X-Request-ID`` when it is a plain
token (1 to 64 of ``A-Z a-z 0-9 - _ .``: a reverse proxy's id, so its log and ours can be
joined), else makes one (16 hex digits), binds it in structlog's context variables for the
request's task, and sends it back as ``X-Request-ID``. Handlers bind more as they learn it
(the callback endpoint: ``external_task_id``, then ``task_id``).
"""

from __future__ import annotations

import re
import secrets

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIds"]

_GIVEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIds:
    """ASGI middleware: a request id per HTTP request, in the logs and in the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        request_id = given if _GIVEN.match(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        # Each request runs in its own task (uvicorn), so its context variables are its own.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.clear_contextvars()
