"""The Postgres store (``KLING_HOOKS_DATABASE_URL``): several receivers share one database.

The second backend behind the names of ``receiver.store``; every statement of it lives in this
package. What every backend keeps is listed in DESIGN.md ("What every storage backend must
keep").

* ``database``: connections, and the migrations (``migrations/``) under an advisory lock;
* ``records``: callbacks and registrations, decided inside the statements (forward-only by
  rank, dedupe by the unique key, outbox rows in the same transaction);
* ``deliveries``: the outbox's claims (``FOR UPDATE SKIP LOCKED``, leased to a
  :class:`Replica`), outcomes, recovery of expired leases, and replays;
* ``transaction``: a group-commit batch behind the writer's protocol, a savepoint per
  operation;
* ``retention``: prune's windows (SQLite's rule), and the counts of what a prune removes;
* ``pool``: the read connections (``psycopg_pool``), failures as ``StoreUnavailable``;
* ``reads`` and ``dashboard``: the status API's and the dashboard's reads, the SQLite
  readers' answers for the same rows.

The driver is psycopg 3 (``psycopg``, with ``psycopg_pool``), not asyncpg, for what this
project needs of one:

* **the single writer stays one design.** ``receiver.writer`` runs each group-commit batch as
  one call on its own thread, on a plain blocking connection; psycopg has a blocking
  ``Connection`` as well as an ``AsyncConnection``, so a Postgres batch is the same plain
  function on a connection that a SQLite batch is (one thread hop per batch). asyncpg is
  asyncio only: the writer would need a second, event-loop implementation of group commit;
* **LISTEN/NOTIFY**: ``Connection.notifies()`` (blocking or async) wakes a replica when
  another commits new deliveries, with no polling;
* **a pool** for the status API's reads: ``psycopg_pool.AsyncConnectionPool``;
* **bulk writes**: ``executemany`` runs in pipeline mode (one round trip for many rows), and
  ``COPY`` is there for ``migrate-store``;
* **prepared statements**: a statement run ``prepare_threshold`` times (5) is prepared on the
  server by itself; asyncpg prepares every statement too, psycopg's is as good for the hot
  path's few fixed statements.
"""

from receiver.store.postgres.dashboard import PgDashboardReader
from receiver.store.postgres.database import (
    MIGRATION_LOCK,
    SCHEMA_VERSION,
    PgConnection,
    WriterConnection,
    check_reachable,
    connect,
    connect_writer,
    describe,
    get_or_create_meta,
    migrate,
    schema_version,
    unreachable,
)
from receiver.store.postgres.deliveries import DEFAULT_LEASE_MS, ExpireLeases, Replica
from receiver.store.postgres.pool import PgReadPool
from receiver.store.postgres.reads import PgReader
from receiver.store.postgres.transaction import PgTransaction

__all__ = [
    "DEFAULT_LEASE_MS",
    "MIGRATION_LOCK",
    "SCHEMA_VERSION",
    "ExpireLeases",
    "PgConnection",
    "PgDashboardReader",
    "PgReadPool",
    "PgReader",
    "PgTransaction",
    "Replica",
    "WriterConnection",
    "check_reachable",
    "connect",
    "connect_writer",
    "describe",
    "get_or_create_meta",
    "migrate",
    "schema_version",
    "unreachable",
]
