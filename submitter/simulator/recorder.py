"""Recording every request the simulator receives, before it is handled.

Tests read ``Simulator.requests`` to see exactly what a client sent: method, path, query,
headers and JSON body, in arrival order, including requests the simulator refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class RecordedRequest:
    """One request the simulator received, recorded before it was handled.

    Attributes:
        method: ``"POST"``, ``"GET"``...
        path: The URL path, e.g. ``"/kling/v1/images/generations"``.
        query: The raw query string, ``""`` when none.
        headers: Header names lower-cased; the last value wins when a name repeats.
        json: The parsed JSON body, or None when the body was empty or not JSON.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any


class Recorder:
    """ASGI middleware: reads each HTTP request's body, records the request, then replays it.

    Args:
        app: The wrapped ASGI app.
        sink: Receives one :class:`RecordedRequest` per HTTP request.
    """

    def __init__(self, app: ASGIApp, sink: list[RecordedRequest]) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        self.sink.append(
            RecordedRequest(scope["method"], scope["path"], query, headers, _json_or_none(body))
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive) -> bytes:
    """Every ``http.request`` chunk, joined; stops early at any other message."""
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return bytes(body)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None
