"""Run ASGI apps under uvicorn inside an already running event loop (demo, tests).

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

import uvicorn
from starlette.types import ASGIApp

from receiver.config import Settings
from receiver.limits import header_timeout_protocol


def receiver_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings of a receiver (``serve``, the demo, tests): the header deadline
    (``KLING_HOOKS_HEADER_TIMEOUT_S``), the proxies whose ``X-Forwarded-For`` is trusted
    (``KLING_HOOKS_FORWARDED_ALLOW_IPS``), and no access log (it would print callback URLs,
    which carry tokens)."""
    return {
        "http": header_timeout_protocol(settings.kling_hooks_header_timeout_s),
        "proxy_headers": True,
        "forwarded_allow_ips": settings.kling_hooks_forwarded_allow_ips,
        "access_log": False,
        "log_config": None,
    }


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
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
