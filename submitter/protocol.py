"""Kling's wire format: the one definition both the submitter and the receiver import.

Source: Kling's public API pages "Callback Protocol", "General Information" and "Error Code",
summarised in ``docs/kling/PROTOCOL.md`` (sections 1, 3 and 4). Field names are Kling's own.

Shapes:

* a task object (query answer ``data`` and callback body)::

    {"task_id": str, "task_status": "submitted|processing|succeed|failed",
     "task_status_msg": str, "created_at": int ms, "updated_at": int ms,
     "final_unit_deduction": str, "task_info": {"external_task_id": str, ...},
     "task_result": {"images": [...], "videos": [...], ...}, ...unknown fields kept}

* the envelope of every synchronous answer: ``{"code": int, "message": str,
  "request_id": str, "data": <task object | list | null>}``; ``code == 0`` is success.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError


class TaskStatus(StrEnum):
    """A Kling task's status. Kling spells the success state ``succeed`` (not ``succeeded``).

    Order: ``submitted < processing < succeed | failed``; the last two are terminal and never
    move (PROTOCOL.md section 4).
    """

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    SUCCEED = "succeed"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """0 for submitted, 1 for processing, 2 for either terminal state."""
        return _RANK[self]

    @property
    def is_terminal(self) -> bool:
        """True for ``succeed`` and ``failed``."""
        return self.rank == 2


_RANK = {
    TaskStatus.SUBMITTED: 0,
    TaskStatus.PROCESSING: 1,
    TaskStatus.SUCCEED: 2,
    TaskStatus.FAILED: 2,
}


class Route(StrEnum):
    """The create routes kling-hooks supports, as they follow ``{base}/v1/``."""

    IMAGES_GENERATIONS = "images/generations"
    IMAGES_MULTI_IMAGE2IMAGE = "images/multi-image2image"
    VIDEOS_MULTI_IMAGE2VIDEO = "videos/multi-image2video"
    VIDEOS_TEXT2VIDEO = "videos/text2video"
    VIDEOS_IMAGE2VIDEO = "videos/image2video"


# Unix epoch milliseconds; bounded so that every value fits SQLite's 64-bit INTEGER.
Millis = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]


def now_ms() -> int:
    """The wall clock in Kling's unit: Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


def field_errors(exc: ValidationError, *, root: str = "body") -> list[tuple[str, str]]:
    """``(field, message)`` of every problem pydantic found: ``field`` is the dotted path
    (``task_result.images``), or ``root`` when the problem is the whole document."""
    return [(".".join(str(p) for p in e["loc"]) or root, e["msg"]) for e in exc.errors()]


def first_error(exc: ValidationError, *, root: str = "body") -> str:
    """``"field.path: message"`` of the first problem; how a refused body names its field."""
    field, message = field_errors(exc, root=root)[0]
    return f"{field}: {message}"


class TaskInfo(BaseModel):
    """``task_info``: may be missing (old schema) or ``{}`` (failed tasks)."""

    model_config = ConfigDict(extra="allow")

    external_task_id: StrictStr | None = None


class TaskObject(BaseModel):
    """A Kling task object, as a query answer's ``data`` or a callback body.

    Identity fields are strictly typed: ``task_id`` must be a JSON string (long digit ids such
    as ``"867283741759111202"`` never become numbers), timestamps are integer milliseconds, and
    ``final_unit_deduction`` stays Kling's string. Unknown fields are kept (``extra="allow"``),
    because Kling adds result kinds (``audios``, ``voices``...) over time.
    """

    model_config = ConfigDict(extra="allow")

    task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    task_status: TaskStatus
    task_status_msg: StrictStr | None = None
    created_at: Millis | None = None
    updated_at: Millis | None = None
    final_unit_deduction: StrictStr | None = None
    task_info: TaskInfo | None = None
    task_result: dict[str, Any] | None = None

    @property
    def external_task_id(self) -> str | None:
        """``task_info.external_task_id``, or None when the sender omitted it."""
        return self.task_info.external_task_id if self.task_info else None


class Envelope(BaseModel):
    """Kling's synchronous answer: ``{code, message, request_id, data}``; code 0 is success."""

    model_config = ConfigDict(extra="allow")

    code: StrictInt
    message: StrictStr | None = None
    request_id: StrictStr | None = None
    data: Any = None


# Kling error codes (PROTOCOL.md section 3, Kling's "Error Code" page): code -> (HTTP status,
# meaning). 1302/1303 and the 5xxx codes are transient; the others are final.
ERROR_CODES: dict[int, tuple[int, str]] = {
    1000: (401, "authentication failed"),
    1001: (401, "authorization is empty"),
    1002: (401, "authorization is invalid"),
    1003: (401, "authorization is not yet valid"),
    1004: (401, "authorization has expired"),
    1100: (429, "account exception"),
    1101: (429, "account in arrears"),
    1102: (429, "resource pack used up or expired"),
    1103: (403, "no permission for this resource"),
    1200: (400, "invalid request parameters"),
    1201: (400, "invalid request parameters"),
    1202: (404, "invalid request method"),
    1203: (404, "requested resource does not exist"),
    1300: (400, "trigger of the platform policy"),
    1301: (400, "content security policy triggered"),
    1302: (429, "request rate is too high"),
    1303: (429, "concurrent tasks over the resource pack limit"),
    1304: (429, "IP allow-list policy triggered"),
    5000: (500, "internal server error"),
    5001: (503, "service temporarily unavailable (maintenance)"),
    5002: (504, "server internal timeout (backlog)"),
}

RETRYABLE_CODES = frozenset({1302, 1303, 5000, 5001, 5002})
