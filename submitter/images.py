"""Kling's rules for input images: JPEG or PNG, at most 10 MB, at least 300 px on a side, and
an aspect ratio between 1:2.5 and 2.5:1 (width:height either way).

Where they apply, as the seed pages in ``docs/kling/seeds/`` state them: seed 002 (the
official ``images/multi-image2image`` page) gives these rules for
``subject_image_list[].subject_image``, ``scene_image`` and ``style_image``; seed 004
(CometAPI) gives its ``scence_image`` and ``style_image`` "the same format and size
constraints as subject images"; seed 000 (hingnet) says its bodies are the official ones.
Seeds 001 (``image_list[].image``) and 003 (``image``) state no such rule, so those fields
are not checked here (:mod:`submitter.bodies` still requires JPEG or PNG and at most 10 MB
of any inline image). The fields are found by name at any depth of the body, so a
multi-image body is checked on whichever route it is posted to (seed 004 posts it to
``images/generations``).

* Base64 images are always checked:
  :func:`check_inline_images` is the last step of :func:`submitter.bodies.validate_body`.
* URL images are checked only when asked (``KlingClient.submit(..., check_images=True)``,
  ``kling-hooks submit --check-images``): :func:`check_image_urls` GETs the first
  :data:`HEAD_BYTES` of each (a ``Range`` request, read no further even if the server sends
  everything) through :mod:`submitter.safehttp`, so a URL on a loopback, private or
  link-local host is refused. The size rule uses ``Content-Range``'s total or
  ``Content-Length``, and is skipped when the server sends neither.

The format is told by the file signature; the pixel size is read from the header by
``imagesize`` (which reads headers only). Every broken rule is one
:class:`~submitter.errors.Problem` naming the field, the image and the rule.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterator
from typing import Any

import httpx
import imagesize  # type: ignore[import-untyped]  # no type information shipped

from submitter.bodies import MAX_IMAGE_BYTES
from submitter.errors import InvalidRequest, Problem
from submitter.protocol import Route
from submitter.safehttp import Guard, UnsafeURL, new_client, open_stream, redact

#: Image fields the seed pages give the rules for (seeds 002 and 004; see the module docstring).
RULED_FIELDS = frozenset({"subject_image", "scene_image", "scence_image", "style_image"})
MIN_SIDE_PX = 300
MAX_ASPECT_RATIO = 2.5
#: Bytes fetched from an image URL: enough for a JPEG's frame header after large EXIF blocks.
HEAD_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 30.0

_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


def image_problems(
    field: str, head: bytes, size_bytes: int | None, *, source: str | None = None
) -> list[Problem]:
    """Every rule an image breaks, judged from its first bytes and its size.

    Args:
        field: The field's dotted path, e.g. ``subject_image_list.0.subject_image``.
        head: The image's bytes, or at least its first ones (the header holds the size).
        size_bytes: The whole image's size in bytes, or None when unknown (then the 10 MB rule
            is not checked).
        source: Where the image came from, named first in each message (a URL); None for an
            inline image.

    Returns:
        One :class:`Problem` per broken rule, e.g. ``Problem(field, "a 1x1 PNG is under 300
        px on a side (seed 002: ≥300px)")``, or with a source ``"https://h/a.png (a 1x1 PNG)
        is under ..."``; empty when the image keeps every rule.
    """
    kind = next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None:
        got = f"{size_bytes} bytes" if size_bytes is not None else "data"
        value = _named(source, f"{got} starting {head[:8]!r}")
        return [Problem(field, f"{value} is not a JPEG or PNG image (seed 002: .jpg/.jpeg/.png)")]
    width, height = (int(side) for side in imagesize.get(io.BytesIO(head)))
    readable = width > 0 and height > 0
    value = _named(source, f"a {width}x{height} {kind}" if readable else f"a {kind}")
    broken = []
    if size_bytes is not None and size_bytes > MAX_IMAGE_BYTES:
        broken.append(f"is {size_bytes} bytes, over 10 MB (seed 002: ≤10MB)")
    if not readable:
        broken.append(
            f"has no pixel size in its first {len(head)} bytes"
            " (seed 002: ≥300px, aspect 1:2.5 to 2.5:1)"
        )
    elif min(width, height) < MIN_SIDE_PX:
        broken.append("is under 300 px on a side (seed 002: ≥300px)")
    if readable and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        ratio = max(width, height) / min(width, height)
        shape = f"{ratio:.2f}:1" if width > height else f"1:{ratio:.2f}"
        broken.append(f"has an aspect ratio of {shape}, outside 1:2.5 to 2.5:1 (seed 002)")
    return [Problem(field, f"{value} {rule}") for rule in broken]


def _named(source: str | None, value: str) -> str:
    return value if source is None else f"{source} ({value})"


def ruled_images(body: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(field, value)`` for each string under a :data:`RULED_FIELDS` key, at any depth, in
    body order; ``field`` is the dotted path (``subject_image_list.1.subject_image``)."""

    def walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key in RULED_FIELDS and isinstance(item, str):
                    yield where, item
                else:
                    yield from walk(item, where)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, f"{path}.{index}")

    yield from walk(body, "")


def _is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def check_inline_images(route: Route, body: dict[str, Any]) -> None:
    """Check every Base64 image of :func:`ruled_images` (``bodies.py`` has refused ``data:``
    prefixes already); URL images are left to :func:`check_image_urls`.

    Raises:
        InvalidRequest: an image breaks a rule (see :func:`image_problems`) or is not Base64;
            ``problems`` lists every broken rule of every image.
    """
    problems: list[Problem] = []
    for field, value in ruled_images(body):
        if _is_url(value):
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            problems.append(Problem(field, "must be an http(s) URL or Base64"))
            continue
        problems += image_problems(field, raw, len(raw))
    if problems:
        raise InvalidRequest(route, problems)


class _Unfetchable(Exception):
    """An image URL answered something other than its bytes (message: the HTTP status)."""


async def check_image_urls(
    route: Route,
    body: dict[str, Any],
    *,
    guard: Guard | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> None:
    """Fetch the first :data:`HEAD_BYTES` of every URL image of :func:`ruled_images`, one
    after the other, and apply :func:`image_problems` to them.

    Args:
        route: The route, named in the error.
        body: The body to send.
        guard: The SSRF rules; ``Guard()`` (public hosts only) by default. Tests pass
            ``Guard(allow_private_hosts=True)`` to reach a server on 127.0.0.1.
        timeout_s: Connect and read timeout of each fetch, seconds.

    Raises:
        InvalidRequest: an image breaks a rule, or could not be checked: a refused URL
            (not http(s), a non-public host, too many redirects), a network error, or an
            answer other than 200 or 206. Nothing is sent to Kling.
    """
    urls = [(field, value) for field, value in ruled_images(body) if _is_url(value)]
    if not urls:
        return
    problems: list[Problem] = []
    async with new_client(timeout_s=timeout_s) as client:
        for field, url in urls:
            try:
                head, size_bytes = await _fetch_head(client, url, guard or Guard())
            except (UnsafeURL, httpx.HTTPError, _Unfetchable) as exc:
                problems.append(Problem(field, f"{redact(url)} could not be checked: {exc}"))
                continue
            problems += image_problems(field, head, size_bytes, source=redact(url))
    if problems:
        raise InvalidRequest(route, problems)


async def _fetch_head(
    client: httpx.AsyncClient, url: str, guard: Guard
) -> tuple[bytes, int | None]:
    """The first :data:`HEAD_BYTES` of ``url`` and its whole size in bytes (None: unknown)."""
    headers = {"Range": f"bytes=0-{HEAD_BYTES - 1}", "Accept-Encoding": "identity"}
    async with open_stream(client, url, guard, headers) as response:
        if response.status_code == 206:
            total = response.headers.get("content-range", "").rpartition("/")[2]
        elif response.status_code == 200:
            total = response.headers.get("content-length", "")
        else:
            raise _Unfetchable(f"HTTP {response.status_code}")
        head = b""
        async for chunk in response.aiter_bytes():
            head += chunk
            if len(head) >= HEAD_BYTES:
                break
    return head[:HEAD_BYTES], int(total) if total.isdigit() else None
