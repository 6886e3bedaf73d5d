"""Reading Kling's answers: the task in a success, and what a failure means for a retry.

Source: ``docs/kling/PROTOCOL.md`` section 3 (the envelope, error codes; 1302/1303 and
5000-5002 are transient). A failure is *final* (raise at once), *transient* (try again), and
for a create also *maybe created*: the request may have reached Kling although no answer came
back, so the task must be looked up by its ``external_task_id`` before creating again.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from submitter.errors import KlingAPIError
from submitter.protocol import RETRYABLE_CODES, Envelope, TaskObject, first_error

NOTHING_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
"""Transport errors raised before the request left this host: repeating a create after one
cannot make a second task."""


def task_from(response: httpx.Response) -> TaskObject:
    """Parse Kling's envelope and its task object (a create or query answer).

    Raises:
        KlingAPIError: an HTTP error, ``code != 0``, a body that is not Kling's envelope
            (code None, message = the first 200 characters), or ``data`` that is not a task
            (message ``"the answer's data is not a task object: <field>: <problem>"``).
    """
    envelope = _envelope(response)
    try:
        return TaskObject.model_validate(envelope.data)
    except ValidationError as exc:
        raise _not_tasks(response, envelope, first_error(exc, root="data")) from None


def tasks_from(response: httpx.Response) -> list[TaskObject]:
    """Parse Kling's envelope of a list query: ``data`` is a list of task objects.

    Raises:
        KlingAPIError: as :func:`task_from`; ``data`` that is not a list of tasks gives
            ``"the answer's data is not a task list: <field>: <problem>"``.
    """
    envelope = _envelope(response)
    try:
        return _TASK_LIST.validate_python(envelope.data)
    except ValidationError as exc:
        raise _not_tasks(response, envelope, first_error(exc, root="data"), "list") from None


_TASK_LIST = TypeAdapter(list[TaskObject])


def _envelope(response: httpx.Response) -> Envelope:
    """Kling's envelope of a successful answer.

    Raises:
        KlingAPIError: an HTTP error, ``code != 0``, or a body that is not the envelope.
    """
    try:
        envelope = Envelope.model_validate(response.json())
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError included
        raise KlingAPIError(response.status_code, None, response.text[:200], None) from None
    if response.is_error or envelope.code != 0:
        raise KlingAPIError(
            response.status_code, envelope.code, envelope.message or "", envelope.request_id
        )
    return envelope


def _not_tasks(
    response: httpx.Response, envelope: Envelope, problem: str, kind: str = "object"
) -> KlingAPIError:
    message = f"the answer's data is not a task {kind}: {problem}"
    return KlingAPIError(response.status_code, envelope.code, message, envelope.request_id)


def is_transient(exc: KlingAPIError) -> bool:
    """True for 1302/1303 and 5000-5002, any 5xx, and a 408/429 without Kling's envelope."""
    if exc.code in RETRYABLE_CODES or exc.http_status >= 500:
        return True
    return exc.code is None and exc.http_status in (408, 429)


def may_have_created(exc: Exception) -> bool:
    """True when a failed create may have made the task anyway (its answer was lost): a 5xx
    or 5000-5002 answer, or any transport error but those in :data:`NOTHING_SENT`."""
    if isinstance(exc, KlingAPIError):
        return exc.http_status >= 500 or exc.code in (5000, 5001, 5002)
    return not isinstance(exc, NOTHING_SENT)


def error_fields(exc: Exception) -> dict[str, Any]:
    """Log fields of a failure: ``error`` (its type) and ``message``, plus Kling's
    ``http_status``, ``code`` and ``request_id`` for a :class:`KlingAPIError`."""
    if isinstance(exc, KlingAPIError):
        return {
            "error": "KlingAPIError",
            "http_status": exc.http_status,
            "code": exc.code,
            "request_id": exc.request_id,
            "message": exc.message,
        }
    return {"error": type(exc).__name__, "message": str(exc)}
