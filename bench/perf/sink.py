"""The harness's sink: a local HTTP server standing in for Kling's file CDN, Slack and a
webhook receiver, run as its own process (``python bench/perf/sink.py --port N``).

A raw ASGI app under uvicorn (uvloop, httptools, no access log), so that it spends little of
the machine's two cores. Routes:

- ``GET /files/{anything}``: a small PNG (8 x 8 pixels, ``image/png``), the result images the
  callbacks name;
- ``GET /big/{bytes}.mp4``: ``bytes`` bytes of zeros as ``video/mp4`` with a
  ``Content-Length``, streamed in 256 KiB chunks (one buffer sent again and again, never the whole
  body in memory; uvicorn waits while the client's socket is full);
- ``POST /slack/...`` and ``POST /hook...``: the body is read and answered ``200 ok``;
- ``GET /counts``: ``{"files": n, "big": n, "slack": n, "hook": n}``, requests so far;
- ``GET /readyz``: ``ok``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CHUNK_BYTES = 256 * 1024


def create_app(png: bytes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The sink app (see the module docstring); ``png`` is the file every image URL gets."""
    counts: Counter[str] = Counter()
    zeros = bytes(CHUNK_BYTES)

    async def answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def stream(send: Send, size: int) -> None:
        headers = [(b"content-type", b"video/mp4"), (b"content-length", b"%d" % size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        left = size
        while left > 0:
            chunk = zeros if left >= CHUNK_BYTES else zeros[:left]
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "POST":
            while (await receive()).get("more_body"):
                pass
            counts["slack" if path.startswith("/slack/") else "hook"] += 1
            await answer(send, 200, b"ok", b"text/plain")
        elif path.startswith("/files/"):
            counts["files"] += 1
            await answer(send, 200, png, b"image/png")
        elif path.startswith("/big/") and path.endswith(".mp4"):
            counts["big"] += 1
            await stream(send, int(path[len("/big/") : -len(".mp4")]))
        elif path == "/counts":
            doc = {k: counts[k] for k in ("files", "big", "slack", "hook")}
            await answer(send, 200, json.dumps(doc).encode(), b"application/json")
        elif path == "/readyz":
            await answer(send, 200, b"ok", b"text/plain")
        else:
            await answer(send, 404, b"not found", b"text/plain")

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the sink on 127.0.0.1 until SIGTERM or SIGINT."""
    import uvicorn

    from submitter.media import png_bytes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(png_bytes(8, 8)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
