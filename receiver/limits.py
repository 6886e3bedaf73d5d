"""Backpressure and slow-client limits: what keeps a burst or a slow sender from holding the
receiver's workers or memory.

- :class:`InFlightLimit` (ASGI middleware): at most ``KLING_HOOKS_MAX_IN_FLIGHT`` requests are
  handled at once. Past it the answer is 503 with ``Retry-After`` (``KLING_HOOKS_RETRY_AFTER_S``)
  and ``{"ok": false, "error": "..."}``, before any of the body is read: memory stays below
  about ``max_in_flight * KLING_HOOKS_MAX_BODY_BYTES``. A 503 is what Kling's sender and any
  HTTP client treat as "try again"; nothing was stored.
- :func:`header_timeout_protocol`: uvicorn's HTTP protocol with a deadline for the request
  line and headers (``KLING_HOOKS_HEADER_TIMEOUT_S``), from the connection's start or from a
  keep-alive request's first byte. uvicorn itself has none: a client that connects and sends
  nothing, or a header a byte a minute, would hold the connection for ever. Past the deadline
  the answer is 408 and the connection is closed.
- The body deadline (``KLING_HOOKS_BODY_TIMEOUT_S``) is :func:`receiver.requests.read_bounded`'s
  ``timeout_s``: 408 when the whole body has not arrived in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.models import ErrorAnswer

__all__ = ["InFlightLimit", "header_timeout_protocol"]


class InFlightLimit:
    """ASGI middleware: answer 503 to an HTTP request while ``limit`` others are handled.

    Args:
        app: The app to protect.
        limit: Most requests handled at once (>= 1).
        retry_after_s: The ``Retry-After`` of the 503, seconds.
        on_refused: Called with the scope of each request refused (the metrics count it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        retry_after_s: int,
        on_refused: Callable[[Scope], None] = lambda scope: None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.on_refused = on_refused
        self.in_flight = 0
        message = f"too many requests in flight (over {limit}), retry later"
        self._body = ErrorAnswer(error=message).model_dump_json().encode()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.on_refused(scope)
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _timeout_answer() -> bytes:
    body = ErrorAnswer(error="request headers not received in time").model_dump_json()
    return (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
        f"{body}"
    ).encode()


_TIMEOUT_ANSWER = _timeout_answer()


def header_timeout_protocol(
    timeout_s: float, on_expired: Callable[[dict[str, object]], None] = lambda state: None
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request line and headers take
    longer than ``timeout_s`` seconds (with a 408 answer); pass it as uvicorn's ``http=``.

    Args:
        timeout_s: The deadline, from the connection's start or a request's first byte.
        on_expired: Called with the app's lifespan state (``{"services": ...}``) for each
            connection closed so (the metrics count them).

    The protocol's ``awaiting_request`` says whether a request has begun (or the connection
    is new) and its headers are not all in: a graceful stop waits for those
    (``receiver.serving.Server``), since uvicorn's own stop would close them unanswered.
    """

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        @property
        def awaiting_request(self) -> bool:
            return self._header_deadline is not None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expired(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            on_expired(self.app_state)
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # An earlier (pipelined) request's answer is still being sent: let it end,
                # then close, rather than write into the middle of it.
                cycle.keep_alive = False
                return
            self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()

    return HeaderTimeoutProtocol
