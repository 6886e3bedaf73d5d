"""Reading request bodies: bounded in size (``KLING_HOOKS_MAX_BODY_BYTES``) and time
(``KLING_HOOKS_BODY_TIMEOUT_S``), and validated by a model of ``receiver.models``."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from receiver.config import Settings
from receiver.errors import BodyTooLarge, Refused
from submitter.protocol import first_error, loads_json

Body = TypeVar("Body", bound=BaseModel)


async def read_bounded(request: Request, settings: Settings) -> bytes:
    """Read the body, stopping as soon as it exceeds ``KLING_HOOKS_MAX_BODY_BYTES`` (the rest
    is never read), or when it has not all arrived within ``KLING_HOOKS_BODY_TIMEOUT_S``.

    Raises:
        BodyTooLarge: ``Content-Length`` or the bytes received exceed the limit.
        Refused: 408, the body did not arrive in time; 400, the client closed the connection
            before the body ended (a truncated body is not JSON; nobody reads the answer).
    """
    max_bytes = settings.kling_hooks_max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.kling_hooks_body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge
                chunks.append(chunk)
    except TimeoutError:
        timeout = settings.kling_hooks_body_timeout_s
        raise Refused(f"body not received within {timeout:g} s", 408) from None
    except ClientDisconnect:
        raise Refused(f"body cut short: the client went away after {size} bytes", 400) from None
    return b"".join(chunks)


async def read_text(request: Request, settings: Settings) -> str:
    """The body as text: bounded as :func:`read_bounded` says, UTF-8.

    Raises:
        Refused: 413 too large; 408 too slow; 400 not UTF-8 or cut short.
    """
    try:
        return (await read_bounded(request, settings)).decode("utf-8")
    except BodyTooLarge:
        raise Refused(f"body is over {settings.kling_hooks_max_body_bytes} bytes", 413) from None
    except UnicodeDecodeError:
        raise Refused("body is not UTF-8 JSON", 400) from None


async def parse_body(
    request: Request, model: type[Body], settings: Settings, *, empty: Body | None = None
) -> Body:
    """The JSON body validated by ``model``; ``empty`` (when given) stands for an empty body.

    Raises:
        Refused: 413 too large; 408 too slow; 400 not JSON or cut short; 422 naming the first
            bad field.
    """
    try:
        raw = await read_bounded(request, settings)
        if empty is not None and not raw.strip():
            return empty
        doc = loads_json(raw.decode("utf-8"))
    except BodyTooLarge:
        raise Refused("body is too large", 413) from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise Refused(f"body is not JSON: {exc}", 400) from None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise Refused(first_error(exc), 422) from None
