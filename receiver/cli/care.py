"""The commands that look after the database: ``prune`` and ``backup``.

``prune`` asks the running receiver (``POST /prune``): one process owns a database, so only
its single writer may delete rows. ``backup`` only reads, so it opens the file itself beside
the running receiver, without the owner lock (``receiver.store.backup``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from receiver import credentials
from receiver.cli.options import (
    ANY_PATH,
    EXIT_OK,
    EXIT_USAGE,
    json_option,
    load,
    parse_duration,
    settings_options,
    url_option,
)
from receiver.models import Pruned, PruneRequest
from receiver.status_client import StatusClient
from receiver.store.backup import backup as backup_database
from receiver.tables import format_time

#: How long ``prune`` waits for the receiver's answer (a large first prune takes a while).
PRUNE_TIMEOUT_S = 3600.0


def _retention(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``--older-than``: a duration above 0 in ms (None: the retention setting)."""
    if value is None:
        return None
    older_than_ms = parse_duration(ctx, param, value)
    if older_than_ms == 0:
        raise click.BadParameter("must be longer than 0 (it would remove every record)")
    return older_than_ms


@click.command()
@click.option(
    "--older-than",
    "older_than_ms",
    callback=_retention,
    show_default="KLING_HOOKS_RETENTION, else 90d",
    help="remove what is older than this (90d, 12h, 30m, 90s)",
)
@click.option("--dry-run", is_flag=True, help="count what would go; remove nothing")
@click.option("--vacuum", is_flag=True, help="then give the freed space back to the disk")
@json_option
@url_option
@settings_options
def prune(
    older_than_ms: int | None,
    dry_run: bool,
    vacuum: bool,
    as_json: bool,
    url: str | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """Remove raw callback bodies and done deliveries older than --older-than.

    The running receiver does it, in small batches between callbacks. Tasks, their
    transitions and saved-file records stay; so do dead deliveries (dead letters, waiting for
    a replay) and a done delivery that a saved file names.
    """
    settings = load(config, db)
    request = PruneRequest(
        older_than_ms=settings.retention_ms if older_than_ms is None else older_than_ms,
        dry_run=dry_run,
        vacuum=vacuum,
    )

    async def run() -> Pruned:
        token = await credentials.api_token_from_file(settings)
        source = "--url" if url else settings.api_url_source
        async with StatusClient(
            url or settings.api_url, token, timeout_s=PRUNE_TIMEOUT_S, source=source
        ) as api:
            return await api.prune(request)

    answer = asyncio.run(run())
    click.echo(answer.model_dump_json(indent=2) if as_json else _pruned_text(answer))
    return EXIT_OK


def _pruned_text(p: Pruned) -> str:
    verb = "would remove" if p.dry_run else "removed"
    lines = [
        f"{verb}: {p.callbacks:,} callbacks, {p.deliveries:,} done deliveries"
        f" (older than {format_time(p.cutoff_ms)})",
        f"kept: {p.dead_kept:,} old dead deliveries (replay or leave them),"
        f" {p.kept_for_files:,} old done deliveries that saved files name",
    ]
    if not p.dry_run:
        lines.append(f"{p.batches:,} batches, the longest {p.longest_batch_ms:.1f} ms")
    if not p.complete:
        lines.append("stopped early (the receiver began to stop): run prune again to go on")
    reclaimed = p.size_bytes_before - p.size_bytes_after
    lines.append(
        f"database: {p.size_bytes_before:,} -> {p.size_bytes_after:,} bytes"
        f" ({reclaimed:,} reclaimed, vacuum {p.vacuum}), {p.free_bytes_after:,} free inside"
    )
    return "\n".join(lines)


def _use_pg_dump(url: str, file: Path) -> str:
    """What to run instead of ``backup`` on Postgres (the URL without its password)."""
    from receiver.store.postgres import describe  # psycopg: for Postgres only

    where = describe(url)
    return (
        f"error: the database is Postgres ({where}): back it up with pg_dump, which copies one"
        " snapshot while the replicas run:\n"
        f"  pg_dump --format=custom --file {file} '{where}'\n"
        f"restore into an empty database with: pg_restore --dbname '{where}' {file}"
    )


@click.command()
@click.argument("file", type=ANY_PATH)
@click.option("--force", is_flag=True, help="replace FILE if it exists")
@settings_options
def backup(file: Path, force: bool, config: Path | None, db: Path | None) -> int:
    """Copy the database to FILE, consistently, while the receiver runs.

    SQLite's backup API copies one snapshot into a temporary file beside FILE, which is
    checked (PRAGMA integrity_check) and then renamed to FILE. To restore: stop the
    receiver, put FILE in place of the database, remove its -wal and -shm files, start.

    On Postgres (KLING_HOOKS_DATABASE_URL) use pg_dump, which copies one snapshot while the
    replicas run: this command prints the pg_dump and pg_restore lines and exits 2.
    """
    settings = load(config, db)
    if settings.kling_hooks_database_url is not None:
        click.echo(
            _use_pg_dump(settings.kling_hooks_database_url.get_secret_value(), file), err=True
        )
        return EXIT_USAGE
    report = backup_database(settings.kling_hooks_db, file, force=force)
    click.echo(
        f"backed up {settings.kling_hooks_db} to {report.path}: {report.tasks:,} tasks,"
        f" {report.transitions:,} transitions, {report.callbacks:,} callbacks,"
        f" {report.deliveries:,} deliveries, schema {report.schema_version},"
        f" {report.size_bytes:,} bytes; integrity ok"
    )
    return EXIT_OK
