"""Settings, read once at start-up from command-line flags, the environment and a TOML file.

Precedence, highest first: command-line flags (``load_settings(**overrides)``), the
environment, the TOML file (``--config FILE``), the defaults. Names are the environment
variables'; in the TOML file the same names are written in lower case
(``kling_hooks_db = "/var/lib/kling-hooks/db.sqlite"``; upper case is read too), and each
``[plugins.NAME]`` table goes into :attr:`Settings.plugins`. The file is read by
pydantic-settings' own ``TomlConfigSettingsSource``. A bad value stops start-up with a
message naming the variable.

``KLING_PROVIDER`` names the provider profile (:mod:`submitter.providers`); unset, it is
inferred from ``KLING_API_BASE``'s host, else ``official``. ``KLING_API_BASE`` is checked and
normalised here, once: unset, the provider's default; a base without a path gets the
provider's prefix; a trailing ``/v1`` is refused.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from receiver.errors import ConfigError
from submitter import providers
from submitter.protocol import field_errors
from submitter.providers import Provider

__all__ = [
    "DEFAULT_API_BASE",
    "ConfigError",
    "Settings",
    "duration_ms",
    "load_settings",
]

DEFAULT_API_BASE = providers.OFFICIAL.default_api_base  # https://api-singapore.klingai.com
#: Listening on these means "every interface": the local serve address is then loopback's.
_ANY_ADDRESS = {"", "0.0.0.0", "::"}

#: ``2h``, ``30m``, ``90s``, ``1d``, or plain seconds.
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_ms(value: str) -> int:
    """A duration (``2h``, ``30m``, ``90s``, ``1d``, or plain seconds) in milliseconds.

    Raises:
        ValueError: not such a duration (the message quotes ``value``).
    """
    found = _DURATION.match(value.strip().lower())
    if found is None:
        raise ValueError(f"{value!r} is not a duration such as 90d, 2h, 30m or 90s")
    return round(float(found[1]) * _UNIT_S[found[2]] * 1000)


#: The URL schemes libpq takes for Postgres (its documented connection URIs).
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def check_database_url(url: str) -> None:
    """Check a Postgres connection URL as libpq would read it, before anything connects.

    Args:
        url: ``postgresql://[user[:password]@][host][:port][/dbname][?param=value...]``
            (libpq's connection URI, PostgreSQL docs "Connection Strings", 34.1.1).

    Raises:
        ValueError: not a ``postgresql://`` (or ``postgres://``) URL, one libpq cannot
            parse, a port that is not a number in [1, 65535], or no database name (libpq
            would take the user's name: kling-hooks wants it said); the message quotes the
            URL with any password masked.
    """
    shown = _masked(url)
    if not url.startswith(_POSTGRES_SCHEMES):
        raise ValueError(
            f"{shown!r} is not a postgresql:// URL (postgresql://user:password@host:5432/dbname)"
        )
    # psycopg is loaded only when a URL is given: SQLite's receivers never need it.
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        # libpq's message can quote the URL: say what is wrong without it.
        raise ValueError(f"{shown!r} is not a connection URL libpq can read") from exc
    for port in str(params.get("port") or "5432").split(","):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{shown!r} has port {port!r}, not a number in [1, 65535]")
    if not params.get("dbname"):
        raise ValueError(f"{shown!r} names no database: end it with /DBNAME")


def _masked(url: str) -> str:
    """``url`` with the password between ``user:`` and ``@`` replaced by ``***``."""
    return re.sub(r"^([a-z]+://[^:@/]*:)[^@/]*@", r"\1***@", url)


# The TOML file of the Settings being built now: set by load_settings for one construction.
# pydantic-settings chooses sources per class (settings_customise_sources), not per call.
_toml_file: ContextVar[Path | None] = ContextVar("kling_hooks_toml_file", default=None)


class Settings(BaseSettings):
    """Every setting of kling-hooks (environment variable = field name in upper case).

    Values given to the constructor win over the environment, which wins over the TOML file
    (only :func:`load_settings` names one) and the defaults.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="forbid", frozen=True)

    kling_provider: str | None = None
    # "" (unset) becomes the provider's default base URL; always normalised (see below).
    kling_api_base: str = Field(default="", validate_default=True)
    kling_api_key: SecretStr | None = None
    kling_access_key: str | None = None
    kling_secret_key: SecretStr | None = None
    # Unset: the local serve address (see local_url), which only a simulator on this host reaches.
    kling_hooks_public_url: str | None = None
    kling_hooks_api_url: str | None = None
    kling_hooks_secret: SecretStr | None = None
    kling_hooks_api_token: SecretStr | None = None
    kling_hooks_db: Path = Path("kling-hooks.db")
    # postgresql://user:password@host:port/dbname selects Postgres (receiver.store.postgres);
    # unset, KLING_HOOKS_DB (SQLite) is the store. A secret: the URL may hold a password.
    kling_hooks_database_url: SecretStr | None = None
    # Postgres only: this replica's name in the outbox's claims (unset: the host name; each
    # replica of one database needs its own, kept across its restarts), and how many
    # connections serve the status API's and the dashboard's reads.
    kling_hooks_replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:@-]{1,64}$")
    kling_hooks_pg_pool_size: int = Field(default=4, ge=1, le=100)
    kling_hooks_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    kling_hooks_busy_timeout_ms: int = Field(default=5000, ge=0)
    kling_hooks_retry_after_s: int = Field(default=5, ge=1)
    kling_hooks_log_format: Literal["auto", "json", "console"] = "auto"
    kling_hooks_log_level: Literal["debug", "info", "warning", "error"] = "info"
    # uvicorn's access log, one line per request (callback tokens masked): off by default.
    kling_hooks_access_log: bool = False
    kling_hooks_plugins_dir: Path | None = None
    kling_hooks_shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Server: where `serve` listens, and whose X-Forwarded-For / X-Forwarded-Proto it trusts.
    kling_hooks_host: str = "127.0.0.1"
    kling_hooks_port: int = Field(default=8000, ge=0, le=65535)
    kling_hooks_forwarded_allow_ips: str = "127.0.0.1"
    # Limits: requests handled at once (503 + Retry-After past it), and how long a client may
    # take to send its headers and its body (seconds).
    kling_hooks_max_in_flight: int = Field(default=256, ge=1)
    kling_hooks_header_timeout_s: float = Field(default=10.0, gt=0)
    kling_hooks_body_timeout_s: float = Field(default=30.0, gt=0)
    # ... how large its request line and headers may be (431 past it), and how long an idle
    # keep-alive connection stays open (seconds).
    kling_hooks_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    kling_hooks_keep_alive_s: float = Field(default=5.0, gt=0)
    # Observability: the bearer token of GET /metrics (unset: the API token).
    kling_hooks_metrics_token: SecretStr | None = None
    # Retention: what `kling-hooks prune` removes by default (a duration: 90d, 12h, 30m).
    kling_hooks_retention: str = "90d"
    # The dashboard at /ui/ (receiver.ui): on unless false; a sign-in password besides the API
    # token; how long a sign-in lasts (seconds).
    kling_hooks_ui: bool = True
    kling_hooks_ui_password: SecretStr | None = None
    kling_hooks_ui_session_s: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    plugins: dict[str, Any] = Field(default_factory=dict)
    # The folder of the TOML file, if any: relative paths in [plugins.NAME] tables start there.
    _config_dir: Path | None = PrivateAttr(default=None)

    @property
    def config_dir(self) -> Path | None:
        """The folder of the TOML file these settings were read from (None: no file)."""
        return self._config_dir

    @field_validator(
        "kling_api_key",
        "kling_secret_key",
        "kling_hooks_api_token",
        "kling_hooks_secret",
        "kling_hooks_metrics_token",
        "kling_hooks_ui_password",
    )
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # A blank token would let "Authorization: Bearer" through; a blank secret signs nothing.
        if value is not None and not value.get_secret_value().replace(",", "").strip():
            raise ValueError("must not be blank (unset it instead)")
        return value

    @field_validator("kling_hooks_database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_database_url(value.get_secret_value())
        return value

    @field_validator("kling_hooks_retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        if duration_ms(value) == 0:  # ValueError names a value that is no duration
            raise ValueError("must be longer than 0 (it would remove every record)")
        return value

    @property
    def retention_ms(self) -> int:
        """:attr:`kling_hooks_retention` in milliseconds."""
        return duration_ms(self.kling_hooks_retention)

    @field_validator("kling_provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else providers.by_name(value).name

    @field_validator("kling_api_base")
    @classmethod
    def _normalised_api_base(cls, value: str, info: ValidationInfo) -> str:
        """The base URL of Kling, normalised by the provider (:meth:`Provider.api_base`):
        unset means the provider's default; a base without a path gets its prefix; a
        trailing ``/v1`` is refused (it would double as ``/v1/v1/``)."""
        if "kling_provider" not in info.data:  # the provider itself was refused
            return value
        name = info.data["kling_provider"]
        if not value.strip():
            return providers.resolve(name, None).default_api_base
        return providers.resolve(name, value.strip()).api_base(value.strip())

    @field_validator("kling_hooks_public_url", "kling_hooks_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Callbacks and the status API are reached at these: an http(s) URL with a host.
        if value is not None:
            providers.check_url(value)
        return value

    @property
    def provider(self) -> Provider:
        """The effective provider profile: ``KLING_PROVIDER``, else the one inferred from
        ``KLING_API_BASE``'s host, else ``official`` (:func:`submitter.providers.resolve`)."""
        return providers.resolve(self.kling_provider, self.kling_api_base)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor values (the command-line flags), then the environment, then the TOML
        file; no ``.env`` file, no secrets directory.

        Raises:
            ConfigError: the TOML file is missing, unreadable, not UTF-8 or not TOML.
        """
        return init_settings, env_settings, _toml_source(settings_cls, _toml_file.get())

    @property
    def local_url(self) -> str:
        """The address ``serve`` listens on, as a URL: ``http://KLING_HOOKS_HOST:KLING_HOOKS_PORT``
        (``127.0.0.1`` for a host of every interface, ``[::1]``-style brackets for IPv6)."""
        host = self.kling_hooks_host.strip("[]")
        host = "127.0.0.1" if host in _ANY_ADDRESS else host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.kling_hooks_port}"

    @property
    def public_url(self) -> str:
        """The base of every ``callback_url``: ``KLING_HOOKS_PUBLIC_URL``, else
        :attr:`local_url` (right for the simulator on this host, never for Kling itself)."""
        return (self.kling_hooks_public_url or self.local_url).rstrip("/")

    @property
    def api_url(self) -> str:
        """Where the CLI and the submitter reach the status API: ``KLING_HOOKS_API_URL``, else
        :attr:`local_url`, never the public URL (that is Kling's way in, often behind a proxy
        that forwards only the callbacks)."""
        return (self.kling_hooks_api_url or self.local_url).rstrip("/")

    @property
    def api_url_source(self) -> str:
        """What chose :attr:`api_url`, for error messages."""
        if self.kling_hooks_api_url:
            return "KLING_HOOKS_API_URL"
        return (
            "the local serve address, KLING_HOOKS_HOST and KLING_HOOKS_PORT;"
            " set KLING_HOOKS_API_URL to change it"
        )


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file's values, where a relative path setting (``kling_hooks_db``,
    ``kling_hooks_plugins_dir``) is taken relative to the file, not the working directory."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls, toml_file=path)
        if path is None:
            return
        for name, field in settings_cls.model_fields.items():
            value = self.init_kwargs.get(name)
            is_path = field.annotation in (Path, Path | None)
            if is_path and isinstance(value, str) and value and not Path(value).is_absolute():
                self.init_kwargs[name] = str(path.resolve().parent / value)


def _toml_source(settings_cls: type[BaseSettings], path: Path | None) -> TomlConfigSettingsSource:
    """The TOML source of ``path`` (None: an empty one). Unlike the source itself, which skips
    a missing file, a file named with ``--config`` must exist."""
    try:
        if path is not None:
            path.open("rb").close()
        return _TomlFile(settings_cls, path)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError too
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


Source = Literal["default", "file", "environment", "flag"]


def setting_sources(config_file: Path | None = None, **overrides: Any) -> dict[str, Source]:
    """Where each setting of :func:`load_settings` with the same arguments comes from: a flag
    (``overrides`` not None), the environment (the variable is set, in any case), the file
    (its key is there, in either case), else the default. Keyed by field name.

    Raises:
        ConfigError: the file cannot be read.
    """
    in_file = {k.lower() for k in _toml_source(Settings, config_file).toml_data}
    in_env = {k.lower() for k in os.environ}
    sources: dict[str, Source] = {}
    for name in Settings.model_fields:
        if overrides.get(name) is not None:
            sources[name] = "flag"
        elif name in in_env and name != "plugins":
            sources[name] = "environment"
        elif name in in_file:
            sources[name] = "file"
        else:
            sources[name] = "default"
    return sources


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings.

    Args:
        config_file: A TOML file (``--config``) whose keys are the settings' names, lower case.
        overrides: Values from command-line flags, named like the settings; they win over the
            environment and the file. None means "flag not given" and is left out.

    Returns:
        The settings, validated.

    Raises:
        ConfigError: the file cannot be read (``cannot read config file PATH: ...``), or a
            value is wrong (``bad setting: NAME: message``, every bad one, ``; ``-separated).
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    token = _toml_file.set(config_file)
    try:
        settings = Settings(**given)
        if config_file is not None:
            settings._config_dir = config_file.resolve().parent
        return settings
    except ValidationError as exc:
        problems = "; ".join(
            f"{field.upper()}: {message.removeprefix('Value error, ')}"
            for field, message in field_errors(exc, root="settings")
        )
        raise ConfigError(f"bad setting: {problems}") from None
    finally:
        _toml_file.reset(token)
