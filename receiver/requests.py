"""Reading request bodies: bounded, and validated by a model of ``receiver.models``."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from receiver.errors import BodyTooLarge, Refused
from submitter.protocol import first_error

Body = TypeVar("Body", bound=BaseModel)


async def read_bounded(request: Request, max_bytes: int) -> bytes:
    """Read the body, stopping as soon as it exceeds ``max_bytes`` (the rest is never read).

    Raises:
        BodyTooLarge: ``Content-Length`` or the bytes received exceed ``max_bytes``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_text(request: Request, max_bytes: int) -> str:
    """The body as text: at most ``max_bytes``, UTF-8.

    Raises:
        Refused: 413 too large; 400 not UTF-8.
    """
    try:
        return (await read_bounded(request, max_bytes)).decode("utf-8")
    except BodyTooLarge:
        raise Refused(f"body is over {max_bytes} bytes", 413) from None
    except UnicodeDecodeError:
        raise Refused("body is not UTF-8 JSON", 400) from None


async def parse_body(
    request: Request, model: type[Body], *, max_bytes: int, empty: Body | None = None
) -> Body:
    """The JSON body validated by ``model``; ``empty`` (when given) stands for an empty body.

    Raises:
        Refused: 413 too large; 400 not JSON; 422 naming the first bad field.
    """
    try:
        raw = await read_bounded(request, max_bytes)
        if empty is not None and not raw.strip():
            return empty
        doc = json.loads(raw)
    except BodyTooLarge:
        raise Refused("body is too large", 413) from None
    except ValueError:
        raise Refused("body is not JSON", 400) from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise Refused(first_error(exc), 422) from None
