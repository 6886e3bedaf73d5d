"""Reading requests: bodies bounded in size (``KLING_HOOKS_MAX_BODY_BYTES``) and time
(``KLING_HOOKS_BODY_TIMEOUT_S``) and validated by a model of ``receiver.models``, and query
parameters checked by name and value (the status API's and the dashboard's)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from receiver.config import Settings
from receiver.errors import BodyTooLarge, Refused
from submitter.protocol import first_error, loads_json

Body = TypeVar("Body", bound=BaseModel)
E = TypeVar("E", bound=StrEnum)

#: The scope key that says the whole body has arrived (set by the HTTP protocol,
#: ``receiver.limits.header_timeout_protocol``): reading it needs no deadline then.
BODY_RECEIVED = "kling_hooks.body_received"


async def read_bounded(request: Request, settings: Settings) -> bytes:
    """:func:`read_body` of ``request``."""
    return await read_body(request.scope, request.receive, settings)


async def read_body(scope: Scope, receive: Receive, settings: Settings) -> bytes:
    """Read an ASGI request's body, stopping as soon as it exceeds
    ``KLING_HOOKS_MAX_BODY_BYTES`` (the rest is never read), or when it has not all arrived
    within ``KLING_HOOKS_BODY_TIMEOUT_S``. A body that had all arrived when the handler began
    (``BODY_RECEIVED``, a callback's usual case) is read without arming that deadline.

    Raises:
        BodyTooLarge: ``Content-Length`` or the bytes received exceed the limit.
        Refused: 408, the body did not arrive in time; 400, the client closed the connection
            before the body ended (a truncated body is not JSON; nobody reads the answer).
    """
    max_bytes = settings.kling_hooks_max_body_bytes
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    try:
        if scope.get(BODY_RECEIVED):
            await _read_chunks(receive, chunks, max_bytes)
        else:
            async with asyncio.timeout(settings.kling_hooks_body_timeout_s):
                await _read_chunks(receive, chunks, max_bytes)
    except TimeoutError:
        timeout = settings.kling_hooks_body_timeout_s
        raise Refused(f"body not received within {timeout:g} s", 408) from None
    except ClientDisconnect:
        size = sum(map(len, chunks))
        raise Refused(f"body cut short: the client went away after {size} bytes", 400) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_chunks(receive: Receive, chunks: list[bytes], max_bytes: int) -> None:
    """Append the body's chunks to ``chunks`` until the last. Raises BodyTooLarge past
    ``max_bytes``, ClientDisconnect when the client went away first."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return


async def read_text(scope: Scope, receive: Receive, settings: Settings) -> str:
    """An ASGI request's body as text: bounded as :func:`read_body` says, UTF-8.

    Raises:
        Refused: 413 too large; 408 too slow; 400 not UTF-8 or cut short.
    """
    try:
        return (await read_body(scope, receive, settings)).decode("utf-8")
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


def query_values(
    request: Request, known: Collection[str], where: str, *, skip_empty: bool = False
) -> dict[str, str]:
    """The query parameters of ``request``, by name: only ``known`` ones, each given once.

    Args:
        where: The path named in the messages.
        skip_empty: Leave empty values out (a form's "any"), instead of refusing them.

    Raises:
        Refused: 400, naming the unknown, repeated or empty parameter.
    """
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise Refused(f"{name!r} is not a query parameter of {where} ({', '.join(known)})")
        if name in values:
            raise Refused(f"{name} is given more than once")
        if not value.strip() and skip_empty:
            continue
        if not value:
            raise Refused(f"{name} is empty (leave it out instead)")
        values[name] = value
    return values


def whole(query: dict[str, str], name: str, low: int, high: int) -> int | None:
    """``query[name]`` as a whole number in [low, high] (ASCII digits only), None if absent.

    Raises:
        Refused: 400, naming the value and the range.
    """
    value = query.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) < 20 and low <= int(value) <= high):
        raise Refused(f"{name}={value[:40]!r} is not a whole number in [{low}, {high}]")
    return int(value)


def choice(query: dict[str, str], name: str, choices: type[E]) -> E | None:
    """``query[name]`` as a member of ``choices``, or None when absent.

    Raises:
        Refused: 400, naming the value and the choices.
    """
    value = query.get(name)
    if value is None:
        return None
    if value not in choices.__members__.values():
        raise Refused(f"{name}={value[:40]!r} is not one of " + ", ".join(c.value for c in choices))
    return choices(value)
