"""The ceiling: a bare Starlette app that does what an HTTP endpoint must and nothing more, run
exactly as ``kling-hooks serve`` runs the receiver.

Routes:

- ``POST /callbacks/{external_task_id}/{token}``: parses the JSON body (``json.loads``) and
  answers ``{"ok": true, "verdict": "new"}``: no token check, no storage;
- ``GET /tasks/{id}`` and ``GET /tasks``: check ``Authorization: Bearer`` against
  :data:`~bench.workload.API_TOKEN` (``hmac.compare_digest``, 401 otherwise) and answer a
  fixed JSON document of the size the receiver's answer has (``--docs FILE``: a JSON object
  ``{"task": {...}, "page": {...}}``, serialised again on every request);
- ``GET /healthz`` and ``GET /readyz``: ``ok``.

Server: ``uvicorn.Config(app, **receiver.serving.receiver_options(settings))`` under
``receiver.serving.Server``, with the same host, log level and settings as ``kling-hooks
serve`` (receiver/cli/servers.py): uvloop, the receiver's httptools protocol with its header
deadline and size limit, ``KLING_HOOKS_KEEP_ALIVE_S``, uvicorn's default backlog (2048), no
access log. So a ratio to the ceiling measures the receiver's own work per request, not the
server settings.

    python bench/ceiling.py --port 8765 [--docs docs.json]
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bench.workload import API_TOKEN

#: Answered by ``GET /tasks/{id}`` and ``GET /tasks`` when no ``--docs`` file is given.
DEFAULT_DOCS: dict[str, Any] = {
    "task": {"task_id": "0"},
    "page": {"tasks": [], "next_cursor": None},
}


def create_app(docs: dict[str, Any]) -> Starlette:
    """The ceiling app; ``docs`` as the module docstring says."""
    expected = f"Bearer {API_TOKEN}".encode()

    def authorized(request: Request) -> bool:
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def callback(request: Request) -> Response:
        json.loads(await request.body())
        return JSONResponse({"ok": True, "verdict": "new"})

    async def task(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"ok": False, "error": "unauthorized"}, 401)
        return JSONResponse(docs["task"])

    async def tasks(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"ok": False, "error": "unauthorized"}, 401)
        return JSONResponse(docs["page"])

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/callbacks/{ext:path}/{token}", callback, methods=["POST"]),
            Route("/tasks/{id}", task),
            Route("/tasks", tasks),
            Route("/readyz", ok),
            Route("/healthz", ok),
        ]
    )


def command(port: int, docs: Path | None = None) -> list[str]:
    """The command line that serves the ceiling on 127.0.0.1:``port`` (this interpreter)."""
    found = [sys.executable, str(Path(__file__).resolve()), "--port", str(port)]
    return found + (["--docs", str(docs)] if docs is not None else [])


def main(argv: list[str] | None = None) -> None:
    """Serve the ceiling until SIGTERM or SIGINT (see the module docstring)."""
    import uvicorn

    from receiver.config import Settings
    from receiver.serving import Server, receiver_options

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--docs", type=Path, help="JSON file: {task: ..., page: ...}")
    args = parser.parse_args(argv)
    docs = json.loads(args.docs.read_text()) if args.docs else DEFAULT_DOCS
    settings = Settings(kling_hooks_host="127.0.0.1", kling_hooks_port=args.port)
    config = uvicorn.Config(
        create_app(docs),
        host=settings.kling_hooks_host,
        port=settings.kling_hooks_port,
        log_level=settings.kling_hooks_log_level,
        **receiver_options(settings),
    )
    Server(config).run()


if __name__ == "__main__":
    main()
