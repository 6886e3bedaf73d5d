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

import json
import math
import re
import time
from enum import StrEnum
from typing import Annotated, Any, NotRequired

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from typing_extensions import TypedDict


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


def _integral(value: Any) -> Any:
    """``5.0`` as ``5``: JSON has one number type (RFC 8259), and JSON Schema's ``integer``
    counts ``5.0`` as one, so a document that says ``integer`` must accept it. ``5.5``,
    ``"5"`` and ``true`` are still refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: Put last in an ``Annotated[StrictInt, Field(...), INTEGRAL]`` (after the bounds, so that
#: the JSON schema keeps ``minimum``/``maximum``): ``5.0`` is taken as ``5``.
INTEGRAL = BeforeValidator(_integral)
#: A JSON integer: strict (no strings, no booleans), but ``5.0`` is taken as ``5``.
WholeNumber = Annotated[StrictInt, INTEGRAL]
#: The last millisecond of the year 9999: the latest time every plugin can still format.
MAX_MILLIS = 253_402_300_799_999
# Unix epoch milliseconds, up to the year 9999 (a date every datetime can hold).
Millis = Annotated[StrictInt, Field(ge=0, le=MAX_MILLIS), INTEGRAL]
# A task_id: 1 to 256 printable ASCII characters (Kling's are digits), so that it is safe in
# every header, path and log line a plugin puts it in.
TaskId = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]

# A \uD800-\uDFFF escape in the raw text: the only way JSON text can hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


#: Deepest nesting accepted: far above any Kling body (about 4), and far below where
#: serializing a stored value back (pydantic's limit, 255; Python's recursion limit) fails.
MAX_JSON_DEPTH = 64


def _depth(doc: Any) -> int:
    """How deeply ``doc``'s arrays and objects nest (a scalar: 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_JSON_DEPTH:
            return level
        stack.extend((child, level + 1) for child in children)
    return deepest


#: One decoder for every call (``json.loads`` with hooks would build one each time).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)


def loads_json(raw: str) -> Any:
    """Parse JSON text into what can be stored, read back and forwarded as JSON (RFC 8259).

    Raises:
        ValueError: not JSON; ``NaN``/``Infinity``; a number out of a double's range
            (``1e400``); nested deeper than :data:`MAX_JSON_DEPTH`; a lone UTF-16 surrogate
            (``"\\ud800"``), which no UTF-8 text (SQLite's, a webhook's) can hold. The message
            says which.
    """
    try:
        doc = _DECODER.decode(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    # Fewer brackets than levels allowed cannot nest too deeply (a Kling body has about 20):
    # the walk over the parsed document runs only when the count leaves the question open.
    brackets = raw.count("[") + raw.count("{")
    if brackets > MAX_JSON_DEPTH and _depth(doc) > MAX_JSON_DEPTH:
        raise ValueError(f"nested too deeply (over {MAX_JSON_DEPTH} levels)")
    if _SURROGATE_ESCAPE.search(raw):  # rare: check the parsed text only then
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("it holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    return doc


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

    task_id: TaskId
    task_status: TaskStatus
    task_status_msg: StrictStr | None = None
    created_at: Millis | None = None
    updated_at: Millis | None = None
    final_unit_deduction: StrictStr | None = None
    task_info: TaskInfo | None = None
    task_result: TaskResult | None = None

    @field_validator("task_result", mode="wrap")
    @classmethod
    def _as_sent(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Checked against :class:`TaskResult` (a refusal names ``task_result.images.0.url``),
        but kept as it came: the same dict, in its own key order."""
        handler(value)
        return value

    @property
    def external_task_id(self) -> str | None:
        """``task_info.external_task_id``, or None when the sender omitted it."""
        return self.task_info.external_task_id if self.task_info else None


class ResultImage(TypedDict):
    """``task_result.images[i]``: ``{"index": 0, "url": ...}``; ``url`` (and
    ``watermark_url``) must be strings; other keys are kept."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    url: StrictStr
    watermark_url: NotRequired[StrictStr | None]
    index: NotRequired[WholeNumber | None]


class ResultVideo(TypedDict):
    """``task_result.videos[i]``: ``{"id": ..., "url": ..., "duration": "5.1"}`` (seconds, a
    string); other keys are kept."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    url: StrictStr
    watermark_url: NotRequired[StrictStr | None]
    id: NotRequired[StrictStr | None]
    duration: NotRequired[StrictStr | None]


class TaskResult(TypedDict, total=False):
    """``task_result``: the kinds PROTOCOL.md section 4 gives a shape (``images``,
    ``videos``; ``null`` stands for none) must have it; other kinds (``audios``, which it
    names without one) are kept as sent."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    images: list[ResultImage] | None
    videos: list[ResultVideo] | None


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
