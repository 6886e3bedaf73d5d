"""Plugin discovery and configuration: entry points, --plugins-dir, and start-up errors that
name the plugin and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import ConfigError
from receiver.plugins.registry import ENTRY_POINT_GROUP, load_plugins

SINGLE_FILE = """
from pydantic import SecretStr
from receiver.plugins import Plugin, PluginSettings


class EchoSettings(PluginSettings):
    target: str
    token: SecretStr | None = None


class Echo(Plugin):
    name = "echo"
    version = "2.1"
    settings_model = EchoSettings

    async def handle(self, event):
        return None


plugin = Echo
"""


def write_plugin(directory: Path, text: str = SINGLE_FILE, name: str = "echo.py") -> Path:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)
    return directory


def test_builtin_plugins_are_advertised_as_entry_points() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert found["downloader"] == "receiver.plugins.downloader:Downloader"
    assert found["slack"] == "receiver.plugins.slack:SlackNotifier"
    assert found["webhook"] == "receiver.plugins.webhook:WebhookForwarder"


def test_single_file_plugin_is_loaded_from_the_plugins_dir(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins")
    [loaded] = load_plugins({"echo": {"target": "x", "token": "s3cret"}}, folder)
    assert loaded.name == "echo"
    assert loaded.origin == str(folder / "echo.py")
    described = loaded.describe(started=True).model_dump(mode="json")
    assert described["version"] == "2.1"
    assert described["settings"]["target"] == "x"
    assert described["settings"]["token"] == "**********"
    assert "s3cret" not in repr(described)


def test_plugin_without_a_table_is_not_loaded(tmp_path: Path) -> None:
    assert load_plugins({}, write_plugin(tmp_path / "plugins")) == []


def test_enabled_false_turns_a_plugin_off(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins")
    assert load_plugins({"echo": {"enabled": False, "target": "x"}}, folder) == []


def test_a_switched_off_table_needs_no_other_key() -> None:
    # Switching Slack off must not require its webhook URL (nor the plugin to be importable).
    assert load_plugins({"slack": {"enabled": False}, "nosuch": {"enabled": False}}) == []
    with pytest.raises(ConfigError, match=r"plugins\.slack\.enabled: Input should be a valid"):
        load_plugins({"slack": {"enabled": "no"}})


def test_unknown_key_is_refused_naming_plugin_and_key(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins")
    with pytest.raises(ConfigError, match=r"plugins\.echo\.colour: Extra inputs are not permitted"):
        load_plugins({"echo": {"target": "x", "colour": "red"}}, folder)


def test_missing_and_wrong_values_are_refused_naming_plugin_and_key(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins")
    with pytest.raises(ConfigError, match=r"plugins\.echo\.target: Field required"):
        load_plugins({"echo": {}}, folder)
    with pytest.raises(ConfigError, match=r"plugins\.echo\.retry_schedule_s\.1: "):
        load_plugins({"echo": {"target": "x", "retry_schedule_s": [5, -1]}}, folder)
    with pytest.raises(ConfigError, match=r"plugins\.echo\.statuses\.0: Input should be"):
        load_plugins({"echo": {"target": "x", "statuses": ["succeeded"]}}, folder)


def test_unknown_plugin_name_lists_the_installed_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        load_plugins({"nosuch": {}})
    message = str(caught.value)
    assert message.startswith("plugins.nosuch: no plugin named 'nosuch' is installed (found: ")
    assert "downloader" in message and "slack" in message and "webhook" in message


def test_a_plugin_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.slack must be a table"):
        load_plugins({"slack": "yes"})


def test_plugin_file_that_fails_to_import_is_a_config_error(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins", "raise RuntimeError('broken on purpose')\n")
    with pytest.raises(ConfigError, match=r"cannot load plugin file .*echo\.py: broken on purpose"):
        load_plugins({}, folder)


def test_plugin_file_without_a_plugin_attribute_is_a_config_error(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins", "x = 1\n")
    with pytest.raises(ConfigError, match=r"defines no `plugin = <Plugin subclass>`"):
        load_plugins({}, folder)


def test_plugin_attribute_must_be_a_plugin_class(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "plugins", "plugin = dict\n")
    with pytest.raises(ConfigError, match=r"is not a kling-hooks Plugin subclass"):
        load_plugins({}, folder)


def test_plugins_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a directory"):
        load_plugins({}, tmp_path / "missing")


def test_shipped_config_example_loads_with_its_plugins() -> None:
    from receiver.config import load_settings

    example = Path(__file__).parent.parent / "systemd" / "config.toml.example"
    settings = load_settings(example)
    [downloader] = load_plugins(settings.plugins)
    assert downloader.name == "downloader"
    assert settings.kling_hooks_shutdown_grace_s == 10
