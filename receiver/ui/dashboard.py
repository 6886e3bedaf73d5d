"""What the dashboard's handlers share: the templates, the sessions, and the guards that turn
a signed-out request, a refusal or a database outage into the documented answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from receiver.errors import Refused, StoreUnavailable
from receiver.services import Services, services
from receiver.ui import rendering
from receiver.ui.sessions import Sessions

log = structlog.get_logger("kling_hooks.ui")

Page = Callable[["Dashboard", Request], Awaitable[Response]]
Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """One app's dashboard: its template environment and its :class:`Sessions` (made at the
    first request, once the API token is known; one-time links used are remembered there)."""

    def __init__(self) -> None:
        self.env = rendering.environment()
        self._sessions: Sessions | None = None

    def sessions(self, svc: Services) -> Sessions:
        """The :class:`Sessions` of the receiver ``svc`` belongs to."""
        if self._sessions is None:
            self._sessions = Sessions(svc.settings, svc.credentials.api_token)
        return self._sessions

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        status_code: int = 200,
    ) -> Response:
        """A page: ``context`` plus the session's CSRF token (None signed out), the clock
        (``now_ms``) and the live feed's sequence number (``feed_seq``)."""
        svc = services(request)
        csrf = self.sessions(svc).csrf_of(request)
        full = {
            "csrf": csrf,
            "signed_in": csrf is not None,
            "now_ms": svc.clock_ms(),
            "feed_seq": svc.feed.seq,
            **context,
        }
        return rendering.render(self.env, request, template, full, status_code)

    def error(self, request: Request, status_code: int, message: str) -> Response:
        """The error page: ``status_code`` and ``message`` (escaped), and a way back."""
        context = {"status_code": status_code, "message": message}
        return self.render(request, "error.html", context, status_code)

    def page(self, handler: Page, *, signed_in: bool = True, api: bool = False) -> Handler:
        """``handler`` as a route endpoint: a signed-out request is sent to the sign-in page
        (303; ``api``: 401 as plain text, for event streams and files), a
        :class:`~receiver.errors.Refused` becomes its status with the error page, a database
        outage 503 with ``Retry-After``."""

        async def run(request: Request) -> Response:
            svc = services(request)
            if signed_in and self.sessions(svc).csrf_of(request) is None:
                if api:
                    return PlainTextResponse("sign in first", 401)
                return RedirectResponse(_sign_in_url(request), 303)
            try:
                return await handler(self, request)
            except Refused as exc:
                return self.error(request, exc.status, exc.message)
            except StoreUnavailable as exc:
                log.error("ui_store_unavailable", error=str(exc))
                answer = self.error(request, 503, "the database does not answer; retry later")
                answer.headers["Retry-After"] = str(svc.settings.kling_hooks_retry_after_s)
                return answer

        return run

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The answer to a path under ``/ui/`` that no route serves: 404, as a page."""
        request = Request(scope, receive)
        await self.error(request, 404, "no such page in the dashboard")(scope, receive, send)


def _sign_in_url(request: Request) -> str:
    """``/ui/sign-in?next=PATH``: back to the page asked for after signing in."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/ui/sign-in?" + urlencode({"next": target})


def local_target(value: str | None, default: str = "/ui/") -> str:
    """``value`` when it is a path under ``/ui/`` of this server (never ``//host``, a scheme
    or a backslash: no open redirect), else ``default``."""
    if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
        return value
    return default
