"""The commands that ask Kling itself rather than our store: ``kling get``, ``kling list``
and ``reconcile``.

``reconcile`` is the safety net for a lost callback, not a poll. Kling documents no retry of
its callbacks (PROTOCOL.md section 4), so a task whose terminal callback came while the
receiver was down would stay ``processing`` for ever. ``reconcile`` looks only at the tasks
our store holds as ``submitted`` or ``processing`` whose latest transition is older than a
cutoff, queries each once, and hands each answer to the receiver (``POST
/tasks/{id}/reconcile``), which records it exactly as it records a callback: same dedupe,
same state machine, same outbox, so plugins get the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from receiver import credentials
from receiver.cli.options import (
    EXIT_ERROR,
    EXIT_OK,
    json_option,
    load,
    parse_duration,
    settings_options,
    url_option,
)
from receiver.cli.submit import kling_auth
from receiver.config import Settings
from receiver.models import TaskSummary
from receiver.status_client import ApiError, StatusClient
from receiver.tables import format_table, kling_task_view, kling_tasks_table
from submitter.protocol import Route, TaskStatus, now_ms

if TYPE_CHECKING:
    from submitter import KlingClient

#: Tasks not finished, as ``reconcile`` looks for them.
_OPEN = (TaskStatus.SUBMITTED, TaskStatus.PROCESSING)


@contextlib.asynccontextmanager
async def kling_client(settings: Settings) -> AsyncIterator[KlingClient]:
    """A client of the configured Kling system (``KLING_API_BASE``, its provider profile),
    for queries only.

    Raises:
        AuthNotConfigured: the provider's keys are not set.
    """
    from submitter import KlingClient

    async with KlingClient(
        api_base=settings.kling_api_base, provider=settings.provider, auth=kling_auth(settings)
    ) as client:
        yield client


@click.group()
def kling() -> None:
    """Ask Kling itself (not our store) about tasks: one, or a page of them."""


@kling.command("get")
@click.argument("route", type=click.Choice([r.value for r in Route]), metavar="ROUTE")
@click.argument("task_id", metavar="ID")
@json_option
@settings_options
def kling_get(route: str, task_id: str, as_json: bool, config: Path | None, db: Path | None) -> int:
    """Show one task as Kling answers for it: ID is its task_id or external_task_id."""

    async def run() -> str:
        async with kling_client(load(config, db)) as client:
            task = await client.query(route, task_id)
        return task.model_dump_json(indent=2) if as_json else kling_task_view(task)

    click.echo(asyncio.run(run()))
    return EXIT_OK


@kling.command("list")
@click.argument("route", type=click.Choice([r.value for r in Route]), metavar="ROUTE")
@click.option("--page", type=int, default=1, help="Kling's pageNum, 1 to 1000")
@click.option("--page-size", type=int, default=30, help="Kling's pageSize, 1 to 500")
@json_option
@settings_options
def kling_list(
    route: str, page: int, page_size: int, as_json: bool, config: Path | None, db: Path | None
) -> int:
    """List the tasks Kling holds for ROUTE, one page, as Kling orders them."""

    async def run() -> str:
        async with kling_client(load(config, db)) as client:
            tasks = await client.list(route, page_num=page, page_size=page_size)
        if as_json:
            return json.dumps([t.model_dump(mode="json") for t in tasks], indent=2)
        return kling_tasks_table(tasks)

    click.echo(asyncio.run(run()))
    return EXIT_OK


@dataclass(frozen=True)
class Reconciled:
    """What ``reconcile`` did with one overdue task."""

    task: TaskSummary
    kling_status: TaskStatus | None
    result: str


@click.command()
@click.option(
    "--older-than",
    "older_than_ms",
    default="2h",
    callback=parse_duration,
    help="only tasks whose latest transition is older than this (2h, 30m, 90s, 1d)",
)
@click.option("--limit", type=click.IntRange(1), default=100, help="most tasks to query")
@click.option("--rate", type=click.FloatRange(min=0.1), default=2.0, help="queries per second")
@click.option("--dry-run", is_flag=True, help="query Kling, but record nothing")
@url_option
@settings_options
def reconcile(
    older_than_ms: int,
    limit: int,
    rate: float,
    dry_run: bool,
    url: str | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """Recover tasks whose callbacks were lost: query each overdue task once.

    Looks only at tasks the receiver holds as submitted or processing whose latest transition
    is older than --older-than; each Kling answer is recorded as its callback would have been
    (plugins get the event). Exit 1 when a query failed.
    """
    settings = load(config, db)

    async def run() -> list[Reconciled]:
        token = await credentials.api_token_from_file(settings)
        async with (
            StatusClient(
                url or settings.api_url, token, source="--url" if url else settings.api_url_source
            ) as api,
            kling_client(settings) as client,
        ):
            cutoff_ms = now_ms() - older_than_ms
            return await reconcile_overdue(api, client, cutoff_ms, limit, rate, dry_run=dry_run)

    done = asyncio.run(run())
    rows = [
        (r.task.external_task_id, r.task.route, r.task.task_status, r.kling_status, r.result)
        for r in done
    ]
    click.echo(format_table(["external_task_id", "route", "stored", "kling", "result"], rows))
    moved = sum(r.result in (_RECORDED_NEW, _WOULD_RECORD) for r in done)
    failed = sum(r.result.startswith(("error", "not queried")) for r in done)
    verb = "would move" if dry_run else "moved"
    click.echo(f"{len(done)} overdue, {moved} {verb} forward, {failed} failed")
    return EXIT_ERROR if failed else EXIT_OK


_RECORDED_NEW = "recorded (new)"
_WOULD_RECORD = "would record (dry run)"
#: Kling's answers after which ``reconcile`` stops asking: it keeps refusing for rate.
_RATE_CODES = frozenset({1302, 1303})


async def reconcile_overdue(
    api: StatusClient,
    client: KlingClient,
    cutoff_ms: int,
    limit: int,
    rate: float,
    *,
    dry_run: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Reconciled]:
    """Query each overdue task once and hand every answer that differs to the receiver.

    Args:
        api: The receiver's status API.
        client: The Kling system the tasks were created on.
        cutoff_ms: Only tasks whose latest transition was received before, Unix ms.
        limit: Most tasks queried.
        rate: Most queries a second; ``sleep(1 / rate)`` is awaited between two.
        dry_run: Query, but record nothing.

    Returns:
        One :class:`Reconciled` per overdue task, oldest query first. Once Kling keeps
        refusing for rate (1302/1303 after the client's own retries with backoff) or cannot
        be reached, the tasks left are not queried ("not queried: ...").
    """
    overdue = await _overdue(api, cutoff_ms, limit)
    done: list[Reconciled] = []
    stopped: str | None = None
    for task in overdue:
        if stopped is not None:
            done.append(Reconciled(task, None, f"not queried: {stopped}"))
            continue
        if done:
            await sleep(1 / rate)
        result, stopped = await _reconcile_one(api, client, task, dry_run)
        done.append(result)
    return done


async def _overdue(api: StatusClient, cutoff_ms: int, limit: int) -> list[TaskSummary]:
    """The unfinished tasks whose latest transition was received before ``cutoff_ms``."""
    found: list[TaskSummary] = []
    for status in _OPEN:
        cursor: str | None = None
        while len(found) < limit:
            page = await api.tasks(
                task_status=status,
                transition_before=cutoff_ms,
                limit=min(limit - len(found), 500),
                cursor=cursor,
            )
            found += page.tasks
            cursor = page.next_cursor
            if cursor is None:
                break
    return found[:limit]


async def _reconcile_one(
    api: StatusClient, client: KlingClient, task: TaskSummary, dry_run: bool
) -> tuple[Reconciled, str | None]:
    """What one query did, and why to stop querying (None: go on)."""
    from submitter.errors import KlingAPIError, KlingUnreachable, SubmitterError

    if task.route is None:
        return Reconciled(task, None, "skipped: route unknown (never registered)"), None
    try:
        answer = await client.query(task.route, task.task_id)
    except KlingAPIError as exc:
        if exc.code == 1203 or exc.http_status == 404:  # Kling no longer has it
            return Reconciled(task, None, f"skipped: unknown at Kling ({exc.code})"), None
        stop = f"Kling refuses for rate ({exc.code})" if exc.code in _RATE_CODES else None
        return Reconciled(task, None, f"error: {exc}"[:200]), stop
    except KlingUnreachable as exc:
        return Reconciled(task, None, f"error: {exc}"[:200]), "Kling cannot be reached"
    except SubmitterError as exc:
        return Reconciled(task, None, f"error: {exc}"[:200]), None
    if answer.task_status == task.task_status:
        return Reconciled(task, answer.task_status, "unchanged"), None
    if dry_run:
        return Reconciled(task, answer.task_status, _WOULD_RECORD), None
    try:
        verdict = await api.reconcile(task.task_id, answer)
    except ApiError as exc:
        return Reconciled(task, answer.task_status, f"error: {exc}"[:200]), None
    return Reconciled(task, answer.task_status, f"recorded ({verdict})"), None
