"""Signing in to the dashboard: the session cookie, one-time links, CSRF tokens and the
``Origin`` check.

* **Sign-in.** The user gives the status API token or ``KLING_HOOKS_UI_PASSWORD`` (compared
  in constant time). The answer sets the session cookie ``kh_session``: an itsdangerous
  ``URLSafeTimedSerializer`` value (HMAC-SHA1 over the payload and its time, keyed by the
  API token and the password, so changing either ends every session) holding the session's
  CSRF token. It is ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui``, with ``Max-Age``
  ``KLING_HOOKS_UI_SESSION_S``, and ``Secure`` when ``KLING_HOOKS_PUBLIC_URL`` is https; a
  cookie older than that is refused when read, whatever the browser kept.
* **One-time links.** :func:`one_time_link` makes a URL that signs in once, within
  :data:`ONCE_MAX_AGE_S` (``kling-hooks demo --serve`` prints one); it is signed with the
  same key, and :class:`Sessions` remembers the ones used.
* **Forms.** Every state-changing form carries the session's CSRF token (field ``csrf``),
  and its ``Origin`` must be this server's own (or the public URL's).
"""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from receiver.config import Settings
from receiver.errors import Refused

COOKIE = "kh_session"
#: Seconds a one-time sign-in link stays valid.
ONCE_MAX_AGE_S = 600
ONCE_PATH = "/ui/sign-in/once"


def _serializer(api_token: str, password: str | None, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        api_token + "\0" + (password or ""), salt=f"kling-hooks.{purpose}"
    )


def _password(settings: Settings) -> str | None:
    value = settings.kling_hooks_ui_password
    return None if value is None else value.get_secret_value()


def one_time_link(base_url: str, settings: Settings, api_token: str) -> str:
    """A URL that signs its first visitor in, within :data:`ONCE_MAX_AGE_S` seconds.

    Args:
        base_url: The receiver's base URL (``http://127.0.0.1:8000``).
        settings: The receiver's settings (``KLING_HOOKS_UI_PASSWORD`` is part of the key).
        api_token: The receiver's API token (``Credentials.api_token``).
    """
    token = _serializer(api_token, _password(settings), "ui.once").dumps(secrets.token_hex(16))
    return f"{base_url.rstrip('/')}{ONCE_PATH}?t={token}"


class Sessions:
    """The dashboard's sessions for one running receiver.

    Args:
        settings: ``KLING_HOOKS_UI_PASSWORD``, ``KLING_HOOKS_UI_SESSION_S`` and the public
            URL (https: ``Secure`` cookies) are read from it.
        api_token: The status API's token.
    """

    def __init__(self, settings: Settings, api_token: str) -> None:
        password = _password(settings)
        self._accepted = [s.encode() for s in (api_token, password) if s]
        self._cookie = _serializer(api_token, password, "ui.session")
        self._once = _serializer(api_token, password, "ui.once")
        self._used: dict[str, float] = {}  # one-time nonces used, until they expire
        self.max_age_s = settings.kling_hooks_ui_session_s
        self.secure = settings.public_url.startswith("https://")
        self._origins = {_origin(settings.public_url)}

    def accepts(self, given: str) -> bool:
        """Whether ``given`` is the API token or the dashboard password (constant time)."""
        found = False
        for expected in self._accepted:
            found |= hmac.compare_digest(given.encode(), expected)
        return found

    def redeem(self, token: str) -> bool:
        """Whether ``token`` is a one-time link's, unused and unexpired; it is used up."""
        now = time.monotonic()
        self._used = {n: t for n, t in self._used.items() if now - t < ONCE_MAX_AGE_S}
        try:
            nonce = self._once.loads(token, max_age=ONCE_MAX_AGE_S)
        except BadSignature:
            return False
        if not isinstance(nonce, str) or nonce in self._used:
            return False
        self._used[nonce] = now
        return True

    def start(self, response: Response) -> None:
        """Set a new session's cookie (a fresh CSRF token) on ``response``."""
        value = self._cookie.dumps({"csrf": secrets.token_urlsafe(32)})
        response.set_cookie(
            COOKIE,
            value,
            max_age=self.max_age_s,
            path="/ui",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def end(self, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(
            COOKIE, path="/ui", secure=self.secure, httponly=True, samesite="strict"
        )

    def csrf_of(self, request: Request) -> str | None:
        """The CSRF token of ``request``'s valid, unexpired session; None when signed out."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            payload = self._cookie.loads(value, max_age=self.max_age_s)
        except BadSignature:
            return None
        token = payload.get("csrf") if isinstance(payload, dict) else None
        return token if isinstance(token, str) else None

    def check_origin(self, request: Request) -> None:
        """Refuse a state-changing request from another origin.

        Raises:
            Refused: 403 when ``Origin`` is missing or neither this server's own origin (as
                the request reached it) nor the public URL's.
        """
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin is None:
            raise Refused("the request has no Origin header; send the form from the page", 403)
        if origin != own and origin not in self._origins:
            raise Refused(f"Origin {origin[:80]!r} is not this dashboard's", 403)

    def check_csrf(self, request: Request, given: str | None) -> None:
        """Refuse a form whose CSRF token is not its session's.

        Raises:
            Refused: 403, no session or a wrong or missing token.
        """
        expected = self.csrf_of(request)
        if expected is None or not given or not hmac.compare_digest(given, expected):
            raise Refused("the form's CSRF token is missing or wrong: reload the page", 403)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
