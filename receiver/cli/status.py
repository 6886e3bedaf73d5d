"""The commands that read the status API of a running receiver, or its token.

``tasks``, ``task``, ``deliveries``, ``redeliver``, ``plugins`` (through
``receiver.status_client``, printed by ``receiver.tables``), ``token`` and ``secret``. The API
token is ``KLING_HOOKS_API_TOKEN``, or else read from the receiver's database (``--db``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, get_args

import click
from pydantic import BaseModel

from receiver import credentials
from receiver.cli.options import (
    EXIT_OK,
    json_option,
    load,
    page_options,
    parse_since,
    settings_options,
    url_option,
)
from receiver.models import DeliveryPage, DeliveryState, ReplayableState, TaskPage
from receiver.status_client import StatusClient
from receiver.tables import delivery_table, plugins_table, task_view, tasks_table
from submitter.protocol import Route, TaskStatus

T = TypeVar("T")


def _ask(
    url: str | None,
    config: Path | None,
    db: Path | None,
    request: Callable[[StatusClient], Awaitable[T]],
) -> T:
    """Run ``request`` against the status API at ``url`` (default ``settings.api_url``),
    authenticated with the API token (``KLING_HOOKS_API_TOKEN`` or the receiver's database).

    Raises:
        ApiError: the answer was not 200. httpx.HTTPError: the receiver could not be reached.
        ConfigError: a bad setting, or no token and no database.
    """

    async def run() -> T:
        settings = load(config, db)
        token = await credentials.api_token_from_file(settings)
        async with StatusClient(
            url or settings.api_url, token, source="--url" if url else settings.api_url_source
        ) as client:
            return await request(client)

    return asyncio.run(run())


def _print_page(page: TaskPage | DeliveryPage, table: str, as_json: bool) -> int:
    """A page of a list: its JSON, or ``table`` then the hint for the next page, if any."""
    if as_json:
        click.echo(_json(page))
        return EXIT_OK
    click.echo(table)
    if page.next_cursor:
        click.echo(f"(more: --cursor {page.next_cursor})")
    return EXIT_OK


def _json(answer: BaseModel) -> str:
    """An answer as the API sent it, indented."""
    return answer.model_dump_json(indent=2)


@click.command()
@click.option(
    "--status",
    type=click.Choice([s.value for s in TaskStatus]),
    show_default="any",
    help="only tasks in this task_status",
)
@click.option(
    "--route",
    type=click.Choice([r.value for r in Route]),
    metavar="ROUTE",
    show_default="any",
    help="only tasks of this route: " + ", ".join(r.value for r in Route),
)
@page_options
def tasks(
    status: str | None,
    route: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    url: str | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """List tasks from the status API, newest first."""
    page = _ask(
        url,
        config,
        db,
        lambda c: c.tasks(task_status=status, route=route, limit=limit, cursor=cursor),
    )
    return _print_page(page, tasks_table(page.tasks), as_json)


@click.command()
@click.argument("task_id", metavar="ID")
@json_option
@url_option
@settings_options
def task(task_id: str, as_json: bool, url: str | None, config: Path | None, db: Path | None) -> int:
    """Show one task by task_id or external_task_id."""
    answer = _ask(url, config, db, lambda c: c.task(task_id))
    click.echo(_json(answer) if as_json else task_view(answer))
    return EXIT_OK


@click.command()
@click.option(
    "--state",
    type=click.Choice([s.value for s in DeliveryState]),
    show_default="any",
    help="only deliveries in this state",
)
@click.option("--plugin", show_default="any", help="only deliveries to this plugin")
@page_options
def deliveries(
    state: str | None,
    plugin: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    url: str | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """List deliveries to plugins from the status API, newest first."""
    page = _ask(
        url,
        config,
        db,
        lambda c: c.deliveries(state=state, plugin=plugin, limit=limit, cursor=cursor),
    )
    return _print_page(page, delivery_table(page.deliveries, with_task=True), as_json)


@click.command()
@click.argument("delivery_id", metavar="[ID]", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="every delivery matching the filter")
@click.option("--plugin", show_default="any", help="with --all: only deliveries to this plugin")
@click.option(
    "--state",
    type=click.Choice(get_args(ReplayableState)),
    show_default="dead",
    help="with --all: only deliveries in this state",
)
@click.option(
    "--since",
    metavar="WHEN",
    callback=parse_since,
    show_default="any time",
    help="with --all: only deliveries created at or after WHEN: Unix ms, or an ISO 8601 "
    "date-time (UTC unless it has an offset)",
)
@url_option
@settings_options
def redeliver(
    delivery_id: int | None,
    replay_all: bool,
    plugin: str | None,
    state: str | None,
    since: int | None,
    url: str | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """Replay one delivery by ID, or --all matching a filter.

    ID is a delivery's id, as `kling-hooks deliveries` lists them. A replay puts the delivery
    back to pending, due now, with a fresh retry schedule.
    """
    if replay_all == (delivery_id is not None):
        raise click.UsageError("give one delivery ID or --all")
    if delivery_id is not None:
        if plugin or state or since is not None:
            raise click.UsageError("--plugin, --state and --since go with --all")
        count = _ask(url, config, db, lambda c: c.redeliver(delivery_id))
    else:
        count = _ask(
            url,
            config,
            db,
            lambda c: c.redeliver_all(state=state or "dead", plugin=plugin, since_ms=since),
        )
    click.echo(f"{count} {'delivery' if count == 1 else 'deliveries'} replayed")
    return EXIT_OK


@click.command()
@json_option
@url_option
@settings_options
def plugins(as_json: bool, url: str | None, config: Path | None, db: Path | None) -> int:
    """List the plugins the receiver runs.

    With --json, their settings too (secrets masked).
    """
    doc = _ask(url, config, db, lambda c: c.plugins())
    if as_json:
        click.echo(_json(doc))
    elif not doc.plugins:
        click.echo("no plugin enabled (add a [plugins.NAME] table to the config file)")
    else:
        click.echo(plugins_table(doc.plugins))
    return EXIT_OK


@click.command()
@settings_options
def token(config: Path | None, db: Path | None) -> int:
    """Print the status API token.

    It is KLING_HOOKS_API_TOKEN, or else the one the receiver generated on its first start and
    keeps in its database.
    """
    settings = load(config, db)
    click.echo(asyncio.run(credentials.api_token_from_file(settings)))
    return EXIT_OK


@click.command()
@settings_options
def secret(config: Path | None, db: Path | None) -> int:
    """Print the callback secret: the first of KLING_HOOKS_SECRET, the one that signs.

    It is KLING_HOOKS_SECRET, or else the one the receiver generated on its first start and
    keeps in its database. Code that submits tasks elsewhere needs it to sign callback URLs.
    """
    settings = load(config, db)
    click.echo(asyncio.run(credentials.callback_secret_from_file(settings)))
    return EXIT_OK
