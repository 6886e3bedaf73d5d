"""HTML out: the Jinja2 environment of the dashboard's templates, its filters, the error page,
and the headers every answer under ``/ui/`` carries.

Templates live in ``receiver/ui/templates`` (package data) and are autoescaped: every value
from Kling or a user (prompts, ``task_status_msg``, errors, URLs) is escaped where it is
written, and no template marks one safe. The SVG charts are built as data
(``receiver.ui.charts``) and drawn by a template too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver import __version__

#: No script but our own file, no style but our own sheet, no inline either; no frames;
#: media and images only from this origin (the saved files).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
#: Sent with every answer under ``/ui/``. ``same-origin``: a form's POST still carries
#: ``Origin`` (checked), and no Referer leaves the dashboard.
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every answer, and ``Cache-Control:
    no-store`` on those that set none (pages hold task data; static files and saved files
    set their own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def format_time(ms: int | None) -> str:
    """Unix ms as ``2026-12-01 11:01:39Z`` (UTC); ``-`` for None."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(ms: int | None, now_ms: int) -> str:
    """How long ago ``ms`` was: ``12 s``, ``5 min``, ``3 h``, ``4 d``; ``-`` for None."""
    if ms is None:
        return "-"
    seconds = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def format_bytes(size: int) -> str:
    """``1816 B``, ``12.3 KiB``, ``4.0 MiB``..."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def as_json(value: Any) -> str:
    """A request option's value as compact JSON text (escaped when written)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def with_query(request: Request, **changes: object) -> str:
    """``?...``: the request's query with ``changes`` (None removes a name), without the
    one-off ``replayed`` notice; for paging links."""
    params = {k: v for k, v in request.query_params.items() if k != "replayed"}
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = str(value)
    return "?" + urlencode(params)


def environment() -> jinja2.Environment:
    """The dashboard's template environment: package templates, autoescape on, undefined
    names are errors."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("receiver.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=format_time, bytes=format_bytes, json=as_json)
    env.globals.update(version=__version__, age=format_age, with_query=with_query)
    return env


def render(
    env: jinja2.Environment,
    request: Request,
    template: str,
    context: Mapping[str, Any],
    status_code: int = 200,
) -> Response:
    """``template`` rendered with ``context``, plus ``request``, as an HTML answer."""
    html = env.get_template(template).render({"request": request, **context})
    return HTMLResponse(html, status_code=status_code)
