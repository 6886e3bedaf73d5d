"""Kling authentication: the JWT of the official API and the bearer key of resellers."""

from __future__ import annotations

import httpx
import jwt
import pytest

from submitter import AuthNotConfigured, BearerAuth, KlingJWTAuth, auth_from_keys
from submitter.auth import auth_for
from submitter.providers import COMETAPI, HINGNET, OFFICIAL, Provider

ACCESS_KEY = "AKtestaccesskey0123456789abcdef0"
SECRET_KEY = "SKtestsecretkey0123456789abcdef0123"  # >= 32 bytes: PyJWT warns below that
NOW = 1_774_805_076.7


class Clock:
    """A settable clock, Unix epoch seconds."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decode(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(
        token,
        SECRET_KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    return claims


def send(auth: httpx.Auth, statuses: list[int]) -> list[str]:
    """Send one GET through ``auth``; the server answers with ``statuses`` in turn.

    Returns the ``Authorization`` header of each request the server saw (copied on arrival:
    httpx re-sends the same Request object).
    """
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(statuses[len(seen) - 1])

    with httpx.Client(transport=httpx.MockTransport(handler), auth=auth) as client:
        client.get("https://api.example.com/v1/images/generations/1")
    return seen


def test_jwt_carries_kling_claims_and_header() -> None:
    auth = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=Clock())
    token = auth.token()
    now = int(NOW)

    claims = decode(token)
    assert claims == {"iss": ACCESS_KEY, "exp": now + 1800, "nbf": now - 5}
    assert all(isinstance(v, int) for k, v in claims.items() if k != "iss")
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_jwt_signed_with_another_secret_does_not_verify() -> None:
    token = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=Clock()).token()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token,
            "another-secret-key-of-32-bytes-or-more",
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_nbf": False},
        )


def test_jwt_is_reused_until_fewer_than_refresh_margin_seconds_remain() -> None:
    clock = Clock()
    auth = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=clock, refresh_margin_s=60)
    first = auth.token()

    clock.now = NOW + 1800 - 61  # 61 s left (to the integer exp: 60.3 s)
    assert auth.token() == first

    clock.now = NOW + 1800 - 59  # under a minute left: a new token
    second = auth.token()
    assert second != first
    assert decode(second)["exp"] == int(clock.now) + 1800
    assert auth.token() == second


def test_jwt_auth_sets_bearer_header_with_current_token() -> None:
    auth = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=Clock())
    assert send(auth, [200]) == [f"Bearer {auth.token()}"]


def test_jwt_auth_retries_once_with_a_fresh_token_when_a_cached_token_gets_401() -> None:
    clock = Clock()
    auth = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=clock)
    cached = auth.token()
    clock.now += 10  # a fresh token differs from the cached one by its claims

    assert send(auth, [401, 200]) == [f"Bearer {cached}", f"Bearer {auth.token()}"]
    assert auth.token() != cached


def test_jwt_auth_does_not_retry_a_401_to_a_freshly_minted_token() -> None:
    auth = KlingJWTAuth(ACCESS_KEY, SECRET_KEY, clock=Clock())
    assert len(send(auth, [401])) == 1


def test_jwt_auth_repr_shows_no_secret() -> None:
    text = repr(KlingJWTAuth(ACCESS_KEY, SECRET_KEY))
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"access_key": "", "secret_key": SECRET_KEY}, "non-empty"),
        ({"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "refresh_margin_s": 1800}, "1800"),
        ({"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "refresh_margin_s": -1}, "-1"),
    ],
)
def test_jwt_auth_refuses_empty_keys_and_a_margin_outside_the_lifetime(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KlingJWTAuth(**kwargs)  # type: ignore[arg-type]


def test_bearer_auth_sends_the_reseller_key() -> None:
    assert send(BearerAuth("reseller-key-123"), [200]) == ["Bearer reseller-key-123"]


def test_bearer_auth_repr_hides_the_key() -> None:
    assert "reseller-key-123" not in repr(BearerAuth("reseller-key-123"))


def test_api_key_wins_over_access_and_secret_keys() -> None:
    auth = auth_from_keys("reseller-key-123", ACCESS_KEY, SECRET_KEY)
    assert isinstance(auth, BearerAuth)
    assert send(auth, [200]) == ["Bearer reseller-key-123"]


def test_access_and_secret_keys_give_jwt_auth() -> None:
    auth = auth_from_keys(None, ACCESS_KEY, SECRET_KEY)
    assert isinstance(auth, KlingJWTAuth)
    assert decode(auth.token())["iss"] == ACCESS_KEY


def test_empty_api_key_counts_as_unset() -> None:
    assert isinstance(auth_from_keys("", ACCESS_KEY, SECRET_KEY), KlingJWTAuth)


@pytest.mark.parametrize(
    ("api_key", "access_key", "secret_key", "missing"),
    [
        (None, None, None, None),
        ("", "", "", None),
        (None, ACCESS_KEY, None, "KLING_SECRET_KEY is missing"),
        (None, None, SECRET_KEY, "KLING_ACCESS_KEY is missing"),
    ],
)
def test_missing_credentials_raise_auth_not_configured_naming_the_variables(
    api_key: str | None, access_key: str | None, secret_key: str | None, missing: str | None
) -> None:
    with pytest.raises(AuthNotConfigured) as info:
        auth_from_keys(api_key, access_key, secret_key)
    message = str(info.value)
    for variable in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY"):
        assert variable in message
    if missing:
        assert missing in message
    assert SECRET_KEY not in message


# --- the provider profile's auth (auth_for) -------------------------------------------------


@pytest.mark.parametrize("provider", [HINGNET, COMETAPI])
def test_a_bearer_provider_sends_the_api_key_even_when_a_jwt_pair_is_set(
    provider: Provider,
) -> None:
    auth = auth_for(provider, "reseller-key", ACCESS_KEY, SECRET_KEY)
    assert isinstance(auth, BearerAuth)
    assert send(auth, [200]) == ["Bearer reseller-key"]


def test_the_official_provider_signs_a_jwt_even_when_an_api_key_is_set() -> None:
    auth = auth_for(OFFICIAL, "some-key", ACCESS_KEY, SECRET_KEY)
    assert isinstance(auth, KlingJWTAuth)
    assert decode(send(auth, [200])[0].removeprefix("Bearer "))["iss"] == ACCESS_KEY


def test_the_official_provider_without_a_pair_sends_the_api_key_as_before() -> None:
    assert isinstance(auth_for(OFFICIAL, "gateway-key", None, None), BearerAuth)
    with pytest.raises(AuthNotConfigured, match="KLING_SECRET_KEY is missing"):
        auth_for(OFFICIAL, None, ACCESS_KEY, "")


@pytest.mark.parametrize("provider", [HINGNET, COMETAPI])
def test_a_bearer_provider_without_an_api_key_names_the_provider_and_the_variable(
    provider: Provider,
) -> None:
    with pytest.raises(AuthNotConfigured) as caught:
        auth_for(provider, "", ACCESS_KEY, SECRET_KEY)
    assert str(caught.value) == (
        f"no Kling credentials: provider {provider.name} takes a bearer key: set KLING_API_KEY"
        " (KLING_ACCESS_KEY and KLING_SECRET_KEY sign the official API's JWT)"
    )
