"""The receiver's two secrets: the callback URL secret(s) and the status API token.

Each comes from its environment variable (``KLING_HOOKS_SECRET``, ``KLING_HOOKS_API_TOKEN``)
or, when that is unset, is generated once and kept in the database's ``meta`` table, so the
submitter (same database) and the receiver agree without configuration. On Postgres
(``KLING_HOOKS_DATABASE_URL``) the table is the shared database's: every replica reads the
same secrets, and replicas starting together create each one once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosqlite

from receiver import store
from receiver.config import ConfigError, Settings
from receiver.errors import StoreUnavailable
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


#: ``meta(key)``: the stored value of ``key``, created with a new secret if absent, and
#: whether it was created just now.
Meta = Callable[[str], Awaitable[tuple[str, bool]]]


async def resolve(
    settings: Settings, conn: aiosqlite.Connection | None, *, meta: Meta | None = None
) -> Credentials:
    """Read or create both secrets; the database (``conn``, open and migrated; or ``meta``,
    another store's) is needed only for those the environment does not set.

    Raises:
        ValueError: a secret must come from the database and neither was given.
    """

    async def from_db(key: str) -> tuple[str, bool]:
        if meta is not None:
            return await meta(key)
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
    if settings.kling_hooks_database_url is not None:
        return await _resolve_postgres(settings, must_exist=must_exist)
    path = settings.kling_hooks_db
    if must_exist and not path.exists():
        needed = "KLING_HOOKS_API_TOKEN"
        if settings.kling_hooks_secret is None and settings.kling_hooks_api_token is None:
            needed = "KLING_HOOKS_SECRET and KLING_HOOKS_API_TOKEN"
        elif settings.kling_hooks_secret is None:
            needed = "KLING_HOOKS_SECRET"
        raise ConfigError(
            f"no database at {path.resolve()}: give the receiver's (--config FILE, --db PATH or "
            f"KLING_HOOKS_DB; KLING_HOOKS_DATABASE_URL on Postgres), or set {needed} to the"
            " receiver's values"
        )
    conn = await store.connect(path)
    try:
        await store.migrate(conn)
        return await resolve(settings, conn)
    finally:
        await conn.close()


async def _resolve_postgres(settings: Settings, *, must_exist: bool) -> Credentials:
    """:func:`resolve_from_file` on Postgres: the shared database's ``meta`` table (migrated
    first, unless ``must_exist``: then a database no receiver made is refused).

    Raises:
        ConfigError: ``must_exist`` and the database holds no kling-hooks schema.
        StoreUnavailable: the server cannot be reached.
    """
    import psycopg

    from receiver.store import postgres  # psycopg is loaded for Postgres only

    assert settings.kling_hooks_database_url is not None
    url = settings.kling_hooks_database_url.get_secret_value()
    try:
        conn = await asyncio.to_thread(postgres.connect, url)
    except psycopg.Error as exc:
        raise postgres.unreachable(exc) from None
    try:
        if must_exist:
            if await asyncio.to_thread(postgres.schema_version, conn) == 0:
                raise ConfigError(
                    "KLING_HOOKS_DATABASE_URL: the database holds no kling-hooks schema: start"
                    " a receiver on it first, or set KLING_HOOKS_SECRET and KLING_HOOKS_API_TOKEN"
                )
        else:
            await asyncio.to_thread(postgres.migrate, conn)

        async def meta(key: str) -> tuple[str, bool]:
            get = functools.partial(postgres.get_or_create_meta, conn, key, new_secret)
            return await asyncio.to_thread(get)

        return await resolve(settings, None, meta=meta)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"Postgres: {exc}") from None
    finally:
        conn.close()


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
