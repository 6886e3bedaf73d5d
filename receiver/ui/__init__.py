"""The dashboard at ``/ui/``: tasks with their saved images and videos, the delivery backlog
with replay, the overview, live updates. On unless ``KLING_HOOKS_UI=false``.

Server-rendered HTML (Jinja2, ``templates/``), one stylesheet and one small script
(``static/``, served with ``Cache-Control``); the pages work without JavaScript, except for
the live updates. Every answer carries the headers of ``receiver.ui.rendering``
(``Content-Security-Policy``, ``X-Frame-Options: DENY``, ``Referrer-Policy``...).

Routes, all under ``/ui/``:

* ``GET /ui/``: the task list (``task_status``, ``route``, ``q``: a task_id or
  external_task_id, ``cursor``); ``GET /ui/tasks/{id}``: one task;
* ``GET /ui/deliveries``: deliveries (``state``, ``plugin``, ``cursor``), dead letters first;
* ``GET /ui/overview``: tasks by status, callbacks per minute, spend per day, oldest pending;
* ``GET /ui/events``: Server-Sent Events, ``change`` with ``{"task_ids": [...]}``;
* ``GET /ui/files/{id}``: a saved file, by ``files.id``;
* ``GET``/``POST /ui/sign-in``, ``GET /ui/sign-in/once``, ``POST /ui/sign-out``: sessions
  (``receiver.ui.sessions``);
* ``POST /ui/deliveries/{id}/replay``, ``POST /ui/deliveries/replay``: replays
  (``receiver.ui.actions``).

Signed out, a page answers 303 to the sign-in page, ``/ui/events`` and ``/ui/files/{id}``
401. Bad input gets a 4xx page naming it: 400 (a bad parameter), 403 (Origin or CSRF), 404,
409 (a delivery running or its plugin not loaded), 413 and 408 (a form's body); a database
outage 503 with ``Retry-After``.
"""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from receiver.ui import actions, assets, live, pages
from receiver.ui.dashboard import Dashboard
from receiver.ui.rendering import SecurityHeaders

__all__ = ["dashboard_routes"]


async def _to_dashboard(_request: object) -> Response:
    return RedirectResponse("/ui/", 308)


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes, to add to the receiver's app: ``/ui`` (a redirect) and the
    ``/ui/`` mount, behind :class:`~receiver.ui.rendering.SecurityHeaders`."""
    ui = Dashboard()
    page = ui.page
    routes = [
        Route("/", page(pages.tasks), methods=["GET"], name="tasks"),
        Route("/tasks/{id:path}", page(pages.task), methods=["GET"], name="task"),
        Route("/deliveries", page(pages.deliveries), methods=["GET"], name="deliveries"),
        Route("/overview", page(pages.overview), methods=["GET"], name="overview"),
        Route("/events", page(live.events, api=True), methods=["GET"], name="events"),
        Route("/files/{id}", page(assets.saved_file, api=True), methods=["GET"]),
        Route("/sign-in", page(actions.sign_in_page, signed_in=False), methods=["GET"]),
        Route("/sign-in", page(actions.sign_in, signed_in=False), methods=["POST"]),
        Route("/sign-in/once", page(actions.sign_in_once, signed_in=False), methods=["GET"]),
        Route("/sign-out", page(actions.sign_out), methods=["POST"]),
        Route("/deliveries/replay", page(actions.replay_matching), methods=["POST"]),
        Route("/deliveries/{id}/replay", page(actions.replay_one), methods=["POST"]),
        Mount("/static", app=assets.CachedStatic()),
    ]
    router = Router(routes, default=ui.not_found)
    return [
        Route("/ui", _to_dashboard, methods=["GET"]),
        Mount("/ui", app=SecurityHeaders(router), name="ui"),
    ]
