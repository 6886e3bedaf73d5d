"""Registering a created task with the receiver (``POST /tasks`` on the status API).

From that moment the task shows as ``submitted`` in the status API, before any callback.
Large inline images are not stored: each becomes its length and sha256.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Self

import httpx
import structlog

from submitter.bodies import IMAGE_FIELDS
from submitter.errors import RegistrationFailed

log = structlog.get_logger("kling_hooks.submitter")

REDACT_OVER_BYTES = 1024


def redact(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``body`` fit to store: large inline images replaced by a fingerprint.

    Every string of more than 1024 bytes (UTF-8) under a key in
    :data:`submitter.bodies.IMAGE_FIELDS`, at any depth (also ``image_list[].image``,
    ``subject_image_list[].subject_image``, ``dynamic_masks[].mask``), becomes
    ``{"redacted": True, "bytes": <UTF-8 length>, "sha256": "<hex of those bytes>"}``.
    Everything else, a long prompt or an image URL included, is copied unchanged.
    """
    copied = _redact(body, None)
    assert isinstance(copied, dict)
    return copied


def _redact(value: Any, key: str | None) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and key in IMAGE_FIELDS:
        raw = value.encode()
        if len(raw) > REDACT_OVER_BYTES:
            return {"redacted": True, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    return value


@dataclass(frozen=True)
class Submission:
    """A created Kling task.

    Attributes:
        task_id: Kling's id (a string; long digit ids stay strings).
        external_task_id: Our id for the task, also the key of its callback URL.
        callback_url: Where Kling sends the task's callbacks; carries the URL token, so it is
            left out of ``repr``.
        task_status: Status in Kling's create answer, normally ``"submitted"``.
        created_at: Kling's ``created_at``, Unix epoch milliseconds, or None if absent.
        route: The create route, e.g. ``"images/generations"``.
        registered: True when the receiver accepted the registration (``POST /tasks``).
        warning: Why registration failed, or None.
    """

    task_id: str
    external_task_id: str
    callback_url: str = field(repr=False)
    task_status: str
    created_at: int | None
    route: str
    registered: bool = False
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field, as a JSON-ready dict."""
        return asdict(self)


class Registrar:
    """Tells the receiver about a new task (``POST {api_url}/tasks``), before any callback.

    Args:
        api_url: The receiver's API base URL, e.g. ``http://127.0.0.1:8000/api``.
        api_token: The receiver's API token, sent as ``Authorization: Bearer <token>``.
        transport: An httpx transport (tests pass ``httpx.MockTransport``).
        timeout_s: Timeout of the whole call, seconds.
    """

    def __init__(
        self,
        api_url: str,
        api_token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._url = f"{api_url.rstrip('/')}/tasks"
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_token}"},
        )

    def __repr__(self) -> str:
        return f"Registrar(url={self._url!r}, api_token='***')"

    async def register(self, *, route: str, submission: Submission, body: dict[str, Any]) -> None:
        """Send ``{"route", "task_id", "external_task_id", "task_status", "created_at",
        "request"}``, where ``request`` is :func:`redact` of the sent body without its
        ``callback_url`` (the URL token is not stored anywhere; the receiver can rebuild it).

        Raises:
            RegistrationFailed: the receiver was not reached, or answered with a non-2xx status.
        """
        request = {k: v for k, v in body.items() if k != "callback_url"}
        payload = {
            "route": route,
            "task_id": submission.task_id,
            "external_task_id": submission.external_task_id,
            "task_status": submission.task_status,
            "created_at": submission.created_at,
            "request": redact(request),
        }
        try:
            response = await self._http.post(self._url, json=payload)
        except httpx.HTTPError as exc:
            raise RegistrationFailed(f"{type(exc).__name__} from {self._url}: {exc}") from exc
        if not response.is_success:
            raise RegistrationFailed(
                f"HTTP {response.status_code} from {self._url}: {response.text[:200]}"
            )

    async def register_or_warn(self, submission: Submission, body: dict[str, Any]) -> Submission:
        """:meth:`register` the task, and report the outcome instead of raising.

        Returns:
            ``submission`` with ``registered=True``; or, when registration failed, with
            ``registered=False`` and a ``warning`` saying why. Kling has the task either way,
            and the receiver records it with its first accepted callback.
        """
        try:
            await self.register(route=submission.route, submission=submission, body=body)
        except (RegistrationFailed, httpx.HTTPError) as exc:
            warning = (
                f"could not register the task with the receiver ({exc}); Kling has it: the "
                "receiver records it with its first accepted callback, but if no callback "
                "reaches a running receiver nothing here knows of it: keep its task_id "
                f"({submission.task_id}) and ask Kling (kling-hooks kling get "
                f"{submission.route} {submission.task_id})"
            )
            log.warning(
                "receiver.registration_failed",
                task_id=submission.task_id,
                external_task_id=submission.external_task_id,
                reason=str(exc),
            )
            return replace(submission, registered=False, warning=warning)
        return replace(submission, registered=True)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
