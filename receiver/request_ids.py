"""Request ids: every line our code logs while a request is handled carries its
``request_id``.

:class:`RequestIds` (ASGI middleware) takes the caller's ``X-Request-ID`` when it is a plain
token (1 to 64 of ``A-Z a-z 0-9 - _ .``: a reverse proxy's id, so its log and ours can be
joined), else makes one (16 hex digits), keeps it in the request's state
(``request.state.request_id``), and sends it back as ``X-Request-ID``. Handlers log through
:func:`request_log`, a logger bound to it; they bind more as they learn it (the callback
endpoint: ``external_task_id``, then ``task_id``).

Not context variables: a ``ContextVar`` set in a request's task made every callback about
10 µs dearer under uvloop (bench/, same-run ratios), and only the handlers' lines need the id.
"""

from __future__ import annotations

import random
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import FilteringBoundLogger

__all__ = ["RequestIds", "choose_request_id", "request_log"]

_GIVEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def choose_request_id(scope: Scope) -> str:
    """The request id of an HTTP scope: its ``X-Request-ID`` when that is a plain token (1 to
    64 of ``A-Z a-z 0-9 - _ .``), else 16 new hex digits."""
    given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
    text = given.decode("latin-1")
    # Not a secret: an id to join log lines by, so the cheap generator does.
    return text if _GIVEN.match(text) else f"{random.getrandbits(64):016x}"


class RequestIds:
    """ASGI middleware: a request id per HTTP request, in the request's state and the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_log(request: Request, logger: Any, **fields: Any) -> FilteringBoundLogger:
    """``logger`` bound to ``request``'s ``request_id`` (None outside :class:`RequestIds`)
    and ``fields``."""
    bound: FilteringBoundLogger = logger.bind(
        request_id=getattr(request.state, "request_id", None), **fields
    )
    return bound
