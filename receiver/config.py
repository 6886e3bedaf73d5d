"""Settings, read once at start-up from the environment and an optional TOML file.

The environment wins over the file. Names are the environment variables'; in the TOML file the
same names are written in lower case (``kling_hooks_db = "/var/lib/kling-hooks/db.sqlite"``).
A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_API_BASE = "https://api-singapore.klingai.com"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable."""


class Settings(BaseSettings):
    """Every setting of kling-hooks (environment variable = field name in upper case)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="forbid", frozen=True)

    kling_api_base: str = DEFAULT_API_BASE
    kling_api_key: SecretStr | None = None
    kling_access_key: str | None = None
    kling_secret_key: SecretStr | None = None
    kling_hooks_public_url: str = DEFAULT_PUBLIC_URL
    kling_hooks_api_url: str | None = None
    kling_hooks_secret: SecretStr | None = None
    kling_hooks_api_token: SecretStr | None = None
    kling_hooks_db: Path = Path("kling-hooks.db")
    kling_hooks_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    kling_hooks_busy_timeout_ms: int = Field(default=5000, ge=0)
    kling_hooks_retry_after_s: int = Field(default=5, ge=1)
    kling_hooks_log_format: Literal["auto", "json", "console"] = "auto"
    kling_hooks_log_level: Literal["debug", "info", "warning", "error"] = "info"
    kling_hooks_plugins_dir: Path | None = None
    kling_hooks_shutdown_grace_s: float = Field(default=10.0, ge=0)
    plugins: dict[str, Any] = Field(default_factory=dict)

    @field_validator(
        "kling_api_key", "kling_secret_key", "kling_hooks_api_token", "kling_hooks_secret"
    )
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # A blank token would let "Authorization: Bearer" through; a blank secret signs nothing.
        if value is not None and not value.get_secret_value().replace(",", "").strip():
            raise ValueError("must not be blank (unset it instead)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then the values given in code (those read from the TOML file).
        return env_settings, init_settings

    @property
    def api_url(self) -> str:
        """Where the status API is reached: ``KLING_HOOKS_API_URL``, else the public URL."""
        return (self.kling_hooks_api_url or self.kling_hooks_public_url).rstrip("/")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings.

    Args:
        config_file: A TOML file (``--config``) whose keys are the settings' names, lower case.
        overrides: Values from command-line flags; they win over the file and the environment.

    Raises:
        ConfigError: the file cannot be read, or a value is wrong (the message names it).
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
            values = {k.lower(): v for k, v in tomllib.loads(text).items()}
        except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError too
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"bad setting: {problems}") from None
    given: dict[str, Any] = {}
    for name, value in overrides.items():
        annotation = Settings.model_fields[name].annotation
        if value is None or annotation is None:
            continue
        try:
            given[name] = TypeAdapter(annotation).validate_python(value)
        except ValidationError as exc:
            raise ConfigError(f"bad setting: {name.upper()}: {exc.errors()[0]['msg']}") from None
    return settings.model_copy(update=given)
