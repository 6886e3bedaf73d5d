"""Suite 4, storage faults: a database that cannot grow, and one that cannot be written.

For each fault, a fresh ``kling-hooks serve`` (no plugins) gets distinct callbacks from 8
connections, each retried 50 ms after a 503, while ``/readyz`` is asked every 50 ms. The fault
is applied from outside (``bench.suites.disk_faults``: a full tmpfs, or where mounting is not
allowed a lowered ``RLIMIT_FSIZE``; the immutable inode flag, or ``RLIMIT_FSIZE`` 0), held,
and cleared; the receiver is never restarted. Then the database is read: every callback that
got a 200 must be in it.

Figures per fault: the 503s (with ``Retry-After``) while it held, every other non-200 answer or
broken connection (must be 0), acknowledged callbacks missing (must be 0), the time from the
clearing to the first 200 of a callback sent after it, restarts needed (must be 0: the
receiver did not recover within 30 s, or died), and ``/readyz`` answers of 200 asked between
the first 503 and the clearing while the callbacks answered just before and after were 503s
(must be 0; see :func:`readiness_lies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from bench.processes import free_port
from bench.suites import Report
from bench.suites.disk_faults import FileSizeLimit, FullDisk, Immutable
from bench.suites.load import CallbackLoad, Sent, poll_until
from bench.suites.serve_process import SECRET, ServeProcess

NAME = "storage faults"
POLL_S = 0.05
RECOVERY_TIMEOUT_S = 30.0
FIRST_503_TIMEOUT_S = 30.0


class Fault(Protocol):
    def apply(self) -> None: ...
    def clear(self) -> None: ...


@dataclass(frozen=True)
class Sizes:
    warm_s: float  # healthy load before the fault
    hold_s: float  # the fault held, from its first 503
    after_s: float  # healthy load after recovery
    concurrency: int = 8


REDUCED = Sizes(warm_s=0.5, hold_s=1.0, after_s=0.5)
FULL = Sizes(warm_s=3.0, hold_s=10.0, after_s=3.0)


@dataclass
class Outcome:
    """One fault's figures."""

    mechanism: str
    unavailable: int = 0
    other_errors: int = 0
    lost: int = 0
    recovery_ms: float = -1.0
    restarts_needed: int = 0
    ready_during_fault: int = 0
    acknowledged: int = 0
    acked_during_fault: int = 0


def stored_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT external_task_id FROM tasks")}


async def poll_ready(url: str, seen: list[tuple[float, int]], stop: asyncio.Event) -> None:
    """Ask ``GET /readyz`` every POLL_S until ``stop``; ``(started_s, status)`` into ``seen``."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = (await http.get(f"{url}/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            seen.append((started, status))
            await asyncio.sleep(POLL_S)


def readiness_lies(
    ready: list[tuple[float, int]], sent: list[Sent], from_s: float, to_s: float
) -> int:
    """``/readyz`` 200s asked in [from_s, to_s] while the callbacks answered just before and
    just after were both 503: readiness said ready while writes failed. (On a full disk a
    commit can still succeed now and then, when the WAL restarts inside its old size: a 200
    then is true.)"""
    answers = sorted((s.ended_s, s.status) for s in sent if s.status)
    lies = 0
    for asked_s, status in ready:
        if status != 200 or not from_s < asked_s < to_s:
            continue
        before = [st for t, st in answers if t <= asked_s][-1:]
        after = [st for t, st in answers if t > asked_s][:1]
        lies += before == [503] and after == [503]
    return lies


async def one_fault(
    db: Path, port: int, sizes: Sizes, make_fault: Callable[[ServeProcess], tuple[str, Fault]]
) -> Outcome:
    """Run one serve through one fault; returns its figures."""
    config = db.parent / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{db}"\n')
    server = ServeProcess(config, port)
    await server.start()
    mechanism, fault = make_fault(server)
    outcome = Outcome(mechanism)
    load = CallbackLoad(server.url, SECRET, db.stem, None, sizes.concurrency)
    ready: list[tuple[float, int]] = []
    stop_polling = asyncio.Event()
    sending = asyncio.create_task(load.run())
    polling = asyncio.create_task(poll_ready(server.url, ready, stop_polling))
    try:
        await asyncio.sleep(sizes.warm_s)
        applied_s = time.monotonic()
        fault.apply()
        try:

            def first_503() -> float | None:
                return next(
                    (s.ended_s for s in load.sent if s.status == 503 and s.started_s > applied_s),
                    None,
                )

            await poll_until(lambda: first_503() is not None, FIRST_503_TIMEOUT_S)
            await asyncio.sleep(sizes.hold_s)
        finally:
            cleared_s = time.monotonic()
            fault.clear()
        recovered = await poll_until(
            lambda: any(s.status == 200 and s.started_s > cleared_s for s in load.sent),
            RECOVERY_TIMEOUT_S,
        )
        first = first_503()
        if recovered:
            answered = min(
                s.ended_s for s in load.sent if s.status == 200 and s.started_s > cleared_s
            )
            outcome.recovery_ms = round((answered - cleared_s) * 1000, 1)
            await asyncio.sleep(sizes.after_s)
        outcome.restarts_needed = int(
            not recovered or server.proc is None or server.proc.returncode is not None
        )
        outcome.unavailable = sum(s.status == 503 and s.retry_after for s in load.sent)
        outcome.other_errors = sum(
            s.status not in (200, 503) or (s.status == 503 and not s.retry_after) for s in load.sent
        )
        outcome.ready_during_fault = (
            -1  # the fault never showed: a failure of the suite, not a pass
            if first is None
            else readiness_lies(ready, load.sent, first, cleared_s)
        )
        outcome.acked_during_fault = sum(
            s.status == 200 and first is not None and first < s.started_s and s.ended_s < cleared_s
            for s in load.sent
        )
    finally:
        load.stop()
        stop_polling.set()
        await asyncio.gather(sending, polling)
        await server.stop()
    outcome.acknowledged = len(load.acked)
    outcome.lost = len(load.acked - stored_ids(db))
    return outcome


def db_files(db: Path) -> tuple[Path, Path]:
    return db, db.with_name(db.name + "-wal")


async def cannot_grow(workdir: Path, sizes: Sizes) -> Outcome:
    """A full disk: a tmpfs of 16 MiB filled to the last byte, else ``RLIMIT_FSIZE``."""
    disk = FullDisk(workdir / "small-disk", 16 << 20)
    if disk.mount():
        try:
            db = disk.mountpoint / "full.db"
            return await one_fault(
                db, free_port(), sizes, lambda _: ("tmpfs of 16 MiB filled (ENOSPC)", disk)
            )
        finally:
            disk.unmount()
    db = workdir / "full" / "full.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return await one_fault(
        db,
        free_port(),
        sizes,
        lambda s: ("RLIMIT_FSIZE at the files' size (EFBIG)", FileSizeLimit(s.pid, *db_files(db))),
    )


async def cannot_write(workdir: Path, sizes: Sizes) -> Outcome:
    """A database that cannot be written: the immutable flag, else ``RLIMIT_FSIZE`` 0."""
    db = workdir / "readonly" / "readonly.db"
    db.parent.mkdir(parents=True, exist_ok=True)

    def fault(server: ServeProcess) -> tuple[str, Fault]:
        if Immutable.available(db.parent):
            return "immutable inode flag on the db and WAL (EPERM)", Immutable(*db_files(db))
        return "RLIMIT_FSIZE 0 (EFBIG)", FileSizeLimit(server.pid, *db_files(db), limit_bytes=0)

    return await one_fault(db, free_port(), sizes, fault)


async def run(full: bool, workdir: Path) -> Report:
    """Both faults, one after the other, at full or reduced size."""
    sizes = FULL if full else REDUCED
    report = Report(NAME)
    zero: list[str] = []
    for label, scenario in (("cannot grow", cannot_grow), ("cannot be written", cannot_write)):
        got = await scenario(workdir, sizes)
        figures = {
            f"{label}: 503s with Retry-After during the fault": got.unavailable,
            f"{label}: non-503 errors": got.other_errors,
            f"{label}: acknowledged callbacks": got.acknowledged,
            f"{label}: of which answered while the fault held": got.acked_during_fault,
            f"{label}: lost acknowledged callbacks": got.lost,
            f"{label}: recovery after the fault cleared (ms)": got.recovery_ms,
            f"{label}: restarts needed": got.restarts_needed,
            f"{label}: /readyz 200 during the fault": got.ready_during_fault,
        }
        report.figures.update(figures)
        zero += [
            k
            for k in figures
            if k.endswith(("errors", "lost acknowledged callbacks", "needed", "during the fault"))
            and "503s" not in k
        ]
        report.notes.append(f"{label}: {got.mechanism}")
    report.must_be_zero = tuple(zero)
    report.notes.append(
        f"8 connections, 503s retried after 50 ms; fault held {sizes.hold_s} s from its first 503"
    )
    return report
