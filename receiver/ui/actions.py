"""What the dashboard changes: signing in and out, and replaying deliveries.

Every POST here checks ``Origin`` (403 otherwise), and every one but the sign-in carries the
session's CSRF token (403 otherwise). A form body is read bounded as every body is
(``KLING_HOOKS_MAX_BODY_BYTES``: 413; ``KLING_HOOKS_BODY_TIMEOUT_S``: 408). Replays go
through :meth:`receiver.services.Services.replay`, the operation behind
``POST /deliveries/redeliver``; the answer is a 303 back to the page, which then says how many
were replayed.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver.errors import DeliveryNotFound, DeliveryRunning, PluginNotLoaded, Refused
from receiver.models import MAX_ROW_ID, DeliveryState
from receiver.requests import read_text
from receiver.services import services
from receiver.ui.dashboard import Dashboard, local_target

log = structlog.get_logger("kling_hooks.ui")


async def _form(ui: Dashboard, request: Request, *, csrf: bool = True) -> dict[str, str]:
    """The form's fields (the last of a repeated one), after the Origin and CSRF checks.

    Raises:
        Refused: 403 (Origin, CSRF), 413, 408 or 400 (the body).
    """
    svc = services(request)
    sessions = ui.sessions(svc)
    sessions.check_origin(request)
    fields = dict(parse_qsl(await read_text(request.scope, request.receive, svc.settings)))
    if csrf:
        sessions.check_csrf(request, fields.get("csrf"))
    return fields


async def sign_in_page(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/sign-in``: the form (``next``: where to go after)."""
    target = local_target(request.query_params.get("next"))
    return ui.render(request, "sign_in.html", {"next": target, "failed": False})


async def sign_in(ui: Dashboard, request: Request) -> Response:
    """``POST /ui/sign-in``: ``secret`` (the API token or the dashboard password); 303 to
    ``next`` with the session cookie, or the form again with 401."""
    fields = await _form(ui, request, csrf=False)
    target = local_target(fields.get("next"))
    sessions = ui.sessions(services(request))
    if not sessions.accepts(fields.get("secret", "")):
        log.warning("ui_sign_in_refused", client=request.client.host if request.client else None)
        return ui.render(request, "sign_in.html", {"next": target, "failed": True}, 401)
    answer = RedirectResponse(target, 303)
    sessions.start(answer)
    return answer


async def sign_in_once(ui: Dashboard, request: Request) -> Response:
    """``GET /ui/sign-in/once?t=TOKEN``: a one-time link (``kling-hooks demo --serve``);
    303 to the task list with the session cookie, or 403 when used or expired."""
    sessions = ui.sessions(services(request))
    if not sessions.redeem(request.query_params.get("t", "")):
        raise Refused("this sign-in link was used already or has expired", 403)
    answer = RedirectResponse("/ui/", 303)
    sessions.start(answer)
    return answer


async def sign_out(ui: Dashboard, request: Request) -> Response:
    """``POST /ui/sign-out``: remove the session cookie; 303 to the sign-in page."""
    await _form(ui, request)
    answer = RedirectResponse("/ui/sign-in", 303)
    ui.sessions(services(request)).end(answer)
    return answer


async def replay_one(ui: Dashboard, request: Request) -> Response:
    """``POST /ui/deliveries/{id}/replay``: replay one delivery (404 unknown, 409 running or
    its plugin not loaded); 303 to ``back``."""
    fields = await _form(ui, request)
    raw = request.path_params["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) < 20 and int(raw) <= MAX_ROW_ID):
        raise Refused(f"no delivery with id {raw[:40]!r}", 404)
    try:
        count = await services(request).replay(delivery_id=int(raw))
    except DeliveryNotFound as exc:
        raise Refused(str(exc), 404) from None
    except (DeliveryRunning, PluginNotLoaded) as exc:
        raise Refused(str(exc), 409) from None
    log.info("deliveries_replayed", count=count, delivery_id=int(raw), via="dashboard")
    return _back(fields.get("back"), count)


async def replay_matching(ui: Dashboard, request: Request) -> Response:
    """``POST /ui/deliveries/replay``: replay every delivery matching ``state`` (default
    ``dead``; not ``running``) and ``plugin`` (409 when not loaded); 303 to ``back``."""
    fields = await _form(ui, request)
    state = fields.get("state") or DeliveryState.DEAD.value
    if state not in DeliveryState.__members__.values() or state == DeliveryState.RUNNING:
        raise Refused(f"state={state[:40]!r} cannot be replayed (dead, failed, done, pending)")
    plugin = fields.get("plugin") or None
    try:
        count = await services(request).replay(state=DeliveryState(state), plugin=plugin)
    except PluginNotLoaded as exc:
        raise Refused(str(exc), 409) from None
    log.info("deliveries_replayed", count=count, state=state, plugin=plugin, via="dashboard")
    return _back(fields.get("back"), count)


def _back(target: str | None, count: int) -> Response:
    """303 to ``target`` (a dashboard path, else the deliveries page) saying ``replayed``."""
    path = local_target(target, "/ui/deliveries")
    base, _, query = path.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query) if k not in ("replayed", "cursor")]
    return RedirectResponse(f"{base}?{urlencode([*kept, ('replayed', str(count))])}", 303)
