"""``kling-hooks migrate-store``: copy a SQLite database into Postgres
(``receiver.store.postgres.copy``).

It takes both databases as options, not from the settings: ``KLING_HOOKS_DB`` and
``KLING_HOOKS_DATABASE_URL`` are not read. It holds the SQLite file's owner lock for the whole
copy (a receiver running on it is refused), migrates the Postgres schema, and prints a line
per committed batch and per table, then a summary.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from receiver.cli.options import EXIT_OK
from receiver.errors import DatabaseLocked, MigrateStoreError
from receiver.store import DatabaseLock

if TYPE_CHECKING:
    from receiver.store.postgres.copy import CopyReport, TableCopy

# psycopg (and the Postgres store) is imported by the command when it runs: a SQLite receiver
# never loads it (tests/test_pg_config.py).

#: Rows per batch by default (one ``COPY`` and one commit each).
DEFAULT_BATCH_ROWS = 5000


def _sqlite_path(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """``--from sqlite:PATH`` as the Path."""
    if not value.startswith("sqlite:") or len(value) == len("sqlite:"):
        raise click.BadParameter(f"{value!r} is not sqlite:PATH", ctx, param)
    return Path(value.removeprefix("sqlite:"))


def _postgres_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--to postgresql://...``, checked to be a Postgres URL."""
    if not value.startswith(("postgresql://", "postgres://")):
        raise click.BadParameter(f"{value!r} is not a postgresql:// URL", ctx, param)
    return value


def shown_url(url: str) -> str:
    """``url`` without its password, to print: ``postgresql://USER@HOST:PORT/DBNAME``."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the --to URL"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


@click.command("migrate-store")
@click.option(
    "--from",
    "source",
    required=True,
    callback=_sqlite_path,
    metavar="sqlite:PATH",
    help="the receiver's SQLite file (opened read-only)",
)
@click.option(
    "--to",
    "target",
    required=True,
    callback=_postgres_url,
    metavar="postgresql://...",
    help="the Postgres database to copy into (migrated first)",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_ROWS,
    help="rows per batch: one COPY and one commit each",
)
@click.option(
    "--pause-ms",
    type=click.IntRange(min=0),
    default=0,
    help="pause after each committed batch, ms: eases the load on a Postgres that is in use",
)
def migrate_store(source: Path, target: str, batch_rows: int, pause_ms: int) -> int:
    """Copy a SQLite database into Postgres: meta, tasks, transitions, callbacks,
    deliveries, files.

    Rows keep their ids, in id order, in batches each committed; each table's identity is
    then set past its highest id. Stop the receiver first: the SQLite file's owner lock is
    held for the copy. Interrupted, run it again: it goes on where it ended, never copying a
    row twice; on a complete copy it copies nothing. It refuses (exit 1) a SQLite file of an
    older schema, and a Postgres database that holds rows not copied from this file as it
    is now (another database, or the same one written to since).

    \b
    Example (the SQLite file is left as it was):
      kling-hooks migrate-store --from sqlite:/var/lib/kling-hooks/kling-hooks.db \\
        --to postgresql://kling@db.internal/kling_hooks
    """
    from receiver.store.postgres.copy import open_source

    conn = open_source(source)
    lock = DatabaseLock(source)
    try:
        _take(lock)
        report = _copy(conn, source, target, batch_rows, pause_ms)
    finally:
        lock.release()
        conn.close()
    click.echo(_summary(report))
    return EXIT_OK


def _take(lock: DatabaseLock) -> None:
    """Take the SQLite file's owner lock; a running receiver is a :class:`MigrateStoreError`."""
    try:
        lock.acquire()
    except DatabaseLocked as exc:
        who = str(exc).split(": one process owns")[0]  # "PATH is in use by process N (...)"
        raise MigrateStoreError(f"{who}: stop the receiver before copying its database") from None
    except OSError as exc:
        raise MigrateStoreError(f"cannot take the owner lock {lock.path}: {exc}") from None


def _copy(
    conn: sqlite3.Connection, source: Path, target: str, batch_rows: int, pause_ms: int
) -> CopyReport:
    """Connect to ``target``, migrate it, and copy ``conn`` into it."""
    import psycopg

    from receiver.store.postgres import connect, migrate
    from receiver.store.postgres.copy import copy_store

    try:
        pg = connect(target)
    except psycopg.OperationalError as exc:
        raise MigrateStoreError(
            f"cannot connect to Postgres at {shown_url(target)}: {_first_line(exc)}"
        ) from None
    with pg:
        try:
            version = migrate(pg)  # SchemaTooNew goes through: the CLI prints it
        except psycopg.Error as exc:
            raise MigrateStoreError(
                f"cannot migrate the Postgres schema at {shown_url(target)}: {_first_line(exc)}"
            ) from None
        header = [f"copying {source} into {shown_url(target)} (Postgres schema {version})"]

        def progress(t: TableCopy) -> None:
            while header:  # once the target is found sound: before the first table's line
                click.echo(header.pop())
            _print_progress(t)

        try:
            return copy_store(
                conn,
                source,
                pg,
                batch_rows=batch_rows,
                progress=progress,
                after_batch=lambda: time.sleep(pause_ms / 1000) if pause_ms else None,
            )
        except (psycopg.Error, sqlite3.Error) as exc:
            raise MigrateStoreError(
                f"the copy stopped: {_first_line(exc)}; the batches committed stay:"
                " run migrate-store again to go on"
            ) from None


def _first_line(exc: Exception) -> str:
    """The first line of ``exc``'s message (psycopg's go on with hints), else its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _print_progress(t: TableCopy) -> None:
    if t.complete:
        click.echo(
            f"{t.table}: {t.copied:,} rows copied, {t.before:,} there already,"
            f" {t.total:,} in the source ({t.seconds:.1f} s)"
        )
    elif t.before + t.copied < t.total:  # the table's last batch: its own line follows
        click.echo(f"  {t.table}: {t.before + t.copied:,}/{t.total:,}")


def _summary(report: CopyReport) -> str:
    if report.copied == 0:
        held = ", ".join(f"{t.table} {t.before:,}" for t in report.tables)
        return f"nothing to copy: the Postgres database holds every row already ({held})"
    counts = ", ".join(f"{t.table} {t.copied:,}" for t in report.tables)
    rate = report.copied / report.seconds if report.seconds > 0 else 0.0
    return f"copied {report.copied:,} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s): {counts}"
