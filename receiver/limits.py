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
  the answer is 408 and the connection is closed. The same protocol refuses a header block
  over ``KLING_HOOKS_MAX_HEADER_BYTES`` (431, closed), and warns when connections come close
  to the file descriptor limit (:class:`ConnectionLimits`).
- Idle keep-alive connections are closed by uvicorn after ``KLING_HOOKS_KEEP_ALIVE_S``
  (``receiver.serving.receiver_options``).
- The body deadline (``KLING_HOOKS_BODY_TIMEOUT_S``) is :func:`receiver.requests.read_bounded`'s
  ``timeout_s``: 408 when the whole body has not arrived in time.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.models import ErrorAnswer

__all__ = ["ConnectionEvent", "ConnectionLimits", "InFlightLimit", "header_timeout_protocol"]

log = structlog.get_logger("kling_hooks.limits")


class InFlightLimit:
    """ASGI middleware: answer 503 to an HTTP request while ``limit`` others are handled.

    Args:
        app: The app to protect.
        limit: Most requests handled at once (>= 1).
        retry_after_s: The ``Retry-After`` of the 503, seconds.
        on_refused: Called with the scope of each request refused (the metrics count it).
        request_id: The request id of a refused request's scope, sent as ``X-Request-ID``
            (``receiver.request_ids.choose_request_id``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        retry_after_s: int,
        on_refused: Callable[[Scope], None] = lambda scope: None,
        request_id: Callable[[Scope], str] = lambda scope: "-",
    ) -> None:
        self.app = app
        self.request_id = request_id
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
            headers = [*self._headers, (b"x-request-id", self.request_id(scope).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class _LingeringClose:
    """A request cycle's view of its connection's transport: ``close()`` half-closes (no more
    is written; what the client still sends is read and dropped) and closes fully after
    :data:`LINGER_S` (RFC 9112 section 9.6), so that an answer sent before the request's
    body ended is not destroyed by a reset. Everything else is the transport's."""

    __slots__ = ("_loop", "_transport", "is_closing", "write")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self.write = transport.write
        self.is_closing = transport.is_closing

    def close(self) -> None:
        if self._transport.is_closing():
            return
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._loop.call_later(LINGER_S, self._transport.close)


def _answer(status: str, error: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection: ``status`` ("408 Request
    Timeout") and the error shape's body."""
    body = ErrorAnswer(error=error).model_dump_json()
    return (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
        f"{body}"
    ).encode()


_TIMEOUT_ANSWER = _answer("408 Request Timeout", "request headers not received in time")
#: After a 431 the client may still be sending its header block: what arrives is read and
#: dropped for at most this long, seconds, so that the answer is not lost to a TCP reset
#: (closing with unread bytes resets the connection; nginx's ``lingering_close`` does this).
LINGER_S = 1.0
#: The share of ``RLIMIT_NOFILE``'s soft limit that client connections may hold before they
#: are warned about (:class:`ConnectionLimits`); the rest is for the database and its WAL,
#: plugins' HTTP connections (httpx pools up to 100 each) and the event loop's own.
FD_BUDGET_SHARE = 7 / 8
#: At most one ``connections_near_fd_limit`` warning per this many seconds.
FD_WARNING_INTERVAL_S = 60.0


class ConnectionEvent(StrEnum):
    """What :func:`header_timeout_protocol` reports to its ``on_event``."""

    HEADER_TIMEOUT = "header_timeout"  # 408 and closed: headers too slow
    HEADER_TOO_LARGE = "header_too_large"  # 431 and closed: header block too large
    NEAR_FD_LIMIT = "near_fd_limit"  # a connection accepted past ``max_connections``


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits of one connection, and of the connections together.

    Attributes:
        header_timeout_s: Seconds for a request line and headers, from the connection's start
            or a request's first byte (``KLING_HOOKS_HEADER_TIMEOUT_S``).
        max_header_bytes: Most bytes of a request line and headers
            (``KLING_HOOKS_MAX_HEADER_BYTES``).
        max_connections: Open connections past which each new one is reported (usually
            :meth:`fd_budget`).
    """

    header_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @staticmethod
    def fd_budget() -> int:
        """:data:`FD_BUDGET_SHARE` of this process's soft ``RLIMIT_NOFILE`` (at least 1); an
        unlimited soft limit counts as 1,048,576."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft = 1 << 20 if soft == resource.RLIM_INFINITY else soft
        return max(1, int(soft * FD_BUDGET_SHARE))


def header_timeout_protocol(
    limits: ConnectionLimits,
    on_event: Callable[[dict[str, object], ConnectionEvent], None] = lambda state, event: None,
    *,
    body_received: str | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with limits on request headers; pass it as uvicorn's
    ``http=``.

    - A request line and headers that take longer than ``limits.header_timeout_s`` (from the
      connection's start, a request's first byte, or any byte on an idle keep-alive
      connection): 408, and the connection is closed.
    - A request line and headers over ``limits.max_header_bytes``: 431 Request Header
      Fields Too Large, and the connection is closed. httptools and uvicorn have no such
      limit: a header block grows in memory until the header deadline (a 20 MB one cost
      22 MB). Bytes are counted per read (a read is at most 256 KiB): the refusal comes
      within a read of the limit.
    - A connection accepted while more than ``limits.max_connections`` are open (file
      descriptors about to run out): counted, and logged at warning
      (``connections_near_fd_limit``) at most once a minute. Past the limit, uvloop (libuv,
      the default loop) accepts and at once closes each new connection and logs nothing;
      asyncio's loop logs an error and stops accepting for a second.

    Args:
        limits: The limits.
        on_event: Called with the app's lifespan state (``{"services": ...}``) and the event,
            for each connection closed or reported so (the metrics count them).
        body_received: A scope key set to True once the request's whole body has arrived
            (``receiver.requests.BODY_RECEIVED``: reading it then needs no deadline).

    The protocol's ``awaiting_request`` says whether a request has begun (or the connection
    is new) and its headers are not all in: a graceful stop waits for those
    (``receiver.serving.Server``), since uvicorn's own stop would close them unanswered.
    """
    too_large = _answer(
        "431 Request Header Fields Too Large",
        f"request line and headers are over {limits.max_header_bytes} bytes",
    )
    last_warning_s = -FD_WARNING_INTERVAL_S  # loop time of the last fd warning

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _headers_done = False  # set by on_headers_complete during one data_received
        _dropping = False  # after a 431: what arrives is dropped until the connection ends
        _in_message = False  # between a request's first byte and its body's last
        # The cycle's keep_alive while its body is still arriving (None: nothing held)
        _held_keep_alive: bool | None = None

        @property
        def awaiting_request(self) -> bool:
            return self._header_deadline is not None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()
            if len(self.connections) > limits.max_connections:
                on_event(self.app_state, ConnectionEvent.NEAR_FD_LIMIT)
                self._warn_near_fd_limit()

        def data_received(self, data: bytes) -> None:
            if self._dropping:
                return
            awaiting = self._header_deadline is not None
            if self.timeout_keep_alive_task is not None and not self._in_message:
                # Any byte on an idle keep-alive connection starts the header deadline
                # (uvicorn's keep-alive timer stops here, and a byte such as the CRLF that
                # HTTP allows before a request begins no message). Not the rest of a body
                # answered early (a 413): those bytes are no header, nor the next request's.
                self._arm()
            self._headers_done = False
            super().data_received(data)
            if self._headers_done:
                self._header_bytes = 0
            elif awaiting and self._header_deadline is not None:
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse_too_large()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_message = True
            self._arm()

        def on_message_complete(self) -> None:
            self._in_message = False
            if body_received is not None:
                self.scope[body_received] = True  # type: ignore[literal-required]
            super().on_message_complete()
            cycle, held = self.cycle, self._held_keep_alive
            self._held_keep_alive = None
            if cycle is not None and held is not None and not cycle.response_started:
                cycle.keep_alive = held  # the body is in: an answer may keep the connection
                cycle.transport = self.transport

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._in_message and not self.transport.is_closing():
                # Answered before its body was all read (401, 413): no deadline is left to
                # close the connection (the body's ended with the handler, and what still
                # comes is no header), so it closes now, the rest of the body dropped.
                self._disarm()
                self._dropping = True
                if self.timeout_keep_alive_task is not None:
                    self.timeout_keep_alive_task.cancel()
                    self.timeout_keep_alive_task = None
                self.transport.write_eof()
                self.loop.call_later(LINGER_S, self.transport.close)

        def on_headers_complete(self) -> None:
            self._disarm()
            self._headers_done = True
            super().on_headers_complete()
            # An answer sent before the body has all arrived (a 401, a 413) ends the
            # connection, so it must say so: uvicorn adds "Connection: close" while
            # keep_alive is off, and a client then does not send its next request into a
            # closing connection. on_message_complete turns it back. uvicorn closes such a
            # connection at once, which resets it while the client is still sending the
            # body (the answer can be lost): the cycle's transport closes it as
            # on_response_complete does instead, half first, then after LINGER_S.
            cycle = self.cycle
            if cycle is not None:
                self._held_keep_alive, cycle.keep_alive = cycle.keep_alive, False
                cycle.transport = cast(
                    asyncio.Transport, _LingeringClose(self.transport, self.loop)
                )

        def shutdown(self) -> None:
            self._held_keep_alive = None  # a stop's "no keep-alive" stays
            super().shutdown()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_deadline is None:
                self._header_deadline = self.loop.call_later(limits.header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _expired(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing():
                return
            on_event(self.app_state, ConnectionEvent.HEADER_TIMEOUT)
            if self._answering():
                return
            self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()

        def _refuse_too_large(self) -> None:
            self._disarm()
            self._dropping = True
            on_event(self.app_state, ConnectionEvent.HEADER_TOO_LARGE)
            if self._answering():
                self.flow.pause_reading()
                return
            self.transport.write(too_large)
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def _answering(self) -> bool:
            """Whether an earlier (pipelined) request's answer is still being sent: then it
            is let end and the connection closes after it, rather than be written into."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
                return True
            return False

        def _warn_near_fd_limit(self) -> None:
            nonlocal last_warning_s
            now = self.loop.time()
            if now - last_warning_s >= FD_WARNING_INTERVAL_S:
                last_warning_s = now
                log.warning(
                    "connections_near_fd_limit",
                    connections=len(self.connections),
                    max_connections=limits.max_connections,
                    fd_soft_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    detail="raise LimitNOFILE (ulimit -n); past it new connections are"
                    " closed unanswered",
                )

    return HeaderTimeoutProtocol
