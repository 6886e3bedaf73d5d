"""Settings (``receiver.config.load_settings``) and the two secrets
(``receiver.credentials``): defaults, the TOML file, the environment winning over it, errors
that name the variable, and secrets generated once and kept in the database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from receiver import credentials
from receiver.config import DEFAULT_API_BASE, ConfigError, Settings, load_settings
from submitter.tokens import CallbackTokens

EXT = "kh-config-0001"


@pytest.fixture(autouse=True)
def no_kling_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment without KLING_* variables."""
    for name in list(os.environ):
        if name.upper().startswith("KLING_"):
            monkeypatch.delenv(name)


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kling-hooks.toml"
    path.write_text(text)
    return path


def test_defaults_without_environment_or_file() -> None:
    settings = load_settings()
    assert settings.kling_api_base == DEFAULT_API_BASE == "https://api-singapore.klingai.com"
    assert settings.kling_hooks_db == Path("./kling-hooks.db")
    assert settings.kling_api_key is None
    assert settings.kling_hooks_secret is None
    assert settings.kling_hooks_api_token is None
    assert settings.kling_hooks_max_body_bytes == 1024 * 1024
    assert settings.plugins == {}


def test_toml_file_values_are_used(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        """
kling_api_base = "http://127.0.0.1:9000/kling"
kling_hooks_public_url = "https://hooks.example.com"
kling_hooks_db = "/var/lib/kling-hooks/db.sqlite"
kling_hooks_max_body_bytes = 4096
kling_hooks_log_format = "json"

[plugins.slack]
webhook_url = "https://hooks.slack.example/T000"
""",
    )
    settings = load_settings(path)
    assert settings.kling_api_base == "http://127.0.0.1:9000/kling"
    assert settings.kling_hooks_public_url == "https://hooks.example.com"
    assert settings.kling_hooks_db == Path("/var/lib/kling-hooks/db.sqlite")
    assert settings.kling_hooks_max_body_bytes == 4096
    assert settings.kling_hooks_log_format == "json"
    assert settings.plugins == {"slack": {"webhook_url": "https://hooks.slack.example/T000"}}


def test_environment_wins_over_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml(
        tmp_path,
        'kling_hooks_public_url = "https://from-file.example"\n'
        "kling_hooks_max_body_bytes = 4096\n"
        'kling_hooks_log_level = "debug"\n',
    )
    monkeypatch.setenv("KLING_HOOKS_PUBLIC_URL", "https://from-env.example")
    monkeypatch.setenv("KLING_HOOKS_MAX_BODY_BYTES", "8192")
    settings = load_settings(path)
    assert settings.kling_hooks_public_url == "https://from-env.example"
    assert settings.kling_hooks_max_body_bytes == 8192
    assert settings.kling_hooks_log_level == "debug"  # not in the environment: the file's


def test_command_line_override_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLING_HOOKS_DB", str(tmp_path / "from-env.db"))
    assert load_settings(kling_hooks_db=tmp_path / "flag.db").kling_hooks_db == (
        tmp_path / "flag.db"
    )
    # An unset flag (None) leaves the environment's value alone.
    assert load_settings(kling_hooks_db=None).kling_hooks_db == tmp_path / "from-env.db"


def test_precedence_is_flag_then_environment_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml(
        tmp_path,
        "kling_hooks_busy_timeout_ms = 1\n"
        "kling_hooks_retry_after_s = 1\n"
        "kling_hooks_shutdown_grace_s = 1\n",
    )
    monkeypatch.setenv("KLING_HOOKS_BUSY_TIMEOUT_MS", "2")
    monkeypatch.setenv("KLING_HOOKS_RETRY_AFTER_S", "2")
    settings = load_settings(path, kling_hooks_busy_timeout_ms=3)
    assert settings.kling_hooks_busy_timeout_ms == 3  # flag over environment and file
    assert settings.kling_hooks_retry_after_s == 2  # environment over file
    assert settings.kling_hooks_shutdown_grace_s == 1.0  # file over default
    assert settings.kling_hooks_max_body_bytes == 1024 * 1024  # default


def test_values_given_in_code_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_HOOKS_DB", "/from/env.db")
    assert Settings(kling_hooks_db=Path("/given.db")).kling_hooks_db == Path("/given.db")
    assert Settings().kling_hooks_db == Path("/from/env.db")


def test_a_config_file_applies_to_one_load_only(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kling_hooks_public_url = "https://from-file.example"\n')
    assert load_settings(path).kling_hooks_public_url == "https://from-file.example"
    assert load_settings().public_url == "http://127.0.0.1:8000"
    assert Settings().public_url == "http://127.0.0.1:8000"


def test_plugin_tables_go_into_plugins_with_their_nested_values(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'kling_hooks_db = "k.db"\n\n[plugins.downloader]\ndirectory = "/d"\n'
        "retry_schedule_s = [1, 5]\n\n[plugins.slack]\nenabled = false\n",
    )
    assert load_settings(path).plugins == {
        "downloader": {"directory": "/d", "retry_schedule_s": [1, 5]},
        "slack": {"enabled": False},
    }


def test_every_bad_value_is_named_in_one_message(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kling_hooks_retry_after_s = 0\nkling_hooks_log_level = "loud"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith("bad setting: ")
    assert "KLING_HOOKS_RETRY_AFTER_S: " in message
    assert "KLING_HOOKS_LOG_LEVEL: " in message
    assert "\n" not in message


def test_secret_values_are_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_API_KEY", "kling-key-value")
    monkeypatch.setenv("KLING_HOOKS_SECRET", "callback-secret-value")
    monkeypatch.setenv("KLING_HOOKS_API_TOKEN", "api-token-value")
    settings = load_settings()
    shown = repr(settings)
    for value in ("kling-key-value", "callback-secret-value", "api-token-value"):
        assert value not in shown
    assert settings.kling_api_key is not None
    assert settings.kling_api_key.get_secret_value() == "kling-key-value"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KLING_HOOKS_MAX_BODY_BYTES", "abc"),
        ("KLING_HOOKS_MAX_BODY_BYTES", "100"),  # under the 1024 minimum
        ("KLING_HOOKS_BUSY_TIMEOUT_MS", "-1"),
        ("KLING_HOOKS_RETRY_AFTER_S", "0"),
        ("KLING_HOOKS_LOG_LEVEL", "loud"),
        ("KLING_HOOKS_LOG_FORMAT", "xml"),
    ],
)
def test_bad_environment_value_raises_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert name in str(caught.value)


def test_bad_toml_value_raises_config_error_naming_the_variable(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kling_hooks_max_body_bytes = "lots"\n')
    with pytest.raises(ConfigError, match="KLING_HOOKS_MAX_BODY_BYTES"):
        load_settings(path)


def test_unknown_toml_key_raises_config_error_naming_it(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kling_hooks_public_ulr = "https://typo.example"\n')
    with pytest.raises(ConfigError, match="KLING_HOOKS_PUBLIC_ULR"):
        load_settings(path)


def test_upper_case_toml_keys_are_read_as_lower_case(tmp_path: Path) -> None:
    path = toml(tmp_path, 'KLING_HOOKS_PUBLIC_URL = "https://upper.example"\n')
    assert load_settings(path).kling_hooks_public_url == "https://upper.example"


@pytest.mark.parametrize("case", ["invalid-toml", "missing-file", "directory"])
def test_unreadable_or_invalid_toml_raises_config_error_naming_the_file(
    tmp_path: Path, case: str
) -> None:
    if case == "invalid-toml":
        path = toml(tmp_path, "kling_hooks_db = [unclosed\n")
    elif case == "missing-file":
        path = tmp_path / "absent.toml"
    else:
        path = tmp_path
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"cannot read config file {path}: ")


def test_api_url_defaults_to_the_local_serve_address_not_the_public_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLING_HOOKS_PUBLIC_URL", "https://hooks.example.com/")
    settings = load_settings()
    assert settings.api_url == "http://127.0.0.1:8000"
    assert settings.api_url_source.startswith("the local serve address, KLING_HOOKS_HOST and")
    monkeypatch.setenv("KLING_HOOKS_API_URL", "http://10.1.2.3:8100/")
    settings = load_settings()
    assert (settings.api_url, settings.api_url_source) == (
        "http://10.1.2.3:8100",
        "KLING_HOOKS_API_URL",
    )


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1", 8000, "http://127.0.0.1:8000"),
        ("0.0.0.0", 18101, "http://127.0.0.1:18101"),
        ("::", 8001, "http://127.0.0.1:8001"),
        ("::1", 8002, "http://[::1]:8002"),
        ("hooks.internal", 80, "http://hooks.internal:80"),
    ],
)
def test_public_and_api_urls_default_to_where_serve_listens(
    monkeypatch: pytest.MonkeyPatch, host: str, port: int, url: str
) -> None:
    monkeypatch.setenv("KLING_HOOKS_HOST", host)
    monkeypatch.setenv("KLING_HOOKS_PORT", str(port))
    settings = load_settings()
    assert (settings.public_url, settings.api_url, settings.local_url) == (url, url, url)
    monkeypatch.setenv("KLING_HOOKS_PUBLIC_URL", "https://hooks.example.com/")
    assert load_settings().public_url == "https://hooks.example.com"
    assert load_settings().api_url == url  # never the public URL


# -- the provider profile and the base URL -------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "provider", "api_base"),
    [
        ({}, "official", "https://api-singapore.klingai.com"),
        ({"KLING_PROVIDER": "hingnet"}, "hingnet", "https://models.hingnet.com.cn/kling"),
        ({"KLING_PROVIDER": "cometapi"}, "cometapi", "https://api.cometapi.com/kling"),
        ({"KLING_PROVIDER": "OFFICIAL"}, "official", "https://api-singapore.klingai.com"),
        ({"KLING_PROVIDER": ""}, "official", "https://api-singapore.klingai.com"),
        (
            {"KLING_API_BASE": "https://api.cometapi.com"},
            "cometapi",
            "https://api.cometapi.com/kling",
        ),
        (
            {"KLING_API_BASE": "https://models.hingnet.com.cn/kling/"},
            "hingnet",
            "https://models.hingnet.com.cn/kling",
        ),
        (
            {"KLING_API_BASE": "https://api-beijing.klingai.com"},
            "official",
            "https://api-beijing.klingai.com",
        ),
        ({"KLING_API_BASE": "http://127.0.0.1:9000"}, "official", "http://127.0.0.1:9000"),
        (
            {"KLING_PROVIDER": "cometapi", "KLING_API_BASE": "http://127.0.0.1:9000"},
            "cometapi",
            "http://127.0.0.1:9000/kling",
        ),
        (
            {"KLING_PROVIDER": "hingnet", "KLING_API_BASE": "http://127.0.0.1:9000/kling"},
            "hingnet",
            "http://127.0.0.1:9000/kling",
        ),
    ],
)
def test_provider_is_the_setting_else_inferred_from_the_base_urls_host_else_official(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], provider: str, api_base: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.provider.name == provider
    assert settings.kling_api_base == api_base


def test_provider_and_base_url_are_read_from_the_toml_file(tmp_path: Path) -> None:
    path = toml(tmp_path, 'kling_provider = "cometapi"\nkling_api_base = "http://127.0.0.1:9/"\n')
    settings = load_settings(path)
    assert (settings.provider.name, settings.kling_api_base) == (
        "cometapi",
        "http://127.0.0.1:9/kling",
    )


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        (
            "KLING_PROVIDER",
            "kling",
            "'kling' is not a provider: one of official, hingnet, cometapi",
        ),
        (
            "KLING_API_BASE",
            "api.cometapi.com",
            "'api.cometapi.com' is not an http(s) URL with a host",
        ),
        ("KLING_API_BASE", "https://models.hingnet.com.cn/kling/v1", "ends in /v1"),
        ("KLING_API_BASE", "https://host:port", "has a bad port"),
        ("KLING_HOOKS_PUBLIC_URL", "hooks.example.com", "is not an http(s) URL with a host"),
        ("KLING_HOOKS_API_URL", "127.0.0.1:8000", "is not an http(s) URL with a host"),
    ],
)
def test_a_bad_provider_or_url_is_one_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"bad setting: {name}: ")
    assert named in message
    assert "\n" not in message


# -- the two secrets -----------------------------------------------------------------------


async def test_comma_separated_secrets_all_verify_and_the_first_signs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLING_HOOKS_SECRET", "new-secret, old-secret,,")
    monkeypatch.setenv("KLING_HOOKS_API_TOKEN", "token")
    creds = await credentials.resolve(load_settings(), None)  # no database needed
    assert creds.secrets == ["new-secret", "old-secret"]
    tokens = creds.tokens
    assert tokens.sign(EXT) == CallbackTokens(["new-secret"]).sign(EXT)
    assert tokens.sign(EXT) != CallbackTokens(["old-secret"]).sign(EXT)
    assert tokens.verify(EXT, CallbackTokens(["old-secret"]).sign(EXT))
    assert not tokens.verify(EXT, CallbackTokens(["other"]).sign(EXT))
    assert not tokens.verify("kh-other", tokens.sign(EXT))
    assert creds.api_token == "token"
    assert creds.api_token_generated is False


async def test_unset_secrets_are_generated_once_and_kept_in_the_database(
    tmp_path: Path,
) -> None:
    settings = load_settings(kling_hooks_db=tmp_path / "kling-hooks.db")
    first = await credentials.resolve_from_file(settings)
    second = await credentials.resolve_from_file(settings)
    assert len(first.secrets) == 1 and first.secrets[0]
    assert first.api_token and first.api_token != first.secrets[0]
    assert first.api_token_generated is True
    assert second.api_token_generated is False
    assert (second.secrets, second.api_token) == (first.secrets, first.api_token)
    assert second.tokens.sign(EXT) == first.tokens.sign(EXT)


async def test_another_database_gets_other_generated_secrets(tmp_path: Path) -> None:
    one = await credentials.resolve_from_file(load_settings(kling_hooks_db=tmp_path / "a.db"))
    two = await credentials.resolve_from_file(load_settings(kling_hooks_db=tmp_path / "b.db"))
    assert one.secrets != two.secrets
    assert one.api_token != two.api_token


async def test_secret_from_environment_and_token_from_database_combine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLING_HOOKS_SECRET", "env-secret")
    settings = load_settings(kling_hooks_db=tmp_path / "kling-hooks.db")
    first = await credentials.resolve_from_file(settings)
    second = await credentials.resolve_from_file(settings)
    assert first.secrets == second.secrets == ["env-secret"]
    assert first.api_token == second.api_token
    assert (first.api_token_generated, second.api_token_generated) == (True, False)


async def test_secret_that_must_come_from_the_database_needs_a_connection() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="callback_secret"):
        await credentials.resolve(settings, None)


@pytest.mark.parametrize(
    "variable", ["KLING_HOOKS_API_TOKEN", "KLING_HOOKS_SECRET", "KLING_API_KEY", "KLING_SECRET_KEY"]
)
@pytest.mark.parametrize("blank", ["", "  ", " , "])
def test_blank_secret_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, blank: str
) -> None:
    monkeypatch.setenv(variable, blank)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_toml_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('kling_hooks_public_url = "http://caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load_settings(bad)


def test_bad_command_line_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KLING_HOOKS_MAX_BODY_BYTES"):
        load_settings(kling_hooks_max_body_bytes="lots")


def test_command_line_override_is_checked_like_any_other_value() -> None:
    with pytest.raises(ConfigError, match=r"bad setting: KLING_HOOKS_API_TOKEN: .*blank"):
        load_settings(kling_hooks_api_token="  ")
    with pytest.raises(ConfigError, match="bad setting: KLING_HOOKS_MAX_BODY_BYTES: "):
        load_settings(kling_hooks_max_body_bytes=10)  # under the 1024 minimum


def test_relative_paths_in_the_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = folder / "kling-hooks.toml"
    path.write_text('kling_hooks_db = "data/k.db"\nkling_hooks_plugins_dir = "plugins"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path)
    assert settings.kling_hooks_db == folder / "data" / "k.db"
    assert settings.kling_hooks_plugins_dir == folder / "plugins"
    monkeypatch.setenv("KLING_HOOKS_DB", "here.db")  # the environment's stay as given
    assert load_settings(path).kling_hooks_db == Path("here.db")
