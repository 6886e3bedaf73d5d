"""Files the dashboard serves: the saved results (``GET /ui/files/{id}``) and its own static
assets (``/ui/static/``).

A saved file is named only by its ``files.id``: the path comes from the record that the
downloader (or another plugin) wrote, never from the request, and the ``Content-Type`` is
the recorded one (``application/octet-stream`` when none was recorded), with
``X-Content-Type-Options: nosniff``. Only images, videos and audio are shown inline; anything
else is an attachment, and every file answer carries ``Content-Security-Policy: sandbox``.
Range requests are served (a ``<video>`` seeks with them).
"""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from receiver.errors import Refused
from receiver.models import MAX_ROW_ID
from receiver.services import services
from receiver.ui.dashboard import Dashboard

#: ``Cache-Control`` of the static assets; their URLs carry the version (``?v=0.2.0``).
STATIC_CACHE = "public, max-age=86400"
_INLINE = ("image/", "video/", "audio/")


async def saved_file(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/files/{id}``: one saved file (404 when the id names none, or its file is
    no longer on disk; 401 signed out)."""
    raw = request.path_params["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) < 20 and int(raw) <= MAX_ROW_ID):
        raise Refused(f"no saved file with id {raw[:40]!r}", 404)
    found = await services(request).dashboard.file(int(raw))
    if found is None:
        raise Refused(f"no saved file with id {raw}", 404)
    if not await asyncio.to_thread(os.path.isfile, found.path):
        raise Refused(f"saved file {raw} is no longer on disk", 404)
    media_type = found.content_type or "application/octet-stream"
    disposition = "inline" if media_type.startswith(_INLINE) else "attachment"
    return FileResponse(
        found.path,
        media_type=media_type,
        content_disposition_type=disposition,
        filename=os.path.basename(found.path),
        headers={
            "Cache-Control": "private, max-age=3600",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


class CachedStatic:
    """The package's ``static/`` folder, with :data:`STATIC_CACHE` on every answer."""

    def __init__(self) -> None:
        self.files = StaticFiles(packages=[("receiver.ui", "static")])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def cached(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                headers = [*message.get("headers", ()), (b"cache-control", STATIC_CACHE.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.files(scope, receive, cached)
