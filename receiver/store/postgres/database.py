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

import psycopg
from psycopg.rows import TupleRow

from receiver.errors import SchemaTooNew
from receiver.store.database import migration_files

#: The schema this program knows: the highest ``migrations/NNNN_*.sql`` of this package.
SCHEMA_VERSION = 2

#: The advisory lock key the migrations hold (``pg_advisory_lock``, one bigint): the bytes of
#: ``"klinghks"``, so that it cannot be mistaken for another application's.
MIGRATION_LOCK = int.from_bytes(b"klinghks", "big")

_PACKAGE = "receiver.store.postgres"

#: A blocking connection whose rows are tuples (what :func:`connect` returns).
PgConnection = psycopg.Connection[TupleRow]


def connect(url: str) -> PgConnection:
    """A connection to ``url`` in autocommit mode (a transaction is opened explicitly), whose
    commits wait for the server's WAL flush (``synchronous_commit = on``).

    Raises:
        psycopg.OperationalError: the server cannot be reached or refuses the connection.
    """
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


def connect_writer(url: str) -> PgConnection:
    """The writer's connection (:func:`connect`), with the schema migrated (:func:`migrate`);
    to be used only on the thread that opened it, like SQLite's.

    Raises:
        SchemaTooNew, psycopg.Error: from the migrations or the connection (then closed).
    """
    conn = connect(url)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn
