"""Finding plugins and building the enabled ones from the config file.

Sources, in order: the entry-point group ``kling_hooks.plugins`` of every installed
distribution (kling-hooks itself registers its built-ins there), then each ``*.py`` file of
``--plugins-dir`` that defines ``plugin = SomePluginClass``. Only the plugins with a
``[plugins.NAME]`` table (and ``enabled`` not false) are built; their tables are validated
against their ``settings_model`` at start-up, and every problem is a :class:`ConfigError`
naming the plugin and the key.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError

from receiver.config import ConfigError
from receiver.models import PluginInfo
from receiver.plugins import Plugin, PluginSettings
from submitter.protocol import field_errors

ENTRY_POINT_GROUP = "kling_hooks.plugins"
_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class LoadedPlugin:
    """An enabled plugin: the instance and where it came from."""

    plugin: Plugin
    origin: str  # "entry point <dist> <version>" or the file's path

    @property
    def name(self) -> str:
        return self.plugin.name

    def describe(self, *, started: bool) -> PluginInfo:
        """The plugin as ``GET /plugins`` shows it, secrets masked.

        Args:
            started: Whether its ``start()`` succeeded (the dispatcher knows).
        """
        p = self.plugin
        return PluginInfo(
            name=p.name,
            version=str(p.version),
            origin=self.origin,
            statuses=sorted(p.statuses),
            routes=None if p.routes is None else sorted(p.routes),
            settings=_masked(p.settings.model_dump(mode="python")),
            started=started,
        )


MASK = "**********"


def masked_url(url: str) -> str:
    """``url`` with its query string's values and any ``user:password@`` masked (a token
    often rides there: ``https://host/hook?token=...``); other text is returned unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all ("http://[bad"): shown masked, whole
        return MASK if url.startswith(("http://", "https://")) else url
    if parts.scheme not in ("http", "https") or not (parts.query or "@" in parts.netloc):
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(not value for _, value in pairs):  # a bare token (?s3cr3t) parses as a name
        query = MASK
    else:
        query = "&".join(f"{name}={MASK}" for name, _ in pairs)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        parts._replace(netloc=netloc if netloc == parts.netloc else f"{MASK}@{netloc}", query=query)
    )


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, str):
        return masked_url(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _from_entry_points(wanted: set[str]) -> dict[str, tuple[type[Plugin], str]]:
    found: dict[str, tuple[type[Plugin], str]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in wanted or ep.name in found:
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown"
        try:
            cls = ep.load()
        except Exception as exc:
            raise ConfigError(f"plugins.{ep.name}: cannot import {ep.value}: {exc}") from None
        cls = _check_class(cls, ep.name, ep.value)
        if cls.name != ep.name:  # one name everywhere: table, outbox rows, GET /plugins
            raise ConfigError(
                f"plugins.{ep.name}: the entry point names {ep.value}, whose name is "
                f"{cls.name!r}; an entry point's name must be its plugin's name"
            )
        found[ep.name] = (cls, f"entry point ({dist})")
    return found


def _from_directory(directory: Path) -> dict[str, tuple[type[Plugin], str]]:
    if not directory.is_dir():
        raise ConfigError(f"--plugins-dir {directory} is not a directory")
    found: dict[str, tuple[type[Plugin], str]] = {}
    for path in sorted(directory.glob("*.py")):
        module_name = f"kling_hooks_local_plugins.{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load plugin file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"cannot load plugin file {path}: {exc}") from None
        if not hasattr(module, "plugin"):
            raise ConfigError(f"plugin file {path} defines no `plugin = <Plugin subclass>`")
        cls = _check_class(module.plugin, path.stem, str(path))
        if cls.name in found:
            raise ConfigError(f"plugins.{cls.name}: defined twice in {directory}")
        found[cls.name] = (cls, str(path))
    return found


def _check_class(obj: Any, label: str, where: str) -> type[Plugin]:
    if not (isinstance(obj, type) and issubclass(obj, Plugin)):
        raise ConfigError(f"plugins.{label}: {where} is not a kling-hooks Plugin subclass")
    if not _NAME.match(obj.name or ""):
        raise ConfigError(f"plugins.{label}: {where} has no valid name (want [a-z0-9_-]+)")
    return obj


def load_plugins(
    tables: Mapping[str, Any], plugins_dir: Path | None = None, *, base_dir: Path | None = None
) -> list[LoadedPlugin]:
    """Build every enabled plugin.

    Args:
        tables: The config file's ``[plugins]`` table: ``{name: {key: value}}``.
        plugins_dir: A directory of single-file plugins (``--plugins-dir``), or None.
        base_dir: The config file's folder: a relative path setting of a plugin (a
            ``Path`` field, such as the downloader's ``directory``) is taken relative to it.

    Returns:
        The enabled plugins, in the order of ``tables``. A table with ``enabled = false`` is
        skipped without importing or validating its plugin. A plugin in ``plugins_dir``
        wins over an installed one of the same name.

    Raises:
        ConfigError: a table names no installed plugin, is not a table, or has a bad value
            (``plugins.slack.webhook_url: Field required``); a plugin cannot be imported.
    """
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"plugins.{name} must be a table ([plugins.{name}])")
        if not isinstance(table.get("enabled", True), bool):
            raise ConfigError(f"plugins.{name}.enabled: Input should be a valid boolean")
    # A table with enabled = false is switched off: neither imported nor validated further.
    tables = {name: table for name, table in tables.items() if table.get("enabled", True)}
    local = _from_directory(plugins_dir) if plugins_dir is not None else {}
    installed = _from_entry_points(set(tables) - set(local))
    loaded: list[LoadedPlugin] = []
    for name, table in tables.items():
        if name in local:
            cls, origin = local[name]
        elif name in installed:
            cls, origin = installed[name]
        else:
            known = sorted({*local, *_entry_point_names()})
            raise ConfigError(
                f"plugins.{name}: no plugin named {name!r} is installed "
                f"(found: {', '.join(known) or 'none'})"
            )
        try:
            settings = cls.settings_model.model_validate(dict(table))
        except ValidationError as exc:
            problems = "; ".join(
                f"plugins.{name}.{field}: {message}"
                for field, message in field_errors(exc, root="*")
            )
            raise ConfigError(f"bad plugin setting: {problems}") from None
        if base_dir is not None:
            settings = _relative_to(settings, base_dir)
        loaded.append(LoadedPlugin(cls(settings), origin))
    return loaded


def _relative_to(settings: PluginSettings, base_dir: Path) -> PluginSettings:
    """``settings`` with each relative ``Path`` value made relative to ``base_dir``."""
    moved = {
        name: base_dir / value
        for name, value in settings
        if isinstance(value, Path) and not value.is_absolute()
    }
    return settings.model_copy(update=moved) if moved else settings


def _entry_point_names() -> set[str]:
    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
