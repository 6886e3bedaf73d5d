"""The dispatcher: runs due outbox deliveries through their plugins, outside any request.

It is woken by the writer's commit listener when new deliveries are committed, by a finished
delivery (a slot came free), by a replay, and on Postgres by another replica's notification
(:meth:`Dispatcher.wake_at`, ``receiver.store.postgres.wakeups``); otherwise it sleeps
exactly until the next scheduled retry, or lease expiry. It never polls the database. Each
claimed delivery runs in its own task, under its plugin's ``timeout_s``, with at most
``concurrency`` running per plugin, so a plugin that raises or hangs delays no other plugin.
Outcomes are written back through the writer (``receiver.store.deliveries.Finish``, fenced
by the attempt it reports).

Crash safety: a delivery is claimed (``running``) before its handler starts and marked
``done`` only after it returns, so a kill at any moment leaves it ``running``, and
:meth:`Dispatcher.start` makes it due again. A handler may see an event twice, never zero
times.

Replicas (Postgres): each claim is leased, and a dispatcher given a ``sweep`` operation
(``ExpireLeases``) runs it, in the same commit as its claim, once the earliest lease or
retry it knows of has come: the deliveries of a replica that died are released and claimed
by the others then.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState, SavedFile
from receiver.plugins import Plugin, PluginError
from receiver.plugins.registry import LoadedPlugin
from receiver.retry import MAX_ERROR_CHARS, check_files, outcome_of
from receiver.store.deliveries import Claim, Claimed, Finish, Job, Outcome, Recover
from receiver.store.transaction import WriteOp
from receiver.writer import Writer

log = structlog.get_logger("kling_hooks.dispatcher")

#: ``listener(job, outcome)``, called after an attempt's outcome has committed.
DeliveryListener = Callable[[Job, Outcome], None]
STORE_RETRY_S = 1.0
#: ``sweep(now_ms, attempts_allowed)``: the operation that releases expired leases.
Sweep = Callable[[int, dict[str, int]], WriteOp[int]]
CANCEL_WAIT_S = 2.0


@dataclass
class _Slot:
    plugin: Plugin
    in_flight: int = 0
    available: bool = False

    @property
    def free(self) -> int:
        return self.plugin.settings.concurrency - self.in_flight if self.available else 0


class Dispatcher:
    """Delivers outbox rows to plugins.

    Args:
        writer: The running writer (claims and outcomes go through it).
        plugins: The enabled plugins.
        clock_ms: The wall clock, Unix ms.
        grace_s: At :meth:`close`, how long running deliveries may take to finish.
        rng: Source of retry jitter.
        log_done: Log each done delivery (``delivery_done``, at debug level:
            ``KLING_HOOKS_LOG_LEVEL=debug``); failures and dead letters are always logged.
        sweep: Releases the deliveries whose lease expired (Postgres's ``ExpireLeases``);
            None where claims hold no lease (SQLite: one receiver, recovered at start).
    """

    def __init__(
        self,
        writer: Writer,
        plugins: Sequence[LoadedPlugin],
        *,
        clock_ms: Callable[[], int],
        grace_s: float = 10.0,
        rng: random.Random | None = None,
        log_done: bool = False,
        sweep: Sweep | None = None,
    ) -> None:
        names = [p.name for p in plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"plugin names must be unique, got {names}")
        self._writer = writer
        self._slots = {p.name: _Slot(p.plugin) for p in plugins}
        self._clock_ms = clock_ms
        self._grace_s = grace_s
        self._rng = rng or random.Random()
        self._log_done = log_done
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._unrecorded: list[tuple[Job, Outcome]] = []
        self._listeners: list[DeliveryListener] = []
        self._sweep = sweep
        self._sweep_at = 0  # Unix ms: the earliest lease or retry known (sweep once passed)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the loop's time the timer is set for

    def add_listener(self, listener: DeliveryListener) -> None:
        """Call ``listener(job, outcome)`` after each attempt's outcome is committed."""
        self._listeners.append(listener)

    def wake(self) -> None:
        """Look for due deliveries now (new outbox rows were committed, or a replay)."""
        self._wake.set()

    def wake_at(self, due_ms: int) -> None:
        """Look for due deliveries at ``due_ms`` (Unix ms; now if it has passed): another
        replica committed deliveries, a retry or a lease that become actionable then. A
        later time than the one the dispatcher sleeps until changes nothing."""
        now_ms = self._clock_ms()
        self._sweep_at = min(self._sweep_at, due_ms)
        if due_ms <= now_ms:
            self._wake.set()
        else:
            self._arm((due_ms - now_ms) / 1000)

    def _arm(self, delay_s: float) -> None:
        """Wake in ``delay_s`` seconds, unless the timer is set for sooner already."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay_s
        if self._timer is not None and not self._timer.cancelled() and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._wake.set), at

    def is_started(self, name: str) -> bool:
        """Whether plugin ``name`` started (its ``start()`` returned) and so gets deliveries."""
        slot = self._slots.get(name)
        return slot is not None and slot.available

    async def start(self) -> None:
        """Make interrupted deliveries due again, start each plugin, start dispatching.

        A plugin whose ``start()`` raises or takes longer than its ``timeout_s`` is left out
        (logged); its deliveries stay pending.

        Raises:
            StoreUnavailable: the recovery could not commit.
        """
        recovered = await self._writer.submit(Recover(self._clock_ms(), self._attempts_allowed()))
        if recovered:
            log.warning("deliveries_recovered", count=recovered)
        for name, slot in self._slots.items():
            try:
                await asyncio.wait_for(slot.plugin.start(), slot.plugin.settings.timeout_s)
                slot.available = True
            except Exception:  # TimeoutError too: a hanging start() must not hold up the rest
                log.exception("plugin_start_failed", plugin=name)
        self._loop_task = asyncio.create_task(self._run(), name="kling-hooks-dispatcher")

    async def close(self) -> None:
        """Stop claiming; wait up to ``grace_s`` for running deliveries, then cancel the rest
        (they are recorded ``failed``, due at once after a restart); stop every plugin."""
        self._stopping = True
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=self._grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("deliveries_cancelled_at_shutdown", count=len(late))
                await asyncio.wait(late, timeout=CANCEL_WAIT_S)
        await self._flush_unrecorded()
        for name, slot in self._slots.items():
            if slot.available:
                try:
                    await asyncio.wait_for(slot.plugin.stop(), CANCEL_WAIT_S)
                except Exception:
                    log.exception("plugin_stop_failed", plugin=name)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                timeout_s = await self._dispatch_due()
            except Exception:  # a bug must not end delivery for the life of the process
                log.exception("dispatch_failed")
                timeout_s = STORE_RETRY_S
            if self._stopping:
                break
            # Until woken, or until the next retry is due (a timer sets the same event:
            # wait_for would make a task of every wait).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if timeout_s is not None:
                self._arm(timeout_s)
            await self._wake.wait()

    async def _dispatch_due(self) -> float | None:
        """Claim and start what is due; returns how long to sleep unless woken (None: until
        woken)."""
        await self._flush_unrecorded()
        slots = {name: s.free for name, s in self._slots.items() if s.free > 0}
        timeout_s: float | None = None
        if slots:
            try:
                claimed = await self._claim(slots)
            except StoreUnavailable as exc:
                log.error("claim_failed", error=str(exc))
                claimed = Claimed([], self._clock_ms() + int(STORE_RETRY_S * 1000))
            for job in claimed.jobs:
                self._spawn(job)
            if claimed.next_due_at is not None:
                timeout_s = max(0.0, (claimed.next_due_at - self._clock_ms()) / 1000)
                self._sweep_at = min(self._sweep_at, claimed.next_due_at)
        if self._unrecorded:
            timeout_s = STORE_RETRY_S if timeout_s is None else min(timeout_s, STORE_RETRY_S)
        return timeout_s

    async def _claim(self, slots: dict[str, int]) -> Claimed:
        """Claim up to ``slots`` deliveries per plugin; when the earliest lease or retry known
        has come, sweep the expired leases first, in the same commit (both are submitted in
        one turn of the loop, so the writer batches them in order)."""
        now_ms = self._clock_ms()
        claim = self._writer.submit(Claim(slots, now_ms))
        if self._sweep is None or now_ms < self._sweep_at:
            return await claim
        self._sweep_at = 2**62  # until a claim or a notification tells of a sooner one
        swept: Any
        swept, claimed = await asyncio.gather(
            self._writer.submit(self._sweep(now_ms, self._attempts_allowed())),
            claim,
            return_exceptions=True,
        )
        if isinstance(swept, BaseException):
            log.error("lease_sweep_failed", error=str(swept))
            self._sweep_at = now_ms
        elif swept:
            log.warning("deliveries_lease_expired", count=swept)
        if isinstance(claimed, BaseException):
            raise claimed
        return claimed

    def _attempts_allowed(self) -> dict[str, int]:
        """Per plugin, how many attempts a delivery gets (``1 + len(retry_schedule_s)``)."""
        return {
            name: 1 + len(slot.plugin.settings.retry_schedule_s)
            for name, slot in self._slots.items()
        }

    def _spawn(self, job: Job) -> None:
        slot = self._slots[job.plugin]
        slot.in_flight += 1
        task = asyncio.create_task(self._deliver(slot, job), name=f"deliver-{job.plugin}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _deliver(self, slot: _Slot, job: Job) -> None:
        # This task's own context (create_task copied it): every line the plugin logs says
        # which delivery it is about.
        structlog.contextvars.bind_contextvars(
            plugin=job.plugin,
            delivery_id=job.event.delivery_id,
            task_id=job.event.task_id,
            external_task_id=job.event.external_task_id,
        )
        freed = False
        try:
            outcome = await self._attempt(slot, job)
            # The handler is done: its slot is free for the next delivery, whose claim then
            # shares a transaction with this outcome (concurrency bounds handlers, not the
            # bookkeeping after them).
            freed = True
            slot.in_flight -= 1
            self._wake.set()
            await self._record(job, outcome)
        except Exception:  # a bug here must not strand the delivery or leak the slot
            log.exception("delivery_crashed", plugin=job.plugin, delivery_id=job.event.delivery_id)
            self._unrecorded.append(
                (job, Outcome(DeliveryState.FAILED, self._clock_ms() + 60_000, "internal error"))
            )
        finally:
            if not freed:
                slot.in_flight -= 1
                self._wake.set()

    async def _attempt(self, slot: _Slot, job: Job) -> Outcome:
        """Run the handler once; returns what follows (never raises but CancelledError at
        shutdown, which it turns into an interrupted outcome)."""
        settings = slot.plugin.settings
        error: BaseException | None = None
        files: tuple[SavedFile, ...] = ()
        try:
            async with asyncio.timeout(settings.timeout_s):
                returned = tuple(await slot.plugin.handle(job.event) or ())
            check_files(returned)
            files = returned
        except asyncio.CancelledError:
            if not self._stopping:  # the handler's own cancellation: an ordinary failure
                error = RuntimeError("the handler raised CancelledError")
            else:
                return Outcome(
                    DeliveryState.FAILED,
                    self._clock_ms(),
                    "interrupted: the receiver shut down during this attempt",
                )
        except Exception as exc:
            error = exc
        if isinstance(error, PluginError):
            files = error.saved_files
            try:
                check_files(files)
            except TypeError as bad:
                error, files = bad, ()
        return outcome_of(
            error,
            attempts=job.event.attempt,
            schedule_s=settings.retry_schedule_s,
            now_ms=self._clock_ms(),
            rng=self._rng,
            files=files,
        )

    async def _record(self, job: Job, outcome: Outcome) -> None:
        op = Finish(
            job.event.delivery_id,
            job.event.task_id,
            outcome,
            self._clock_ms(),
            attempt=job.event.attempt,
        )
        try:
            stored = await self._writer.submit(op)
        except StoreUnavailable as exc:
            log.error("delivery_outcome_not_stored", delivery_id=op.delivery_id, error=str(exc))
            self._unrecorded.append((job, outcome))
            return
        except Exception as exc:  # the outcome itself could not be stored (a bad value)
            log.exception("delivery_outcome_refused", delivery_id=op.delivery_id)
            if outcome.files or outcome.state is not DeliveryState.FAILED:
                plain = Outcome(
                    DeliveryState.FAILED,
                    self._clock_ms() + 60_000,
                    f"the outcome could not be stored: {exc}"[:MAX_ERROR_CHARS],
                )
                await self._record(job, plain)
            return  # else it stays running in the store until the next start recovers it
        if not stored:  # the lease was lost: another attempt owns the delivery now
            log.warning("delivery_outcome_ignored", delivery_id=op.delivery_id, attempt=op.attempt)
            return
        self._log(job, outcome)  # after the commit: the log never runs ahead of the store
        for listener in self._listeners:
            try:
                listener(job, outcome)
            except Exception:
                log.exception("delivery_listener_failed")

    async def _flush_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        for job, outcome in pending:
            await self._record(job, outcome)

    def _log(self, job: Job, outcome: Outcome) -> None:
        fields = {
            "plugin": job.plugin,
            "delivery_id": job.event.delivery_id,
            "task_id": job.event.task_id,
            "task_status": job.event.task_status.value,
            "attempt": job.event.attempt,
            "state": outcome.state.value,
        }
        if outcome.state is DeliveryState.DONE:
            if self._log_done:  # one line per event: asking the logger costs µs per call
                log.debug("delivery_done", **fields)
        elif outcome.state is DeliveryState.DEAD:
            log.error("delivery_dead", error=outcome.last_error, **fields)
        else:
            log.warning(
                "delivery_failed",
                error=outcome.last_error,
                next_attempt_at=outcome.next_attempt_at,
                **fields,
            )
