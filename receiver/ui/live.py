"""``GET /ui/events``: the dashboard's live updates, as Server-Sent Events.

The stream sleeps on a :class:`~receiver.feed.Subscription` of the receiver's live feed (fed
by the writer's commit signal and the dispatcher's outcomes) and sends, for each wake-up,
one ``change`` event whose data is ``{"task_ids": [...]}`` (``"*"`` among them: any task may
have changed). ``ui.js`` then fetches the open page again and swaps its live regions. Nothing
polls the database; a comment line every :data:`KEEP_ALIVE_S` seconds keeps proxies from
closing an idle stream. The stream ends when the client goes away or the receiver stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from receiver.errors import Refused
from receiver.feed import Subscription
from receiver.services import services
from receiver.ui.dashboard import Dashboard

KEEP_ALIVE_S = 15.0
#: How long a browser waits before reconnecting a dropped stream, milliseconds.
RETRY_MS = 2000


async def events(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/events?since=SEQ``: ``text/event-stream`` of ``change`` events (401 signed
    out; 400 when ``since`` is not a whole number). ``since`` is the feed's sequence number
    the page was rendered at (``data-events`` of its ``<body>``): a change made since comes
    at once, as ``*``."""
    feed = services(request).feed
    raw = request.query_params.get("since", "")
    if raw and not (raw.isascii() and raw.isdigit() and len(raw) < 20):
        raise Refused(f"since={raw[:40]!r} is not a whole number")
    since = int(raw) if raw else None

    async def stream() -> AsyncIterator[str]:
        with feed.subscribe(since) as sub:
            yield f"retry: {RETRY_MS}\n: connected\n\n"
            while (changed := await _next(sub)) is not None:
                if not changed:
                    yield ": keep-alive\n\n"
                    continue
                data = json.dumps({"task_ids": sorted(changed)})
                yield f"event: change\ndata: {data}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def _next(sub: Subscription) -> set[str] | None:
    """The next change set, an empty set after :data:`KEEP_ALIVE_S` quiet seconds, or None
    once the feed is closed."""
    try:
        return await asyncio.wait_for(sub.next(), KEEP_ALIVE_S)
    except TimeoutError:
        return set()
