"""Authentication to Kling: a signed JWT (official API) or a plain bearer key (resellers).

Source: Kling's "General Information" page, summarised in ``docs/kling/PROTOCOL.md``
section 2. The official API wants ``Authorization: Bearer <JWT>``, the JWT being HS256, signed
with the Secret Key, header ``{"alg": "HS256", "typ": "JWT"}``, claims ``iss`` = Access Key,
``exp`` = now + 1800 s, ``nbf`` = now - 5 s. Resellers want ``Authorization: Bearer <api key>``.

Both classes are :class:`httpx.Auth` flows, so they plug into any ``httpx`` client. Neither
ever puts a secret into its ``repr`` or into a log line. :func:`auth_for` picks the flow a
provider profile declares (:mod:`submitter.providers`); :func:`auth_from_keys` picks it from
the keys alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import httpx
import jwt

from submitter.errors import AuthNotConfigured
from submitter.providers import AuthKind, Provider

NBF_LEEWAY_S = 5  # Kling's example signs nbf = now - 5 s, to absorb clock skew.


def _mask(value: str) -> str:
    """The first 4 characters and an ellipsis; enough to tell keys apart in a repr."""
    return f"{value[:4]}..." if len(value) > 4 else "***"


class KlingJWTAuth(httpx.Auth):
    """Signs each request with a short-lived HS256 JWT (Kling's official API).

    The token is cached and re-minted once fewer than ``refresh_margin_s`` seconds remain
    before its ``exp``. If Kling still answers 401 to a cached token (a suspended process, a
    revoked token), one fresh token is minted and the request is sent once more; a 401 to a
    fresh token is returned to the caller as is.

    Args:
        access_key: Kling Access Key; the ``iss`` claim.
        secret_key: Kling Secret Key; the HMAC-SHA256 signing key. PyJWT warns
            (``InsecureKeyLengthWarning``) about keys under 32 bytes; Kling's are 32.
        ttl_s: Token lifetime, seconds; ``exp = now + ttl_s`` (Kling documents 1800).
        refresh_margin_s: Mint a new token when fewer than this many seconds remain.
        clock: Current time, Unix epoch seconds (float); injectable for tests.

    Raises:
        ValueError: a key is empty, or ``refresh_margin_s`` is not in ``[0, ttl_s)``.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        ttl_s: int = 1800,
        refresh_margin_s: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key or not secret_key:
            raise ValueError("access_key and secret_key must both be non-empty")
        if not 0 <= refresh_margin_s < ttl_s:
            raise ValueError(f"refresh_margin_s={refresh_margin_s} is outside [0, {ttl_s})")
        self._access_key = access_key
        self._secret_key = secret_key
        self._ttl_s = ttl_s
        self._refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._token: str | None = None
        self._exp = 0

    def __repr__(self) -> str:
        return f"KlingJWTAuth(access_key={_mask(self._access_key)!r}, secret_key='***')"

    def _mint(self) -> str:
        now = int(self._clock())
        self._exp = now + self._ttl_s
        claims = {"iss": self._access_key, "exp": self._exp, "nbf": now - NBF_LEEWAY_S}
        self._token = jwt.encode(
            claims, self._secret_key, algorithm="HS256", headers={"typ": "JWT"}
        )
        return self._token

    def token(self) -> str:
        """The current JWT (compact form), minted anew when it is near or past its expiry.

        Returns:
            ``header.claims.signature``; reused until fewer than ``refresh_margin_s`` seconds
            remain before ``exp``.
        """
        if self._token is None or self._needs_new_token():
            return self._mint()
        return self._token

    def _needs_new_token(self) -> bool:
        return self._token is None or self._exp - self._clock() < self._refresh_margin_s

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set ``Authorization: Bearer <jwt>``; on a 401 to a cached token, retry once fresh."""
        minted = self._needs_new_token()
        token = self._mint() if minted else self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401 and not minted:
            request.headers["Authorization"] = f"Bearer {self._mint()}"
            yield request


class BearerAuth(httpx.Auth):
    """Sends a fixed key as ``Authorization: Bearer <key>`` (Kling-compatible resellers).

    Args:
        api_key: The reseller's API key.

    Raises:
        ValueError: ``api_key`` is empty.
    """

    def __init__(self, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must be non-empty")
        self._api_key = api_key

    def __repr__(self) -> str:
        return "BearerAuth(api_key='***')"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set ``Authorization: Bearer <key>``."""
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        yield request


def auth_from_keys(
    api_key: str | None, access_key: str | None, secret_key: str | None
) -> httpx.Auth:
    """Choose the auth flow from configured keys (``KLING_API_KEY``, ``KLING_ACCESS_KEY``,
    ``KLING_SECRET_KEY``). Empty strings count as unset.

    Returns:
        :class:`BearerAuth` when ``api_key`` is set (it wins over the pair); otherwise
        :class:`KlingJWTAuth` when both ``access_key`` and ``secret_key`` are set.

    Raises:
        AuthNotConfigured: neither ``api_key`` nor the complete pair is set; the message names
            the variables to set, and which half of the pair is missing.
    """
    if api_key:
        return BearerAuth(api_key)
    if access_key and secret_key:
        return KlingJWTAuth(access_key, secret_key)
    hint = ""
    if access_key:
        hint = " (KLING_ACCESS_KEY is set but KLING_SECRET_KEY is missing)"
    elif secret_key:
        hint = " (KLING_SECRET_KEY is set but KLING_ACCESS_KEY is missing)"
    raise AuthNotConfigured(
        "no Kling credentials: set KLING_API_KEY (reseller key), or KLING_ACCESS_KEY and "
        f"KLING_SECRET_KEY (official API){hint}"
    )


def auth_for(
    provider: Provider, api_key: str | None, access_key: str | None, secret_key: str | None
) -> httpx.Auth:
    """Choose the auth flow of ``provider`` (its :attr:`~submitter.providers.Provider.auth`)
    from the configured keys. Empty strings count as unset.

    Returns:
        For a bearer provider (hingnet, cometapi): :class:`BearerAuth` of ``api_key``. For a
        JWT provider (official): :class:`KlingJWTAuth` when both ``access_key`` and
        ``secret_key`` are set, else :class:`BearerAuth` of ``api_key`` (a gateway in front
        of Kling, or the simulator), as :func:`auth_from_keys` does.

    Raises:
        AuthNotConfigured: the keys this provider needs are not set; the message names the
            provider and the variables to set.
    """
    if provider.auth is AuthKind.JWT:
        if access_key and secret_key:
            return KlingJWTAuth(access_key, secret_key)
        return auth_from_keys(api_key, access_key, secret_key)
    if api_key:
        return BearerAuth(api_key)
    hint = ""
    if access_key or secret_key:
        hint = " (KLING_ACCESS_KEY and KLING_SECRET_KEY sign the official API's JWT)"
    raise AuthNotConfigured(
        f"no Kling credentials: provider {provider.name} takes a bearer key: set "
        f"KLING_API_KEY{hint}"
    )
