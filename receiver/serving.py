"""Run ASGI apps under uvicorn inside an already running event loop (demo, tests).

The listening socket is bound and listening before uvicorn starts, so clients may connect at
once: their connections wait in the backlog until the app's start-up is done. Nothing polls
for readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp


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
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (or on ``sock``, from :func:`listen`) while the block
    runs; yields the base URL. The socket is closed afterwards.

    uvicorn's access log is off: it would print callback URLs, which carry tokens.
    """
    sock = sock or listen(host, port)
    host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
