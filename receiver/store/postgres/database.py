"""Connections and schema migrations of the Postgres store.

Any number of receivers share one database. Each replica's writer owns one connection on its
own thread (``receiver.writer``), as with SQLite. Every commit waits for the server's WAL
flush: ``synchronous_commit = on`` is set on the writer's connection, whatever the server's
default, so a callback answered 200 survives a crash of the database server.

Migrations are ``migrations/NNNN_*.sql`` beside this module, numbered like the SQLite ones
(``receiver/store/migrations``), each applied in a transaction of its own and recorded in
``schema_migrations``. They run under a session advisory lock (:data:`MIGRATION_LOCK`,
``pg_advisory_lock``): replicas that start together wait for each other, and each migration
is applied once.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg.rows import TupleRow

from receiver.errors import ReplicaInUse, SchemaTooNew, StoreUnavailable
from receiver.store.database import migration_files

#: The schema this program knows: the highest ``migrations/NNNN_*.sql`` of this package.
SCHEMA_VERSION = 2

#: The advisory lock key the migrations hold (``pg_advisory_lock``, one bigint): the bytes of
#: ``"klinghks"``, so that it cannot be mistaken for another application's.
MIGRATION_LOCK = int.from_bytes(b"klinghks", "big")

_PACKAGE = "receiver.store.postgres"

#: A blocking connection whose rows are tuples (what :func:`connect` returns).
PgConnection = psycopg.Connection[TupleRow]


#: How long a connection attempt may take, seconds, unless the URL says (``connect_timeout``):
#: libpq's default is to wait for ever, and a callback must get its 503 instead.
CONNECT_TIMEOUT_S = 5
#: How long sent data may stay unacknowledged before the kernel drops the connection, ms
#: (libpq's ``tcp_user_timeout``), unless the URL says: a server that vanished from the network
#: (no reset, no answer) fails the writer's statement then, instead of holding every callback.
TCP_USER_TIMEOUT_MS = 10_000


def connect(url: str) -> PgConnection:
    """A connection to ``url`` in autocommit mode (a transaction is opened explicitly), whose
    commits wait for the server's WAL flush (``synchronous_commit = on``); an attempt gives up
    after :data:`CONNECT_TIMEOUT_S`, and a silent server fails a statement after
    :data:`TCP_USER_TIMEOUT_MS`, unless the URL sets ``connect_timeout`` or
    ``tcp_user_timeout``.

    Raises:
        psycopg.OperationalError: the server cannot be reached or refuses the connection.
    """
    given = psycopg.conninfo.conninfo_to_dict(url)
    defaults = {"connect_timeout": CONNECT_TIMEOUT_S, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}
    extra = {k: v for k, v in defaults.items() if k not in given}
    if extra:
        url = psycopg.conninfo.make_conninfo(url, **extra)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET synchronous_commit = on")
    return conn


def schema_version(conn: PgConnection) -> int:
    """The highest migration applied to the database (0: none, or not a kling-hooks one)."""
    found = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: PgConnection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, holding :data:`MIGRATION_LOCK`.

    Args:
        conn: An autocommit connection (:func:`connect`).

    Returns:
        The schema version now in force.

    Raises:
        SchemaTooNew: the database is newer than this program knows; nothing was changed.
        psycopg.Error: a migration failed; it was rolled back, the earlier ones stay.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the Postgres database has schema version {version}, newer than this"
                f" kling-hooks knows ({SCHEMA_VERSION}): run a kling-hooks at least as new as"
                " the one that wrote it"
            )
        for number, sql in migration_files(_PACKAGE):
            if number <= version:
                continue
            with conn.transaction():
                conn.execute(sql.encode())  # several statements: no parameters
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (number,))
            version = number
        return version
    finally:
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class WriterConnection:
    """The writer's connection (:func:`connect`), opened with the schema migrated
    (:func:`migrate`), and opened again when it was lost (the server restarted, a failover):
    the receiver recovers without a restart. Used only on the writer's thread, like SQLite's.

    Raises:
        SchemaTooNew, psycopg.Error: from the migrations or the first connection.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn = connect(url)
        try:
            migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def current(self) -> PgConnection:
        """The open connection; a lost one is replaced first (its transaction was lost with
        it: nothing of it was committed).

        Raises:
            StoreUnavailable: the server cannot be reached now (the next call tries again).
        """
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            try:
                self._conn = connect(self._url)
            except psycopg.Error as exc:
                raise unreachable(exc) from None
        return self._conn

    def begin(self) -> PgConnection:
        """``BEGIN`` on the open connection, and the connection. A connection that turns out
        dead at ``BEGIN`` (the server restarted while the receiver was idle: psycopg learns it
        only on use) is replaced, and ``BEGIN`` sent once more: nothing was sent in that
        transaction yet, so trying again is safe.

        Raises:
            StoreUnavailable: the server cannot be reached now.
            psycopg.Error: ``BEGIN`` failed on a live connection.
        """
        conn = self.current()
        try:
            conn.execute("BEGIN")
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            conn = self.current()  # a new connection
            conn.execute("BEGIN")
        return conn

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def connect_writer(url: str) -> WriterConnection:
    """The writer's connection: :class:`WriterConnection` (arguments and errors its own)."""
    return WriterConnection(url)


def describe(url: str) -> str:
    """``postgresql://user@host:port/dbname`` of ``url``, for logs and messages: the password
    and the other parameters left out."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host, port = info.get("host") or "localhost", info.get("port") or "5432"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


def unreachable(exc: psycopg.Error) -> StoreUnavailable:
    """The error to report when the server cannot be reached or refuses us: libpq's first
    line (it names the host and port, never the password)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return StoreUnavailable(f"Postgres: {first}")


def get_or_create_meta(
    conn: PgConnection, key: str, factory: Callable[[], str]
) -> tuple[str, bool]:
    """Read ``meta[key]``, creating it with ``factory()`` if absent: atomic across replicas
    (``ON CONFLICT DO NOTHING``, then the row that won).

    Returns:
        ``(value, created)``.
    """
    cur = conn.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
        (key, factory()),
    )
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
    assert row is not None
    return str(row[0]), cur.rowcount == 1


#: The first key of the replica locks (``pg_advisory_lock(int, int)``, ``hashtext`` of the
#: replica id second: two ids of one hash share a lock, and the second refuses to start):
#: the bytes of ``"khrp"``. A running replica holds its own on its ``LISTEN`` connection
#: (``receiver.store.postgres.wakeups.Listener``).
REPLICA_LOCKS = int.from_bytes(b"khrp", "big")
#: How long a replica waits for its lock at start, seconds: a replica restarted right after a
#: crash finds its lock held until Postgres has ended the dead session (milliseconds).
REPLICA_LOCK_WAIT_S = 5
#: The statements that take the lock, waiting at most :data:`REPLICA_LOCK_WAIT_S` (Postgres
#: raises ``LockNotAvailable`` then), and end the wait's limit for the session.
TAKE_REPLICA_LOCK = (
    f"SET lock_timeout = '{REPLICA_LOCK_WAIT_S}s'",
    "SELECT pg_advisory_lock(%s, hashtext(%s))",
    "RESET lock_timeout",
)


def replica_in_use(replica_id: str) -> ReplicaInUse:
    """The error of a replica id that a running replica holds already."""
    return ReplicaInUse(
        f"KLING_HOOKS_REPLICA_ID={replica_id} is in use by a running replica of this database"
        " (unset, it is the host name): give each replica its own"
    )


def check_reachable(url: str, replica_id: str) -> None:
    """Connect to ``url``, bring its schema up to date, and check that no running replica
    holds ``replica_id``; then disconnect: what ``serve`` checks before it starts, so that a
    server it cannot use stops it with one line.

    Raises:
        StoreUnavailable: the server cannot be reached, refuses us, or a migration failed.
        SchemaTooNew: the database is newer than this program.
        ReplicaInUse: a running replica holds ``replica_id``.
    """
    try:
        conn = connect(url)
    except psycopg.Error as exc:
        raise unreachable(exc) from None
    try:
        migrate(conn)
        limit, take, _ = TAKE_REPLICA_LOCK
        conn.execute(limit)
        try:
            conn.execute(take, (REPLICA_LOCKS, replica_id))
        except psycopg.errors.LockNotAvailable:
            raise replica_in_use(replica_id) from None
    except psycopg.Error as exc:
        raise StoreUnavailable(f"Postgres: the migrations failed: {exc}") from None
    finally:
        conn.close()
