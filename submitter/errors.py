"""Errors raised by the submitter: one base, :class:`SubmitterError`.

Hierarchy::

    SubmitterError
    ├── InvalidRequest      the body breaks a documented Kling rule; nothing was sent
    │                       (also a ValueError)
    ├── KlingAPIError       Kling answered with a non-zero ``code`` or an HTTP error
    ├── KlingUnreachable    no answer from Kling after every retry (network, timeouts)
    ├── AuthNotConfigured   neither KLING_API_KEY nor KLING_ACCESS_KEY + KLING_SECRET_KEY is set
    ├── RegistrationFailed  the receiver did not accept a task registration (POST /tasks)
    ├── safehttp.UnsafeURL  a URL the SSRF guard will not fetch (not http(s), a non-public
    │                       host, too many redirects); image checks report it as a Problem
    └── simulator.api.Refused
                            the simulator refusing a request; its app turns it into Kling's
                            error envelope, so it never reaches a caller

Outside the tree, by design: ``ValueError`` for a bad constructor argument or value (a rate
outside [0, 1], ``max_attempts=0``, an empty key, a PNG side over 4096), raised before anything
is sent and documented under "Raises" where it happens. httpx errors other than transport
errors (``httpx.DecodingError``, ``httpx.TooManyRedirects``) pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass


class SubmitterError(Exception):
    """Base of every error the submitter raises."""


@dataclass(frozen=True)
class Problem:
    """One broken rule: the field (dotted path, e.g. ``image_list.0.image``) and the rule."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidRequest(SubmitterError, ValueError):
    """A create body breaks one or more documented rules (PROTOCOL.md section 1).

    Attributes:
        route: The route the body was meant for.
        problems: Every broken rule, in field order.
    """

    def __init__(self, route: str, problems: list[Problem]) -> None:
        self.route = str(route)
        self.problems = problems
        listed = "; ".join(str(p) for p in problems)
        super().__init__(f"{listed} ({self.route})")


class KlingAPIError(SubmitterError):
    """Kling answered with an error (PROTOCOL.md section 3, Kling's "Error Code" page).

    Attributes:
        http_status: The HTTP status of the answer.
        code: Kling's ``code`` (e.g. 1201, 1303), or None when the body was not Kling's envelope.
        message: Kling's ``message``, or the start of the body when it was not an envelope.
        request_id: Kling's ``request_id``, for Kling's support, or None.
    """

    def __init__(
        self, http_status: int, code: int | None, message: str, request_id: str | None
    ) -> None:
        self.http_status = http_status
        self.code = code
        self.message = message
        self.request_id = request_id
        super().__init__(
            f"Kling error: HTTP {http_status}, code {code}, message {message!r}, "
            f"request_id {request_id}"
        )


class KlingUnreachable(SubmitterError):
    """Kling could not be reached, or did not answer, after every retry."""


class AuthNotConfigured(SubmitterError):
    """No usable Kling credentials were given.

    Set ``KLING_API_KEY`` (a reseller key, sent as ``Bearer <key>``), or both
    ``KLING_ACCESS_KEY`` and ``KLING_SECRET_KEY`` (the official API's JWT signing pair).
    """


class RegistrationFailed(SubmitterError):
    """The receiver could not be reached, or answered ``POST /tasks`` with a non-2xx status.

    The Kling task exists regardless; it appears in the receiver with its first callback.
    """
