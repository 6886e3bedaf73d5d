"""The dashboard's pages (GET): the task list, one task, the deliveries, the overview.

Each reads through the status API's store and models (``Reader.task_page``,
``Reader.get_task``, ``Reader.list_deliveries``, ``Reader.backlog``) plus the dashboard's own
reads (``receiver.store.dashboard``). A query parameter that is unknown, repeated or of a
bad value is a 400 page naming it; an empty one (a form's "any") is left out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from receiver.errors import Refused
from receiver.models import (
    MAX_ROW_ID,
    DeliveryState,
    TaskPage,
    TaskSummary,
    Verdict,
)
from receiver.requests import choice, query_values, whole
from receiver.results import result_urls
from receiver.services import services
from receiver.store.dashboard import DAY_MS, MINUTE_MS
from receiver.ui import charts
from receiver.ui.dashboard import Dashboard
from submitter.protocol import Route, TaskStatus

#: Tasks or deliveries on one page; dead letters shown above the other deliveries.
PAGE_SIZE = 50
DEAD_SHOWN = 100
#: The overview's callback chart covers this many hours, its spend chart this many days.
CALLBACK_HOURS = 3
SPEND_DAYS = 30
MAX_SEARCH = 256


def _params(request: Request, known: tuple[str, ...]) -> dict[str, str]:
    """The non-empty query parameters (400 for an unknown or repeated one)."""
    return {
        k: v.strip()
        for k, v in query_values(request, known, request.url.path, skip_empty=True).items()
    }


def _whole(params: dict[str, str], name: str) -> int | None:
    return whole(params, name, 0, MAX_ROW_ID)


async def tasks(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/``: tasks newest first; ``task_status``, ``route``, ``q`` (a task_id or
    external_task_id, exactly), ``cursor``."""
    params = _params(request, ("task_status", "route", "q", "cursor", "replayed"))
    status = choice(params, "task_status", TaskStatus)
    route = choice(params, "route", Route)
    cursor = _whole(params, "cursor")
    search = params.get("q")
    svc = services(request)
    rows: list[TaskSummary]
    next_cursor = None
    if search is not None:
        if len(search) > MAX_SEARCH:
            raise Refused(f"q is over {MAX_SEARCH} characters")
        found = await svc.reader.get_task(search)
        wanted = found is not None and status in (None, found.task_status)
        rows = [found] if found is not None and wanted and route in (None, found.route) else []
    else:
        page = TaskPage.model_validate_json(
            await svc.reader.task_page(
                task_status=status, route=route, limit=PAGE_SIZE, before_id=cursor
            )
        )
        rows, next_cursor = list(page.tasks), page.next_cursor
    extras = await svc.dashboard.row_extras([t.task_id for t in rows])
    return ui.render(
        request,
        "tasks.html",
        {
            "tasks": rows,
            "extras": extras,
            "next_cursor": next_cursor,
            "filters": {"task_status": status, "route": route, "q": search or ""},
            "statuses": list(TaskStatus),
            "routes": list(Route),
        },
    )


async def task(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/tasks/{id}``: one task by task_id or external_task_id (404 page if unknown)."""
    params = _params(request, ("replayed",))
    svc = services(request)
    found = await svc.reader.get_task(request.path_params["id"])
    if found is None:
        raise Refused("no task with that task_id or external_task_id", 404)
    files = await svc.dashboard.task_files(found.task_id)
    by_url = {f.url: f for f in files}
    results = [(r, by_url.get(r.url)) for r in result_urls(found.task_result or {})]
    listed = {r.url for r, _ in results}
    return ui.render(
        request,
        "task.html",
        {
            "task": found,
            "results": results,
            "other_files": [f for f in files if f.url not in listed],
            "sha256": {f.url: f.sha256 for f in found.files},
            "replayed": _whole(params, "replayed"),
            "started": svc.started_plugins(),
        },
    )


async def deliveries(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/deliveries``: ``state`` and ``plugin`` filters; without a state, the dead
    letters (up to :data:`DEAD_SHOWN`) above every other delivery, each newest first."""
    params = _params(request, ("state", "plugin", "cursor", "replayed"))
    state = choice(params, "state", DeliveryState)
    plugin = params.get("plugin")
    cursor = _whole(params, "cursor")
    reader = services(request).reader
    dead: list[object] = []
    if state is None and cursor is None:
        dead = list(
            (
                await reader.list_deliveries(
                    state=DeliveryState.DEAD, plugin=plugin, limit=DEAD_SHOWN, before_id=None
                )
            )[0]
        )
    others, next_cursor = await reader.list_deliveries(
        state=state,
        plugin=plugin,
        limit=PAGE_SIZE,
        before_id=cursor,
        other_than=DeliveryState.DEAD if state is None else None,
    )
    svc = services(request)
    names = sorted({p.name for p in svc.plugins} | ({plugin} if plugin else set()))
    return ui.render(
        request,
        "deliveries.html",
        {
            "dead": dead,
            "others": others,
            "next_cursor": next_cursor,
            "filters": {"state": state, "plugin": plugin or ""},
            "states": list(DeliveryState),
            "plugins": names,
            "replayed": _whole(params, "replayed"),
            "started": svc.started_plugins(),
        },
    )


async def overview(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/overview``: tasks by status, callbacks per minute over the last
    :data:`CALLBACK_HOURS` hours by verdict, spend per day and route over the last
    :data:`SPEND_DAYS` days, and each plugin's oldest pending delivery."""
    _params(request, ())
    svc = services(request)
    now_ms = svc.clock_ms()
    first_minute = (now_ms // MINUTE_MS - CALLBACK_HOURS * 60 + 1) * MINUTE_MS
    first_day = (now_ms // DAY_MS - SPEND_DAYS + 1) * DAY_MS
    numbers = await svc.dashboard.overview(
        callbacks_since_ms=first_minute, spend_since_ms=first_day
    )
    minutes = list(range(first_minute, now_ms + 1, MINUTE_MS))
    days = list(range(first_day, now_ms + 1, DAY_MS))
    routes = [r.value for r in Route] + ["unknown"]
    callbacks = charts.stacked(
        title=f"Callbacks per minute, last {CALLBACK_HOURS} hours, by verdict",
        buckets=minutes,
        series=[v.value for v in Verdict],
        values={(m, v): float(n) for m, v, n in numbers.callbacks},
        label=lambda ms: _utc(ms, "%H:%M"),
        unit="callbacks",
        tick_every=30,
    )
    spend = charts.stacked(
        title=f"Spend per day, last {SPEND_DAYS} days, by route (Kling units)",
        buckets=days,
        series=routes,
        values={(d, r or "unknown"): u for d, r, u, _ in numbers.spend},
        label=lambda ms: _utc(ms, "%m-%d"),
        unit="units",
        tick_every=5,
    )
    by_status = [(s.value, numbers.tasks_by_status.get(s.value, 0)) for s in TaskStatus]
    backlog = [b for b in await svc.reader.backlog() if b.oldest_pending_at is not None]
    return ui.render(
        request,
        "overview.html",
        {
            "by_status": by_status,
            "charts": [callbacks, spend],
            "backlog": sorted(backlog, key=lambda b: b.oldest_pending_at or 0),
            "spend_total": charts.number(sum(u for _, _, u, _ in numbers.spend)),
        },
    )


def _utc(ms: int, pattern: str) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime(pattern)
