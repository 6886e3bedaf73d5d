"""A local HTTP target for tests: Slack, a webhook receiver or a file server on 127.0.0.1.

It answers from a script (a status, a body, headers, an endless body, or a hang) and records
every request; tests wait on :meth:`Sink.wait_for` (an asyncio condition, no polling). Hanging
answers and endless bodies are released when the sink stops, so the server can shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.serving import running


@dataclass(frozen=True)
class Answer:
    """One scripted answer. ``hang=True`` never answers (until the sink stops);
    ``endless=True`` sends ``body`` over and over (until the client leaves or the sink stops).
    """

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain"
    hang: bool = False
    endless: bool = False


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class Sink:
    """Scripted answers per request, in order (then ``default``); ``files`` serves GETs."""

    def __init__(self, default: Answer | None = None) -> None:
        self.default = default or Answer()
        self.script: list[Answer] = []
        self.files: dict[str, Answer] = {}
        self.requests: list[Recorded] = []
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self.url = ""
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "HEAD"])]
        )

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests with ``answers``, in order."""
        self.script.extend(answers)

    def serve_file(self, path: str, content: bytes, content_type: str) -> str:
        """Serve ``content`` at ``path`` (starting with ``/``); returns its full URL."""
        self.files[path] = Answer(200, content, content_type=content_type)
        return f"{self.url}{path}"

    async def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Recorded]:
        """Wait until at least ``count`` requests arrived; returns them all."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.requests) >= count), timeout_s
            )
        return list(self.requests)

    async def _handle(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:  # the sender went away (a receiver killed mid-request)
            return Response(status_code=400)
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body)
        )
        async with self._changed:
            self._changed.notify_all()
        if request.url.path in self.files and not self.script:
            answer = self.files[request.url.path]
        else:
            answer = self.script.pop(0) if self.script else self.default
        if answer.hang:
            await self._released.wait()
            return Response(b"released", status_code=503)
        if answer.endless:
            return StreamingResponse(
                self._repeat(answer.body),
                status_code=answer.status,
                headers=answer.headers,
                media_type=answer.content_type,
            )
        return Response(
            answer.body,
            status_code=answer.status,
            headers=answer.headers,
            media_type=answer.content_type,
        )

    async def _repeat(self, chunk: bytes) -> AsyncIterator[bytes]:
        while not self._released.is_set():
            yield chunk
            await asyncio.sleep(0)

    def release(self) -> None:
        self._released.set()


@contextlib.asynccontextmanager
async def start_sink(default: Answer | None = None) -> AsyncIterator[Sink]:
    """Run a :class:`Sink` under uvicorn on a free loopback port while the block runs."""
    sink = Sink(default)
    async with running(sink.app) as url:
        sink.url = url
        try:
            yield sink
        finally:
            sink.release()
