"""The live feed: which tasks just changed, for the dashboard's Server-Sent Events.

:class:`LiveFeed` is fed by the writer's in-process commit signal
(:meth:`receiver.writer.Writer.add_listener` and ``add_callback_listener``: the transitions
and the raw callbacks of every commit) and by the
dispatcher's outcomes (:meth:`receiver.dispatcher.Dispatcher.add_listener`: a delivery
reached ``done``, ``failed`` or ``dead``), and by the dashboard's own replays. Each open
event stream holds a :class:`Subscription`, which collects the task_ids changed since its
reader last looked. Nothing polls the database: a stream sleeps until the feed wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from receiver.store.deliveries import Job, Outcome
from receiver.transitions import CallbackRow, TransitionRow

#: Task ids a subscription keeps between two reads; past it, it says "everything changed".
MAX_PENDING = 1000
#: What :meth:`Subscription.next` gives when more than :data:`MAX_PENDING` tasks changed, or
#: a change concerned no one task (a replay of many deliveries).
EVERYTHING = "*"


class Subscription:
    """One reader of the feed (an open event stream)."""

    def __init__(self) -> None:
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self.closed = False

    def add(self, task_id: str) -> None:
        """Note that ``task_id`` changed, and wake the reader."""
        if len(self._changed) >= MAX_PENDING:
            self._changed = {EVERYTHING}
        else:
            self._changed.add(task_id)
        self._wake.set()

    def close(self) -> None:
        """End the subscription: :meth:`next` returns None from now on."""
        self.closed = True
        self._wake.set()

    async def next(self) -> set[str] | None:
        """Wait until something changed; the task_ids changed since the last call
        (:data:`EVERYTHING` among them when it cannot say which), or None once the feed is
        closed (the receiver is stopping)."""
        await self._wake.wait()
        self._wake.clear()
        if self.closed:
            return None
        changed, self._changed = self._changed, set()
        return changed


class LiveFeed:
    """Fans task changes out to every :class:`Subscription`; all on the event loop."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        #: How many changes were published so far. A page rendered at ``seq`` subscribes with
        #: ``since=seq``, so a change between its rendering and its subscription is not lost.
        self.seq = 0

    @property
    def subscribers(self) -> int:
        """How many streams are open."""
        return len(self._subscriptions)

    def on_commit(self, transitions: list[TransitionRow]) -> None:
        """A writer listener: the tasks of a commit's new transitions changed (a registration
        or a reconcile records one without a callback)."""
        for t in transitions:
            self.changed(t.task_id)

    def on_callbacks(self, callbacks: list[CallbackRow]) -> None:
        """A writer callback listener: the tasks of a commit's raw callbacks changed (their
        counts, even when the verdict was duplicate or stale)."""
        for c in callbacks:
            self.changed(c.task_id)

    def on_outcome(self, job: Job, outcome: Outcome) -> None:
        """A dispatcher listener: a delivery of ``job``'s task changed state."""
        self.changed(job.event.task_id)

    def changed(self, task_id: str = EVERYTHING) -> None:
        """Tell every subscriber that ``task_id`` changed (default: an unknown set of tasks)."""
        self.seq += 1
        for sub in self._subscriptions:
            sub.add(task_id)

    @contextlib.contextmanager
    def subscribe(self, since: int | None = None) -> Iterator[Subscription]:
        """A subscription for the duration of the block (closed at once if the feed is).

        Args:
            since: The :attr:`seq` the subscriber's view was made at: when changes came
                after it, the first :meth:`Subscription.next` says :data:`EVERYTHING` at once.
        """
        sub = Subscription()
        if since is not None and since < self.seq:
            sub.add(EVERYTHING)
        if self._closed:
            sub.close()
        self._subscriptions.add(sub)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)

    def close(self) -> None:
        """End every stream, now and later (the receiver is stopping). Idempotent."""
        self._closed = True
        for sub in self._subscriptions:
            sub.close()
