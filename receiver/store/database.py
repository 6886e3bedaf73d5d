"""Connections and schema migrations of the SQLite database.

One process owns the database. Writes go through :class:`receiver.writer.Writer` on its own
connection; the status API reads on a few read-only connections of its own
(:class:`receiver.store.pool.ReadPool`), which WAL lets run beside the writer.
``synchronous=FULL``: a transition acknowledged with 200 survives a power cut.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import TracebackType

import aiosqlite

from receiver.errors import DatabaseLocked, NotADatabase, SchemaTooNew

#: The schema this program knows: the highest ``migrations/NNNN_*.sql``.
SCHEMA_VERSION = 6


class DatabaseLock:
    """The exclusive lock that makes one process the owner of a database.

    An ``fcntl.flock`` on ``{db}.lock`` beside the database, holding the owner's PID. The
    kernel releases it when the process ends, however it ends (``kill -9`` too), so a stale
    lock file never blocks a restart.

    Args:
        db: The SQLite file.
    """

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = db.with_name(db.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or fail at once.

        Raises:
            DatabaseLocked: another process holds it; the message names its PID.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DatabaseLocked(
                f"{self.db} is in use by process {holder} (it holds {self.path}): "
                "one process owns a database; stop it, or give this one another KLING_HOOKS_DB"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def migration_files(package: str = "receiver.store") -> list[tuple[int, str]]:
    """``[(number, sql)]`` of ``package``'s ``migrations/NNNN_*.sql``, in order (the SQLite
    ones by default; ``receiver.store.postgres`` has its own)."""
    folder = resources.files(package) / "migrations"
    found = [
        (int(p.name.split("_", 1)[0]), p.read_text())
        for p in folder.iterdir()
        if p.name.endswith(".sql")
    ]
    return sorted(found)


def _pragmas(busy_timeout_ms: int) -> list[str]:
    """The statements a connection that writes starts with (:func:`connect`,
    :func:`connect_writer`)."""
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
        "PRAGMA auto_vacuum = INCREMENTAL",  # before the first table
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
    ]


async def connect(path: Path, *, busy_timeout_ms: int = 5000) -> aiosqlite.Connection:
    """Open a connection to ``path`` in autocommit mode with WAL and ``synchronous=FULL``.

    A new database is made with ``auto_vacuum = INCREMENTAL``, so that ``kling-hooks prune
    --vacuum`` can give free pages back in small steps (``receiver.store.retention``); on an
    existing file the pragma changes nothing (only a ``VACUUM`` can).

    Args:
        path: The SQLite file; its folder is created if missing.
        busy_timeout_ms: How long a statement waits for another process's lock.

    The status API's read connections are plain ``sqlite3`` ones
    (:func:`receiver.store.pool.connect_reader`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    for statement in _pragmas(busy_timeout_ms):
        await conn.execute(statement)
    return conn


def connect_writer(path: Path, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """The writer's connection: like :func:`connect` (autocommit, WAL, ``synchronous=FULL``,
    rows as ``sqlite3.Row``), but a plain ``sqlite3`` connection, to be used only on the
    thread that opened it (``receiver.writer`` runs each whole batch there: one thread hop
    per transaction instead of one per statement)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for statement in _pragmas(busy_timeout_ms):
        conn.execute(statement)
    return conn


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; each step in its own transaction.

    Returns:
        The schema version now in force.

    Raises:
        SchemaTooNew: the database is newer than this program knows; nothing was changed.
    """
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    _check_version(version, "the database")
    for number, sql in migration_files():
        if number <= version:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {number}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        version = number
    return version


def _check_version(version: int, where: object) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{where} has schema version {version}, newer than this kling-hooks knows "
            f"({SCHEMA_VERSION}): run a kling-hooks at least as new as the one that wrote it"
        )


def check_schema(path: Path) -> None:
    """Refuse, before anything opens it for writing, a database newer than this program.

    Reads ``PRAGMA user_version`` on a read-only connection; a missing file is fine (it will
    be created at :data:`SCHEMA_VERSION`).

    Raises:
        SchemaTooNew: its schema version is above :data:`SCHEMA_VERSION`; the message names
            the file and both versions.
        NotADatabase: the file is not a SQLite database; the message names it.
    """
    if not path.exists():
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError as exc:
        if not is_not_a_database(exc):
            raise
        raise NotADatabase(not_a_database_message(path, exc)) from None
    finally:
        conn.close()
    _check_version(int(version), path)


def is_not_a_database(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's ``SQLITE_NOTADB`` (the file is not a database)."""
    return getattr(exc, "sqlite_errorname", None) == "SQLITE_NOTADB"


def not_a_database_message(path: Path, exc: sqlite3.Error) -> str:
    """``"PATH is not a kling-hooks database: file is not a database"``."""
    return f"{path} is not a kling-hooks database: {exc}"


async def get_or_create_meta(
    conn: aiosqlite.Connection, key: str, factory: Callable[[], str]
) -> tuple[str, bool]:
    """Read ``meta[key]``, creating it with ``factory()`` if absent (atomic across processes).

    Returns:
        ``(value, created)``.
    """
    async with conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, factory())
    ) as cur:
        created = cur.rowcount == 1
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    assert row is not None
    return str(row[0]), created
