"""Opening the configured store: SQLite (``KLING_HOOKS_DB``, the default) or Postgres
(``KLING_HOOKS_DATABASE_URL``), as the parts the receiver runs on.

Both give the same parts (:class:`OpenStore`): the writer, the status API's and the
dashboard's reads, the credentials, and for Postgres what replicas need besides: the sweep
of expired leases (``ExpireLeases``) and the listener of the other replicas' notifications
(``receiver.store.postgres.wakeups``). Nothing else in the receiver asks which store it runs
on; psycopg is imported only when Postgres is configured.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from receiver import credentials, store
from receiver.config import Settings
from receiver.credentials import Credentials
from receiver.dispatcher import Sweep
from receiver.plugins.registry import LoadedPlugin
from receiver.store.batches import Router
from receiver.store.dashboard import DashboardReads
from receiver.store.reads import StatusReads
from receiver.writer import Writer

#: On Postgres, a claim's lease is its plugin's ``timeout_s`` and this margin, ms: the time to
#: record the outcome, and the replicas' clock skew (NTP keeps it under a second).
LEASE_MARGIN_MS = 10_000


@dataclass(frozen=True)
class OpenStore:
    """The store's parts, open (the writer not started yet).

    Attributes:
        sqlite_path: The SQLite file; None on Postgres.
        sweep: Releases expired leases (Postgres); None on SQLite.
        listen: ``listen(on_due)``: an async context that calls ``on_due(due_ms)`` for each
            notification of another replica, while it is entered (Postgres); None on SQLite.
    """

    writer: Writer
    reader: StatusReads
    dashboard: DashboardReads
    credentials: Credentials
    sqlite_path: Path | None = None
    sweep: Sweep | None = None
    listen: (
        Callable[[Callable[[int], None]], contextlib.AbstractAsyncContextManager[None]] | None
    ) = None


def store_label(settings: Settings) -> str:
    """Where the receiver's data is, for its log: the SQLite path, or Postgres's
    ``postgresql://user@host:port/dbname`` (never the password)."""
    if settings.kling_hooks_database_url is None:
        return str(settings.kling_hooks_db)
    from receiver.store.postgres import describe  # psycopg: for Postgres only

    return describe(settings.kling_hooks_database_url.get_secret_value())


def replica_id(settings: Settings) -> str:
    """This replica's name (``KLING_HOOKS_REPLICA_ID``, else the host name)."""
    return settings.kling_hooks_replica_id or socket.gethostname()


def plugin_leases(plugins: Sequence[LoadedPlugin]) -> Mapping[str, int]:
    """Each plugin's lease on Postgres, ms: its ``timeout_s`` plus :data:`LEASE_MARGIN_MS`."""
    return {p.name: int(p.plugin.settings.timeout_s * 1000) + LEASE_MARGIN_MS for p in plugins}


@contextlib.asynccontextmanager
async def open_store(
    settings: Settings, plugins: Sequence[LoadedPlugin], router: Router
) -> AsyncIterator[OpenStore]:
    """Open (and migrate) the configured store; close it after.

    Raises:
        StoreUnavailable: the database cannot be opened, reached or migrated.
        SchemaTooNew: the database is newer than this program.
    """
    if settings.kling_hooks_database_url is None:
        async with _sqlite(settings, router) as opened:
            yield opened
    else:
        async with _postgres(settings, plugins, router) as opened:
            yield opened


@contextlib.asynccontextmanager
async def _sqlite(settings: Settings, router: Router) -> AsyncIterator[OpenStore]:
    db = settings.kling_hooks_db
    timeout_ms = settings.kling_hooks_busy_timeout_ms
    writer = await Writer.open(db, busy_timeout_ms=timeout_ms, router=router)
    try:
        readers = store.ReadPool(db, busy_timeout_ms=timeout_ms)
    except BaseException:
        await writer.close()
        raise
    try:
        creds = await credentials.resolve_from_file(settings)  # migrated: Writer.open
        yield OpenStore(
            writer=writer,
            reader=store.Reader(readers),
            dashboard=store.DashboardReader(readers),
            credentials=creds,
            sqlite_path=db,
        )
    finally:
        await writer.close()
        await readers.close()


@contextlib.asynccontextmanager
async def _postgres(
    settings: Settings, plugins: Sequence[LoadedPlugin], router: Router
) -> AsyncIterator[OpenStore]:
    import psycopg

    from receiver.store import postgres
    from receiver.store.postgres.dashboard import PgDashboardReader
    from receiver.store.postgres.pool import PgReadPool
    from receiver.store.postgres.reads import PgReader
    from receiver.store.postgres.wakeups import Listener

    assert settings.kling_hooks_database_url is not None
    url = settings.kling_hooks_database_url.get_secret_value()
    replica = postgres.Replica(
        replica_id=replica_id(settings), plugin_lease_ms=plugin_leases(plugins)
    )
    try:
        writer = await Writer.open_postgres(url, replica=replica, router=router)
    except psycopg.Error as exc:
        raise postgres.unreachable(exc) from None
    try:
        pool = await PgReadPool.open(url, size=settings.kling_hooks_pg_pool_size)
    except BaseException:
        await writer.close()
        raise
    try:
        creds = await credentials.resolve_from_file(settings)  # migrated: open_postgres

        @contextlib.asynccontextmanager
        async def listen(on_due: Callable[[int], None]) -> AsyncIterator[None]:
            listener = Listener(url, replica, on_due)
            await listener.start()
            try:
                yield
            finally:
                await listener.close()

        yield OpenStore(
            writer=writer,
            reader=PgReader(pool),
            dashboard=PgDashboardReader(pool),
            credentials=creds,
            sweep=postgres.ExpireLeases,
            listen=listen,
        )
    finally:
        await writer.close()
        await pool.close()
