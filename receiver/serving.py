"""Run ASGI apps under uvicorn: :class:`Server` (``kling-hooks serve``), and :func:`running`
inside an already running event loop (demo, tests).

The listening socket is bound and listening before uvicorn starts, so clients may connect at
once: their connections wait in the backlog until the app's start-up is done. Nothing polls
for readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog
import uvicorn
from starlette.types import ASGIApp

from receiver.config import Settings
from receiver.limits import ConnectionEvent, ConnectionLimits, header_timeout_protocol
from receiver.requests import BODY_RECEIVED
from receiver.services import Services

log = structlog.get_logger("kling_hooks.serving")

#: On a stop, how long requests in progress may take to finish before they are cut, seconds
#: (a callback takes milliseconds; a long ``POST /prune`` stops between its batches). With
#: :data:`FIRST_REQUEST_GRACE_S` and ``KLING_HOOKS_SHUTDOWN_GRACE_S`` (10 s) it stays within
#: the unit's ``TimeoutStopSec=30``.
REQUEST_DRAIN_S = 10


def _count(app_state: dict[str, object], event: ConnectionEvent) -> None:
    found = app_state.get("services")
    if isinstance(found, Services):
        count = {
            ConnectionEvent.HEADER_TIMEOUT: found.metrics.header_timed_out,
            ConnectionEvent.HEADER_TOO_LARGE: found.metrics.header_too_large,
            ConnectionEvent.NEAR_FD_LIMIT: found.metrics.near_fd_limit,
        }
        count[event]()


def receiver_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments of a receiver (``serve``, the demo, tests), as a dict
    of keyword arguments: the header deadline and size limit (``KLING_HOOKS_HEADER_TIMEOUT_S``,
    ``KLING_HOOKS_MAX_HEADER_BYTES``) and the warning near the file descriptor limit, all
    counted in the metrics (:func:`receiver.limits.header_timeout_protocol`); how long an idle
    keep-alive connection stays open (``KLING_HOOKS_KEEP_ALIVE_S``); the proxies whose
    ``X-Forwarded-For`` is trusted (``KLING_HOOKS_FORWARDED_ALLOW_IPS``), the drain time of a
    stop (:data:`REQUEST_DRAIN_S`), and uvicorn's access log only with
    ``KLING_HOOKS_ACCESS_LOG`` (callback tokens masked: ``receiver.logging``)."""
    limits = ConnectionLimits(
        header_timeout_s=settings.kling_hooks_header_timeout_s,
        max_header_bytes=settings.kling_hooks_max_header_bytes,
        max_connections=ConnectionLimits.fd_budget(),
    )
    return {
        "http": header_timeout_protocol(limits, _count, body_received=BODY_RECEIVED),
        "timeout_keep_alive": settings.kling_hooks_keep_alive_s,
        "timeout_graceful_shutdown": REQUEST_DRAIN_S,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.kling_hooks_forwarded_allow_ips,
        "access_log": settings.kling_hooks_access_log,
        "log_config": None,
    }


#: How long a stop waits, at most, for connections already accepted to send their request.
FIRST_REQUEST_GRACE_S = 1.0


class Server(uvicorn.Server):
    """uvicorn's server, whose stop answers every connection it has accepted.

    uvicorn's own shutdown stops accepting and, in the same step, closes every connection that
    has no request in progress, including one accepted a moment ago whose request is still in
    the kernel's buffer: its client sees the connection closed with no answer. On a socket
    that outlives the process (socket activation, ``receiver.activation``) such a client would
    otherwise have been answered by the next process. So this server first stops accepting
    (new connections stay queued in the kernel for the next process), then waits until each
    accepted connection has read the headers of the request it has begun (a new connection,
    or a keep-alive one whose next request's first bytes are in), for at most
    :data:`FIRST_REQUEST_GRACE_S` seconds (a client that connects and sends nothing is closed
    after that; a second SIGINT ends the wait, as it ends uvicorn's), then runs uvicorn's
    shutdown (requests in progress finish within :data:`REQUEST_DRAIN_S`, then the app's
    lifespan ends). An idle keep-alive connection is closed at once, as HTTP allows; a client
    that sends on it at that very moment sees it closed, which is why the README's proxy
    examples do not keep connections to the receiver open.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop as the class docstring says; ``sockets`` as :meth:`uvicorn.Server.shutdown`.

        A receiver's writer is told first (``Writer.request_stop``), so that a long
        ``POST /prune`` ends at its next batch rather than holding the stop, and its live feed
        is closed, which ends the dashboard's open event streams."""
        found = getattr(getattr(self, "lifespan", None), "state", {}).get("services")
        if isinstance(found, Services):
            log.info("receiver_stopping")
            found.writer.request_stop()
            found.feed.close()  # the dashboard's event streams end, so the drain need not wait
        for listener in self.servers:
            listener.close()  # closes this process's fd only; the kernel keeps the queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FIRST_REQUEST_GRACE_S
        await asyncio.sleep(0)  # connections accepted just now get their protocol
        # uvicorn's HTTP protocols set ``cycle`` once a request's headers are in; it signals
        # nothing then, so this looks every 10 ms, during a stop only (uvicorn's own stop
        # looks every 100 ms).
        waiting = self._awaiting_request
        while waiting() and loop.time() < deadline and not self.force_exit:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    def _awaiting_request(self) -> bool:
        """Whether a connection is open whose request has begun but not been read yet: a new
        connection, or a keep-alive one with the next request's first bytes in
        (``awaiting_request`` of :func:`receiver.limits.header_timeout_protocol`'s protocol;
        another protocol: a connection whose first request has not begun)."""
        return any(_awaiting(c) for c in self.server_state.connections)


def _awaiting(connection: object) -> bool:
    flag = getattr(connection, "awaiting_request", None)
    if isinstance(flag, bool):
        return flag
    return getattr(connection, "cycle", True) is None


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 = a free port) and listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def running(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    sock: socket.socket | None = None,
    options: Mapping[str, Any] | None = None,
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (or on ``sock``, from :func:`listen`) while the block
    runs; yields the base URL. The socket is closed afterwards.

    uvicorn's access log is off: it would print callback URLs, which carry tokens.
    ``options`` are more ``uvicorn.Config`` arguments (:func:`receiver_options`).
    """
    sock = sock or listen(host, port)
    host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        **{"log_level": log_level, "access_log": False, **(options or {})},
        lifespan="on",
    )
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
