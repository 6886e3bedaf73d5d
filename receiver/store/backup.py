"""An online, consistent copy of the database with SQLite's backup API (``kling-hooks backup``).

It only reads, so it needs no owner lock and may run beside ``serve``. The source is opened
read-only and one read transaction is held for the whole copy: under WAL that is a snapshot,
so the copy is the database as it was at that instant however many callbacks commit
meanwhile, and the writer is never blocked (no backup step restarts). Pages are copied in
steps into a temporary file beside the target; the copy is checked with
``PRAGMA integrity_check``, switched to ``journal_mode = DELETE`` (one self-contained file),
flushed to disk, and only then renamed to the target.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from receiver.errors import BackupError
from receiver.store.database import is_not_a_database, not_a_database_message

#: Pages copied per step of the backup API (4 KiB each).
STEP_PAGES = 1024


@dataclass(frozen=True)
class BackupReport:
    """What a backup copied: its file, its schema version, row counts, its size in bytes, and
    how many steps the copy took."""

    path: Path
    schema_version: int
    tasks: int
    transitions: int
    callbacks: int
    deliveries: int
    size_bytes: int
    steps: int


def backup(
    db: Path, target: Path, *, force: bool = False, step_pages: int = STEP_PAGES
) -> BackupReport:
    """Copy ``db`` to ``target`` while the receiver may be writing to it.

    Args:
        db: The receiver's SQLite file (it must exist; nothing is created).
        target: The backup file; its folder must exist.
        force: Replace ``target`` if it exists.
        step_pages: Pages copied per step.

    Returns:
        A :class:`BackupReport` of the finished, checked copy.

    Raises:
        BackupError: ``db`` does not exist or is not a SQLite database, ``target`` is ``db``
            itself or its ``-wal`` or ``-shm`` file (even with ``force``), ``target`` exists
            (without ``force``; also when it appears during the copy) or its folder does
            not, the target's file system cannot link a file (without ``force``), or the
            copy failed ``PRAGMA integrity_check``; no file is left at ``target`` then, nor a
            temporary one.
        sqlite3.Error: the source could not be read for another reason.
    """
    if not db.is_file():
        raise BackupError(f"{db} does not exist: nothing to back up (is --db right?)")
    _refuse_live_files(db, target)
    if target.exists() and not force:
        raise BackupError(f"{target} exists; give --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a directory")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        steps = _copy(db, temporary, step_pages)
        report = _check(temporary, target, steps)
        _flush(temporary)
        if force:
            os.replace(temporary, target)
        else:
            _link(temporary, target)
        _flush(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    return report


#: The files SQLite keeps beside a database in WAL mode (https://sqlite.org/wal.html).
_LIVE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _refuse_live_files(db: Path, target: Path) -> None:
    """Refuse a ``target`` that is the database or one of its WAL-mode files, by resolved
    path (symbolic links followed) or, when it exists, as the same file (a hard link):
    replacing one under a running receiver would corrupt what it writes."""
    resolved, source = target.resolve(), db.resolve()
    for suffix in _LIVE_SUFFIXES:
        live = source.with_name(source.name + suffix)
        same = resolved == live or (
            live.exists() and target.exists() and os.path.samefile(target, live)
        )
        if same:
            what = f"the database {db}" + (f"'s {suffix} file" if suffix else "")
            raise BackupError(f"{target} is {what} itself: a backup must go to another file")


def _link(temporary: Path, target: Path) -> None:
    """Give ``temporary`` the name ``target``, failing rather than replacing a file that
    appeared there since the first check (a hard link; the caller removes ``temporary``)."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise BackupError(
            f"{target} appeared during the backup; give --force to replace it"
        ) from None
    except OSError as exc:  # EPERM, EOPNOTSUPP: a file system without hard links
        raise BackupError(
            f"cannot create {target} without replacing a file there: its file system"
            f" cannot link files ({exc.strerror}); give --force, which renames instead"
        ) from None


def _copy(db: Path, temporary: Path, step_pages: int) -> int:
    """Copy ``db`` into ``temporary`` inside one read transaction; returns the steps.

    Raises:
        BackupError: ``db`` is not a SQLite database.
    """
    try:
        return _copy_snapshot(db, temporary, step_pages)
    except sqlite3.DatabaseError as exc:
        if not is_not_a_database(exc):
            raise
        raise BackupError(not_a_database_message(db, exc)) from None


def _copy_snapshot(db: Path, temporary: Path, step_pages: int) -> int:
    source = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    copy = sqlite3.connect(temporary, isolation_level=None)
    steps = 0

    def count(status: int, remaining: int, total: int) -> None:
        nonlocal steps
        steps += 1

    try:
        source.execute("BEGIN")
        source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot starts
        source.backup(copy, pages=step_pages, progress=count)
        source.execute("COMMIT")
        copy.execute("PRAGMA journal_mode = DELETE")
    finally:
        copy.close()
        source.close()
    return steps


def _check(temporary: Path, target: Path, steps: int) -> BackupReport:
    """``integrity_check`` the copy and count what it holds."""
    conn = sqlite3.connect(temporary)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the copy failed PRAGMA integrity_check: {'; '.join(problems[:3])}")
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        counts = {
            table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            if table in present
            else 0  # deliveries: not before schema 2
            for table in ("tasks", "transitions", "callbacks", "deliveries")
        }
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    return BackupReport(
        path=target,
        schema_version=int(version),
        size_bytes=temporary.stat().st_size,
        steps=steps,
        **counts,
    )


def _flush(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
