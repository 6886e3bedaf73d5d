"""``POST /prune``'s work: remove old rows batch by batch through the writer, then give the
free pages back; what goes and what stays is ``receiver.store.retention``'s rule.

On Postgres the batches are the same operations (``receiver.store.postgres.retention`` runs
them), and no vacuum step follows: the reader's :class:`~receiver.store.retention.Space`
says ``reclaims_itself`` (autovacuum makes the deleted rows' space reusable), and the
answer's ``vacuum`` is ``none``.

Each batch is one operation the single writer commits, so a callback that arrives while
prune runs waits for one batch at most, never for the whole removal. Nothing here writes SQL.

Before each batch, prune asks whether to go on: it ends there when the receiver has begun to
stop (:attr:`receiver.writer.Writer.stopping`; a stop then waits for one batch at most, not
for the whole prune) or when ``should_stop`` says so (``POST /prune``: the client went away).
Its answer then has ``complete = False`` and counts what the committed batches removed; the
next prune goes on where it ended, since what is left is still older than its cutoff.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog

from receiver.models import Pruned
from receiver.store import ConnectionOp, StatusReads, WriteOp
from receiver.store.retention import (
    AUTO_VACUUM_INCREMENTAL,
    Checkpoint,
    FullVacuum,
    IncrementalVacuum,
    PruneWindow,
    Table,
)
from receiver.writer import Writer

_log = structlog.get_logger("kling_hooks.prune")

T = TypeVar("T")
#: Asked before each batch; True ends the prune there (e.g. the HTTP client went away).
ShouldStop = Callable[[], Awaitable[bool]]
#: Rows one batch looks at, and free pages one vacuum step gives back (4 KiB each).
WINDOW_ROWS = 500
VACUUM_PAGES = 500


async def _never() -> bool:
    return False


@dataclass
class _Batches:
    """Runs operations through the writer, keeps the count and the slowest, and says whether
    to go on (:meth:`go_on`)."""

    writer: Writer
    clock_s: Callable[[], float]
    should_stop: ShouldStop = _never
    count: int = 0
    longest_s: float = field(default=0.0)
    stopped: bool = False

    async def go_on(self) -> bool:
        """False, from now on, once the receiver stops or ``should_stop()`` says so."""
        if not self.stopped and (self.writer.stopping or await self.should_stop()):
            self.stopped = True
        return not self.stopped

    async def submit(self, op: WriteOp[T] | ConnectionOp[T]) -> T:
        started = self.clock_s()
        result = await self.writer.submit(op)
        self.count += 1
        self.longest_s = max(self.longest_s, self.clock_s() - started)
        return result


async def prune(
    writer: Writer,
    reader: StatusReads,
    *,
    cutoff_ms: int,
    dry_run: bool = False,
    vacuum: bool = False,
    window_rows: int = WINDOW_ROWS,
    vacuum_pages: int = VACUUM_PAGES,
    clock_s: Callable[[], float] = time.perf_counter,
    should_stop: ShouldStop = _never,
    logger: Any = None,
) -> Pruned:
    """Remove raw callbacks and done deliveries older than ``cutoff_ms`` (Unix ms).

    Args:
        writer: The running writer; every change goes through it, one batch at a time.
        reader: The read-only queries (counts, sizes), on the read connections.
        dry_run: Count what would go (on the reader); change nothing.
        logger: Where ``prune_started`` and ``pruned`` go (the API passes the request's,
            bound to its ``request_id``); default this module's.
        vacuum: Then give the free pages back: in steps of ``vacuum_pages`` on a database
            with ``auto_vacuum = INCREMENTAL``, else with one full ``VACUUM`` (which also
            turns it incremental; callbacks wait while it runs). Ignored (the answer's
            ``vacuum`` is ``none``) where the database reclaims space itself
            (:attr:`~receiver.store.retention.Space.reclaims_itself`: Postgres).
        window_rows: Rows one batch looks at.
        clock_s: A monotonic clock in seconds (batch durations).
        should_stop: Asked before each batch; True ends the prune there, as the writer's
            :attr:`~receiver.writer.Writer.stopping` does.

    Returns:
        The counts and sizes (:class:`~receiver.models.Pruned`); ``complete`` is False when
        it ended early (the module docstring).

    Raises:
        StoreUnavailable: a batch could not commit; the batches before it stay committed.
    """
    log = logger or _log
    log.info("prune_started", cutoff_ms=cutoff_ms, dry_run=dry_run, vacuum=vacuum)
    before = await reader.space()
    counts = await reader.prunable(cutoff_ms)
    batches = _Batches(writer, clock_s, should_stop)
    mode: Literal["none", "incremental", "full"] = "none"
    if not dry_run:
        removed = {
            table: await _prune_table(batches, table, cutoff_ms, window_rows)
            for table in ("callbacks", "deliveries")
        }
        if vacuum and not before.reclaims_itself and await batches.go_on():
            mode = await _vacuum(batches, reader, vacuum_pages)
    after = await reader.space()
    answer = Pruned(
        dry_run=dry_run,
        complete=not batches.stopped,
        cutoff_ms=cutoff_ms,
        callbacks=counts.callbacks if dry_run else removed["callbacks"],
        deliveries=counts.deliveries if dry_run else removed["deliveries"],
        dead_kept=counts.dead_kept,
        kept_for_files=counts.kept_for_files,
        batches=batches.count,
        longest_batch_ms=round(batches.longest_s * 1000, 3),
        vacuum=mode,
        size_bytes_before=before.size_bytes,
        size_bytes_after=after.size_bytes,
        free_bytes_after=after.free_bytes,
    )
    log.info("pruned", **answer.model_dump(exclude={"ok"}))
    return answer


async def _prune_table(batches: _Batches, table: Table, cutoff_ms: int, window: int) -> int:
    """Every window of ``table``, first to last, or until told to stop; returns the rows
    deleted."""
    deleted, after_id = 0, 0
    while await batches.go_on():
        done = await batches.submit(PruneWindow(table, cutoff_ms, after_id, window))
        deleted += done.deleted
        after_id = done.last_id
        if done.finished:
            break
    return deleted


async def _vacuum(
    batches: _Batches, reader: StatusReads, pages: int
) -> Literal["incremental", "full"]:
    """Give the free pages back (until told to stop), then checkpoint so that the file
    shrinks."""
    if (await reader.space()).auto_vacuum != AUTO_VACUUM_INCREMENTAL:
        await batches.submit(FullVacuum())
        return "full"
    left: int | None = None
    while await batches.go_on():  # until nothing is free, or a step frees nothing more
        now = await batches.submit(IncrementalVacuum(pages))
        if now == 0 or (left is not None and now >= left):
            break
        left = now
    await batches.submit(Checkpoint())
    return "incremental"
