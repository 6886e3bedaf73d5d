"""``kling-hooks config check [FILE]`` and ``kling-hooks config show``: the settings as
``serve`` would read them (receiver.config), checked or printed with where each came from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from receiver.cli.options import ANY_PATH, EXIT_OK, settings_options
from receiver.config import Settings, load_settings, setting_sources
from receiver.plugins.registry import LoadedPlugin, load_plugins
from receiver.tables import format_table

MASK = "**********"


@click.group()
def config() -> None:
    """Check or show the settings (environment over the TOML file over the defaults)."""


def _read(file: Path | None, db: Path | None = None) -> tuple[Settings, list[LoadedPlugin]]:
    """The settings and the enabled plugins, validated as ``serve`` validates them.

    Raises:
        ConfigError: one line naming the bad key (exit 2).
    """
    settings = load_settings(file, kling_hooks_db=db)
    plugins = load_plugins(
        settings.plugins, settings.kling_hooks_plugins_dir, base_dir=settings.config_dir
    )
    return settings, plugins


@config.command()
@click.argument("file", type=ANY_PATH, required=False)
def check(file: Path | None) -> int:
    """Validate FILE (and the environment over it) as serve would: every setting and every
    [plugins.NAME] table. Exit 0 when all is well, 2 naming every bad key."""
    _, plugins = _read(file)
    where = str(file) if file is not None else "the environment (no file)"
    names = ", ".join(p.name for p in plugins) or "none"
    click.echo(f"ok: {where} (plugins: {names})")
    return EXIT_OK


def _shown(value: Any) -> str:
    if isinstance(value, SecretStr):
        return MASK
    if value is None:
        return "-"
    return str(value)


@config.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
@settings_options
def show(as_json: bool, config: Path | None, db: Path | None) -> int:
    """Print the effective settings, secrets masked, and where each came from (default,
    file, environment, flag). Plugin tables are shown as their plugins read them."""
    settings, plugins = _read(config, db)
    sources = setting_sources(config, kling_hooks_db=db)
    rows: list[tuple[str, str, str]] = [
        (name.upper(), _shown(getattr(settings, name)), sources[name])
        for name in Settings.model_fields
        if name != "plugins"
    ]
    rows.append(("(provider in effect)", settings.provider.name, "derived"))
    rows.append(("(public URL in effect)", settings.public_url, "derived"))
    rows.append(("(status API URL in effect)", settings.api_url, "derived"))
    for loaded in plugins:
        table = settings.plugins[loaded.name]
        for key, value in loaded.describe(started=False).settings.items():
            source = "file" if key in table else "default"
            rows.append((f"plugins.{loaded.name}.{key}", json.dumps(value), source))
    if as_json:
        doc = {name: {"value": value, "source": source} for name, value, source in rows}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_table(["setting", "value", "source"], rows))
    return EXIT_OK
