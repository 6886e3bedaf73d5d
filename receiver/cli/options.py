"""The options several ``kling-hooks`` commands share, each defined once, and the settings
they load.

``settings_options`` (``--config``, ``--db``) goes on every command that reads settings;
``url_option`` and ``json_option`` on those that call the status API; ``page_options`` adds
``--limit`` and ``--cursor`` for the paged lists; ``parse_duration`` reads a duration option
(``prune`` and ``reconcile`` --older-than). Every option has help text and shows its default
(``show_default`` comes from the group's context settings).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from receiver.config import Settings, duration_ms, load_settings
from receiver.logging import configure_logging
from receiver.models import DEFAULT_LIMIT, MAX_LIMIT

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: ``submit``: the task was created at Kling, but the receiver could not record it.
EXIT_UNREGISTERED = 3

#: The group's context settings, inherited by every command.
CONTEXT_SETTINGS: dict[str, Any] = {
    "show_default": True,
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
}
ANY_PATH = click.Path(path_type=Path)


def parse_duration(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """Click callback for a duration option (``prune`` and ``reconcile`` --older-than):
    ``2h``, ``30m``, ``90s``, ``1d`` or seconds, as milliseconds.

    Raises:
        click.BadParameter: not a duration (``receiver.config.duration_ms``'s message).
    """
    try:
        return duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def settings_options(f: F) -> F:
    """``--config FILE`` and ``--db PATH``: where the command's settings come from."""
    f = click.option(
        "--db",
        type=ANY_PATH,
        show_default="KLING_HOOKS_DB, else ./kling-hooks.db",
        help="the receiver's SQLite file (given, it wins over KLING_HOOKS_DATABASE_URL)",
    )(f)
    return click.option(
        "--config",
        type=ANY_PATH,
        show_default="none",
        help="TOML file with settings (the environment wins over it)",
    )(f)


url_option = click.option(
    "--url",
    show_default="KLING_HOOKS_API_URL, else the local serve address",
    help="status API base URL",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="print the API's JSON answer instead of a table"
)
limit_option = click.option(
    "--limit",
    type=int,
    default=DEFAULT_LIMIT,
    help=f"page size, 1 to {MAX_LIMIT}",
)
cursor_option = click.option(
    "--cursor", show_default="the first page", help="next page: the cursor a previous page printed"
)


def page_options(f: F) -> F:
    """``--limit``, ``--cursor``, ``--json``, ``--url`` and the settings options: a paged list
    from the status API."""
    return limit_option(cursor_option(json_option(url_option(settings_options(f)))))


def load(config: Path | None, db: Path | None, *, quiet: bool = True, **overrides: Any) -> Settings:
    """The settings of ``--config`` and ``--db`` (``overrides``, named like the settings, win
    too), with logging set up; ``quiet`` commands log errors only (they print their own
    warnings).

    ``--db PATH`` names a SQLite file, so given, it wins over ``KLING_HOOKS_DATABASE_URL`` as
    any command-line option wins over the environment.

    Raises:
        ConfigError: a bad setting or an unreadable config file.
    """
    settings = load_settings(config, kling_hooks_db=db, **overrides)
    if db is not None and settings.kling_hooks_database_url is not None:
        settings = settings.model_copy(update={"kling_hooks_database_url": None})
    level = settings.kling_hooks_log_level
    if quiet and level in ("debug", "info", "warning"):
        level = "error"
    configure_logging(settings.kling_hooks_log_format, level)
    return settings


def since_ms(value: str) -> int:
    """``--since``: Unix ms, or an ISO 8601 date or date-time (UTC unless it has an offset).

    Raises:
        ValueError: neither, or before 1970 (the message quotes ``value``).
    """
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither Unix ms nor an ISO 8601 date-time (2026-03-01T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = (when - datetime.fromtimestamp(0, UTC)) // timedelta(milliseconds=1)
    if ms < 0:
        raise ValueError(f"{value!r} is before 1970")
    return ms


def parse_since(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Click callback of ``--since``: :func:`since_ms`, a bad value being a usage error."""
    if value is None:
        return None
    try:
        return since_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
