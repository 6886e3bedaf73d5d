"""Fetching URLs that someone else chose without letting them reach our own network (SSRF).

Code that fetches a URL it was handed must not become a way to read our own machine or
network: ``http://127.0.0.1:8080/admin``, a cloud metadata endpoint such as
``http://169.254.169.254/``, or a host name whose DNS answer points inside. Two users, one
definition: the receiver's downloader plugin (result URLs from callback bodies, through
:mod:`receiver.plugins.safehttp`, which makes refusals ``PermanentError``) and the submitter's
image checks (image URLs of a create body, :mod:`submitter.images`).
The rules, applied to the first URL and to every redirect hop alike:

* Only ``http`` and ``https`` URLs are fetched; anything else (``file:``, ``ftp:``...) is
  refused.
* The host is resolved **once** per hop (``loop.getaddrinfo``; an IP literal is taken as
  is), and unless private hosts are allowed, **every** address must be public: an answer
  holding a loopback, private, link-local, multicast, reserved, unspecified or otherwise
  non-global address (IPv4 addresses inside IPv6 ones, ``::ffff:127.0.0.1``, included) is
  refused with :class:`UnsafeURL` naming the host and the address.
* The connection goes to a checked address, not to the name (which could resolve differently
  a moment later: DNS rebinding): the request's URL carries the address, while the ``Host``
  header and the TLS SNI (httpcore's ``sni_hostname`` request extension) keep the name, so
  the server sees a normal request and its certificate is verified against the name.
  Addresses are tried in the resolver's order until one connects.
* Keep-alive is off (:func:`new_client`): connections are pooled by address, so a TLS
  connection verified for one name must never carry a request for another name.
* Redirects are followed here, never by httpx, at most ``max_redirects`` hops, each checked
  as above; the ``Location`` is resolved against the named URL.
* Environment proxies are ignored (``trust_env=False``): the check must apply to the host
  that is actually connected to.

Error messages and logs show URLs through :func:`redact` (no query string: signed URLs carry
their signature there).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx

from submitter.errors import SubmitterError

__all__ = [
    "Guard",
    "Resolver",
    "UnsafeURL",
    "new_client",
    "non_public_reason",
    "open_stream",
    "redact",
    "system_resolver",
]

#: ``resolver(host, port)`` -> the host's addresses as strings, in connection order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeURL(SubmitterError):
    """A URL that must not be fetched: not http(s), a non-public host, or too many redirects.
    The receiver's plugins see it as :class:`receiver.plugins.safehttp.UnsafeURL`, a
    ``PermanentError``."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host`` (``loop.getaddrinfo``), duplicates removed, in order.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def redact(url: httpx.URL | str) -> str:
    """``scheme://host[:port]/path``: the URL without user info, query string or fragment."""
    url = httpx.URL(url)
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"


def non_public_reason(address: str) -> str | None:
    """Why ``address`` is not a public unicast address (``"loopback"``, ``"private"``...), or
    None when it is public. An IPv4 address embedded in an IPv6 one (IPv4-mapped, 6to4,
    Teredo) is judged as well. Categories are Python's :mod:`ipaddress` (IANA registries).

    Raises:
        ValueError: ``address`` is not an IP address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        teredo_client = ip.teredo[1] if ip.teredo else None
        candidates += [a for a in (ip.ipv4_mapped, ip.sixtofour, teredo_client) if a]
    candidates.append(ip)
    for candidate in candidates:
        checks = (
            (candidate.is_unspecified, "unspecified"),
            (candidate.is_loopback, "loopback"),
            (candidate.is_link_local, "link-local"),
            (candidate.is_multicast, "multicast"),
            (candidate.is_reserved, "reserved"),
            (candidate.is_private, "private"),
            (not candidate.is_global, "non-global"),
        )
        for failed, reason in checks:
            if failed:
                return reason
    return None


@dataclass(frozen=True)
class Guard:
    """The checks for one fetch (see the module docstring).

    Attributes:
        allow_private_hosts: True skips the address check (a test rig or an internal CDN);
            the scheme check and the pinning to the resolved address still apply.
        resolver: Resolves a host name; :func:`system_resolver` by default.
        max_redirects: Redirect hops followed before giving up.
        private_hint: Added to the refusal of a non-public host: how the caller's user may
            allow it (the downloader's setting), or "" when they cannot.
    """

    allow_private_hosts: bool = False
    resolver: Resolver = system_resolver
    max_redirects: int = 5
    private_hint: str = ""

    async def addresses(self, url: httpx.URL) -> list[str]:
        """The checked addresses to connect to for ``url``, in order.

        Raises:
            UnsafeURL: the scheme is not http(s), the URL has no host, or (unless private
                hosts are allowed) an address of the host is not public.
            httpx.ConnectError: the host name does not resolve (a network error: retryable).
        """
        if url.scheme not in _DEFAULT_PORTS:
            raise UnsafeURL(
                f"refused {url.scheme or 'relative'!r} URL {redact(url)!r}: only http and"
                " https URLs are fetched"
            )
        host = url.raw_host.decode("ascii")
        if not host:
            raise UnsafeURL(f"refused URL {redact(url)!r}: it has no host")
        found = [host] if _is_ip(host) else await self._resolve(host, url)
        if not self.allow_private_hosts:
            for address in found:
                reason = non_public_reason(address)
                if reason is not None:
                    what = "is" if address == host else f"resolves to {address},"
                    hint = f" ({self.private_hint})" if self.private_hint else ""
                    raise UnsafeURL(f"refused host {host!r}: it {what} a {reason} address{hint}")
        return found

    async def _resolve(self, host: str, url: httpx.URL) -> list[str]:
        try:
            found = await self.resolver(host, url.port or _DEFAULT_PORTS[url.scheme])
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve host {host!r}: {exc}") from None
        if not found:
            raise httpx.ConnectError(f"host {host!r} resolved to no address")
        return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def new_client(*, timeout_s: float, verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` fit for :func:`open_stream`: no keep-alive, no environment
    proxies, no automatic redirects.

    Args:
        timeout_s: httpx's connect, read, write and pool timeout, seconds (each, not total).
        verify: TLS verification: True (system CAs), or an ``ssl.SSLContext``.
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        verify=verify,
    )


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    url: str,
    guard: Guard,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """GET ``url`` under ``guard``, following redirects; yields the final response, whose
    body is not read yet (``response.aiter_bytes()``), and closes it when the block ends.

    The yielded response may have any status; ``response.request.url`` holds the address,
    not the name: use :func:`redact` on ``url`` for messages.

    Raises:
        UnsafeURL: a hop was refused (see :meth:`Guard.addresses`), or more than
            ``guard.max_redirects`` redirects.
        httpx.HTTPError: a network error (``ConnectError`` after every address failed...).
    """
    current = httpx.URL(url)
    for _ in range(guard.max_redirects + 1):
        addresses = await guard.addresses(current)
        response = await _send_pinned(client, current, addresses, headers or {})
        if not response.has_redirect_location:
            try:
                yield response
            finally:
                await response.aclose()
            return
        await response.aclose()
        current = current.join(response.headers["location"])
    raise UnsafeURL(f"refused {redact(url)!r}: more than {guard.max_redirects} redirects")


async def _send_pinned(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], headers: Mapping[str, str]
) -> httpx.Response:
    host = url.raw_host.decode("ascii")
    last_error: httpx.TransportError | None = None
    for address in addresses:
        request = client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={**headers, "Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": host} if url.scheme == "https" else {},
        )
        try:
            return await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            last_error = exc
    assert last_error is not None  # addresses is never empty (Guard.addresses)
    raise last_error
