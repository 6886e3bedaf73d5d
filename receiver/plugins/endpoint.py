"""An HTTP endpoint that a plugin's settings name (a Slack incoming webhook, a webhook
receiver): one pooled client, one ``POST`` per attempt, and what each answer means for the
delivery. The Slack and webhook plugins post through it.

The URL is the operator's choice, so it is fetched as is: keep-alive on, environment proxies
honoured, no address checks. URLs that come from a callback body go through
:mod:`receiver.plugins.safehttp` instead.

An attempt ends, in this order of checks (:meth:`Endpoint.post`,
:meth:`Endpoint.raise_for_status`):

* a timeout: ``error("no answer from {target} in time (ReadTimeout)")``, retried;
* another network error: ``error("cannot reach {target} (ConnectError)")``, retried;
* ``2xx``: done;
* a status in :attr:`StatusRules.permanent`: :class:`PermanentError`, ``dead`` at once;
* a status in :attr:`StatusRules.retry_after` with a readable ``Retry-After`` (RFC 9110
  section 10.2.3): :class:`RetryAfter`, retried no earlier than that;
* any other status (``3xx``, ``5xx``...): ``error``, retried on ``retry_schedule_s``.

The three answer errors say ``"{target} answered {status}: {excerpt}"``. The excerpt is the
start of the body: at most :data:`MAX_BODY_READ_BYTES` are read, whitespace is folded to one
line, every string of ``secrets`` becomes ``***`` (a proxy may echo the URL), and the result is
cut to :data:`MAX_ERROR_BODY_CHARS`. Redirects are not followed. httpx's own exception texts
contain the request URL, so they are neither kept nor chained (``from None``).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, SecretStr

from receiver.plugins import PermanentError, PluginError, RetryAfter, retry_after_s

__all__ = [
    "MAX_BODY_READ_BYTES",
    "MAX_ERROR_BODY_CHARS",
    "Answer",
    "Endpoint",
    "HttpURL",
    "SecretHttpURL",
    "StatusRules",
    "http_url",
]

#: Bytes of an answer's body read at most (the rest is never downloaded).
MAX_BODY_READ_BYTES = 4096
#: Characters of the body kept in an error message.
MAX_ERROR_BODY_CHARS = 200


def http_url(value: str) -> str:
    """``value`` when it is an absolute ``http`` or ``https`` URL with a host.

    Raises:
        ValueError: any other value; the message does not repeat it (it may be a secret).
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


def _secret_http_url(value: SecretStr) -> SecretStr:
    http_url(value.get_secret_value())
    return value


#: A settings field holding an http(s) URL (see :func:`http_url`).
HttpURL = Annotated[str, AfterValidator(http_url)]
#: The same, for a URL that is a secret (a Slack incoming webhook): masked when shown.
SecretHttpURL = Annotated[SecretStr, AfterValidator(_secret_http_url)]


@dataclass(frozen=True)
class StatusRules:
    """Which non-2xx statuses are not simply retried on the schedule.

    Attributes:
        permanent: Statuses that make the delivery ``dead`` at once.
        retry_after: Statuses whose ``Retry-After`` header sets the next attempt's time
            (without a readable header they are retried on the schedule).
    """

    permanent: Container[int] = frozenset()
    retry_after: Container[int] = frozenset({429, 503})


@dataclass(frozen=True)
class Answer:
    """What the endpoint answered.

    Attributes:
        status: The HTTP status code.
        retry_after: The ``Retry-After`` header as sent, or None.
        body: The excerpt of the body (see the module docstring); may be empty.
    """

    status: int
    retry_after: str | None
    body: str


@dataclass(eq=False)
class Endpoint:
    """Posts to ``url``; :meth:`start` before the first post, :meth:`stop` at the end.

    Attributes:
        url: The endpoint; the connection goes there as is (no SSRF guard: see the module
            docstring).
        target: How messages name the endpoint: ``"Slack"``, ``"the endpoint"``.
        error: The plugin's retryable error, raised for network errors and statuses that
            are neither done, permanent nor a readable ``Retry-After``.
        timeout_s: httpx's connect, read, write and pool timeout, seconds (each).
        user_agent: The ``User-Agent`` header of every request.
        rules: Which statuses are permanent or honour ``Retry-After``.
        secrets: Strings blanked out of body excerpts (strings of one character or none
            are left alone).
        transport: An httpx transport to send through (tests); by default httpx's own.
    """

    url: str = field(repr=False)  # it may be a secret
    target: str
    error: type[PluginError]
    timeout_s: float
    user_agent: str
    rules: StatusRules = field(default_factory=StatusRules)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    transport: httpx.AsyncBaseTransport | None = None
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        """Open the client (one connection pool for every post)."""
        self._client = httpx.AsyncClient(
            transport=self.transport,
            timeout=self.timeout_s,
            follow_redirects=False,
            headers={"User-Agent": self.user_agent},
        )

    async def stop(self) -> None:
        """Close the client; posting needs :meth:`start` again."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(
        self,
        *,
        content: bytes | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """``POST`` ``content`` (bytes as they are) or ``json`` (serialized by httpx, with
        ``Content-Type: application/json``) with ``headers``; returns the answer, whatever
        its status.

        Raises:
            error: a timeout or a network error (the message names the exception type only).
            RuntimeError: :meth:`start` was not called.
        """
        if self._client is None:
            raise RuntimeError(f"start() was not called before posting to {self.target}")
        request = self._client.stream("POST", self.url, content=content, json=json, headers=headers)
        try:
            async with request as response:
                head = b""
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= MAX_BODY_READ_BYTES:
                        break
        except httpx.TimeoutException as exc:
            what = f"no answer from {self.target} in time ({type(exc).__name__})"
            raise self.error(what) from None
        except httpx.HTTPError as exc:
            raise self.error(f"cannot reach {self.target} ({type(exc).__name__})") from None
        body = self._excerpt(head.decode("utf-8", "replace"))
        return Answer(response.status_code, response.headers.get("Retry-After"), body)

    def raise_for_status(self, answer: Answer) -> None:
        """Return when ``answer`` is ``2xx``; otherwise raise what it means.

        Raises:
            PermanentError: the status is in ``rules.permanent``.
            RetryAfter: the status is in ``rules.retry_after`` and ``Retry-After`` is readable
                (delay-seconds or an HTTP date).
            error: any other status.
        """
        if 200 <= answer.status < 300:
            return
        what = f"{self.target} answered {answer.status}: {answer.body or '(empty body)'}"
        if answer.status in self.rules.permanent:
            raise PermanentError(what)
        if answer.status in self.rules.retry_after:
            wait_s = retry_after_s(answer.retry_after)
            if wait_s is not None:
                raise RetryAfter(wait_s, what)
        raise self.error(what)

    def _excerpt(self, text: str) -> str:
        text = " ".join(text.split())
        # Longest first: a short secret inside a long one (a query value inside the signing
        # secret) must not split it, leaving the rest of it in clear.
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) > 1:
                text = text.replace(secret, "***")
        return text[:MAX_ERROR_BODY_CHARS]
