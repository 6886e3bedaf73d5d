"""Request ids: every log line written while a request is handled carries its ``request_id``.

:class:`RequestIds` (ASGI middleware) takes the caller's ``X-Request-ID`` when it is a plain
token (1 to 64 of ``A-Z a-z 0-9 - _ .``: a reverse proxy's id, so its log and ours can be
joined), else makes one (16 hex digits), binds it in structlog's context variables for the
request's task, and sends it back as ``X-Request-ID``. Handlers bind more as they learn it
(the callback endpoint: ``external_task_id``, then ``task_id``).
"""

from __future__ import annotations

import random
import re

import structlog
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
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        # Not a secret: an id to join log lines by, so the cheap generator does.
        request_id = text if _GIVEN.match(text) else f"{random.getrandbits(64):016x}"
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        # Each request runs in a task of its own (uvicorn), with its own copy of the context
        # variables: what is bound here goes with that task and no other.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:  # (bound_contextvars would copy the whole context twice per request)
            structlog.contextvars.reset_contextvars(**bound)
