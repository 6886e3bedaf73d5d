"""SSRF-safe fetching for plugins: :mod:`submitter.safehttp`, with refusals made permanent.

The rules (only http(s); unless ``allow_private_hosts``, every address a host resolves to must
be public; the connection is pinned to the checked address; redirects are followed here, each
hop checked) are defined once, in :mod:`submitter.safehttp`, which the submitter's image checks
use too. This module only adapts them to the plugin API: a refused URL raises
:class:`UnsafeURL`, a :class:`~receiver.plugins.PermanentError`, so a plugin that lets it
propagate dead-letters the delivery (no retry can make a loopback host public).

A plugin fetches through :func:`open_stream` and a :class:`submitter.safehttp.Guard`, as the
downloader does::

    async with open_stream(client, url, Guard(settings.allow_private_hosts)) as response:
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx

from receiver.plugins import PermanentError
from submitter import safehttp
from submitter.safehttp import Guard

__all__ = ["UnsafeURL", "open_stream"]


class UnsafeURL(PermanentError, safehttp.UnsafeURL):
    """A URL that must not be fetched (see :class:`submitter.safehttp.UnsafeURL`); a
    :class:`PermanentError`, so the delivery goes to ``dead`` at once."""


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    guard: Guard,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """:func:`submitter.safehttp.open_stream`: GET ``url`` under ``guard``, following
    redirects; yields the final response, its body not read yet, and closes it at the end.

    Raises:
        UnsafeURL: a hop was refused, or more than ``guard.max_redirects`` redirects.
        httpx.HTTPError: a network error (``ConnectError`` after every address failed...).
    """
    try:
        async with safehttp.open_stream(client, url, guard, headers) as response:
            yield response
    except safehttp.UnsafeURL as exc:
        if isinstance(exc, UnsafeURL):
            raise
        raise UnsafeURL(str(exc)) from exc
