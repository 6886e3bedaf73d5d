"""The receiver's two secrets: the callback URL secret(s) and the status API token.

Each comes from its environment variable (``KLING_HOOKS_SECRET``, ``KLING_HOOKS_API_TOKEN``)
or, when that is unset, is generated once and kept in the database's ``meta`` table, so the
submitter (same database) and the receiver agree without configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiosqlite

from receiver import store
from receiver.config import ConfigError, Settings
from submitter.tokens import CallbackTokens, new_secret, parse_secrets


@dataclass(frozen=True)
class Credentials:
    """``secrets``: callback secrets, signing one first. ``api_token_generated``: True when the
    API token was created just now (the server then says in its log how to read it)."""

    secrets: list[str]
    api_token: str
    api_token_generated: bool
    tokens: CallbackTokens = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", CallbackTokens(self.secrets))


async def resolve(settings: Settings, conn: aiosqlite.Connection | None) -> Credentials:
    """Read or create both secrets; ``conn`` (open, migrated) is needed only for those the
    environment does not set.

    Raises:
        ValueError: a secret must come from the database and ``conn`` is None.
    """

    async def from_db(key: str) -> tuple[str, bool]:
        if conn is None:
            raise ValueError(f"{key} is not configured and no database was given")
        return await store.get_or_create_meta(conn, key, new_secret)

    if settings.kling_hooks_secret is not None:
        secrets = parse_secrets(settings.kling_hooks_secret.get_secret_value())
    else:
        secrets = [(await from_db("callback_secret"))[0]]
    if settings.kling_hooks_api_token is not None:
        return Credentials(secrets, settings.kling_hooks_api_token.get_secret_value(), False)
    token, created = await from_db("api_token")
    return Credentials(secrets, token, created)


async def resolve_from_file(settings: Settings, *, must_exist: bool = False) -> Credentials:
    """Like :func:`resolve`, opening (and migrating) the database ``KLING_HOOKS_DB`` only when
    a secret is not set in the environment.

    Args:
        must_exist: Refuse to create the database (commands that read what a running
            receiver made: a new file would hold a token no receiver uses).

    Raises:
        ConfigError: ``must_exist`` and there is no database at that path.
    """
    if settings.kling_hooks_secret is not None and settings.kling_hooks_api_token is not None:
        return await resolve(settings, None)
    path = settings.kling_hooks_db
    if must_exist and not path.exists():
        needed = "KLING_HOOKS_API_TOKEN"
        if settings.kling_hooks_secret is None and settings.kling_hooks_api_token is None:
            needed = "KLING_HOOKS_SECRET and KLING_HOOKS_API_TOKEN"
        elif settings.kling_hooks_secret is None:
            needed = "KLING_HOOKS_SECRET"
        raise ConfigError(
            f"no database at {path.resolve()}: give the receiver's (--config FILE, --db PATH or "
            f"KLING_HOOKS_DB), or set {needed} to the receiver's values"
        )
    conn = await store.connect(path)
    try:
        await store.migrate(conn)
        return await resolve(settings, conn)
    finally:
        await conn.close()


async def api_token_from_file(settings: Settings) -> str:
    """The status API token, for commands that call a running receiver: from
    ``KLING_HOOKS_API_TOKEN`` when set (no database needed), else from the receiver's database.

    Raises:
        ConfigError: the token is not set and there is no database at ``KLING_HOOKS_DB``.
    """
    if settings.kling_hooks_api_token is not None:
        return settings.kling_hooks_api_token.get_secret_value()
    return (await resolve_from_file(settings, must_exist=True)).api_token


async def callback_secret_from_file(settings: Settings) -> str:
    """The signing callback secret (the first of ``KLING_HOOKS_SECRET``), for commands that
    sign callback URLs elsewhere: from the environment when set (no database needed), else
    the one the receiver generated and keeps in its database.

    Raises:
        ConfigError: the secret is not set and there is no database at ``KLING_HOOKS_DB``.
    """
    if settings.kling_hooks_secret is not None:
        return parse_secrets(settings.kling_hooks_secret.get_secret_value())[0]
    return (await resolve_from_file(settings, must_exist=True)).secrets[0]
