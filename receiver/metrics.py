"""Prometheus metrics of one running receiver, served at ``GET /metrics`` (``receiver.api``).

Each app has its own :class:`Metrics`, built by ``receiver.app``'s lifespan and held by
:class:`~receiver.services.Services`, with its own ``CollectorRegistry``: there is no
module-level state, so one process can run many apps (the tests do).

=================================================  =========  =================================
metric                                             type       labels
=================================================  =========  =================================
``kling_hooks_callbacks_total``                    counter    ``verdict``: new, duplicate, stale
``kling_hooks_callback_rejections_total``          counter    ``reason``: a :class:`Rejection`
``kling_hooks_callback_duration_seconds``          histogram  (none): every callback, any answer
``kling_hooks_header_timeouts_total``              counter    (none): connections closed with
                                                              a 408, headers too slow
``kling_hooks_headers_too_large_total``            counter    (none): connections closed with
                                                              a 431, header block too large
``kling_hooks_connections_near_fd_limit_total``    counter    (none): connections accepted
                                                              near the fd limit
``kling_hooks_delivery_attempts_total``            counter    ``plugin``, ``outcome``: done,
                                                              failed (a retry follows), dead
``kling_hooks_deliveries_pending``                 gauge      ``plugin``
``kling_hooks_delivery_oldest_pending_age_seconds``  gauge    ``plugin``
``kling_hooks_deliveries_dead``                    gauge      ``plugin``
``kling_hooks_database_size_bytes``                gauge      (none): the SQLite file + its WAL
                                                              (SQLite only)
``kling_hooks_build_info``                         gauge      ``version``, ``python``, ``sqlite``
=================================================  =========  =================================

The counters and the histogram are updated in memory as things happen (no database work on the
callback path; the callback path's own counts are plain numbers, exported at scrape). The
gauges are computed at scrape time: the outbox figures by one query on a read connection
(:meth:`receiver.store.Reader.backlog`), the size from the files. Every label set is bounded:
verdicts, rejection reasons and delivery outcomes are enums, plugins are the configured ones.
"""

from __future__ import annotations

import bisect
import itertools
import os
import platform
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from receiver import __version__
from receiver.models import Backlog, DeliveryState, Verdict
from receiver.store import StatusReads
from receiver.store.deliveries import Job, Outcome

#: The ``Content-Type`` of ``GET /metrics``: Prometheus' text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Upper bounds of the callback latency histogram, seconds (a group commit with
#: ``synchronous=FULL`` takes milliseconds; a locked database up to the busy timeout).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How an attempt can end (``Outcome.state``), the ``outcome`` label's values.
_OUTCOMES = (DeliveryState.DONE, DeliveryState.FAILED, DeliveryState.DEAD)


class Rejection(StrEnum):
    """Why a callback was refused: the ``reason`` label of
    ``kling_hooks_callback_rejections_total``.

    Stable short codes, never free text, so the label set stays bounded. A new kind of refusal
    adds a member here and calls :meth:`Metrics.rejected`; each member is exported from
    start-up on, at 0. The statuses are those of ``receiver.callbacks``' table.
    """

    TOKEN = "token"  # 401: the URL token does not verify
    NOT_JSON = "not_json"  # 400: not JSON, or not UTF-8
    OTHER_TASK = "other_task"  # 409: the body or the store names another task than the URL
    TOO_LARGE = "too_large"  # 413: over KLING_HOOKS_MAX_BODY_BYTES
    NOT_A_TASK = "not_a_task"  # 422: JSON, but not a Kling task object
    TOO_SLOW = "too_slow"  # 408: the body did not arrive within KLING_HOOKS_BODY_TIMEOUT_S
    OVERLOADED = "overloaded"  # 503: KLING_HOOKS_MAX_IN_FLIGHT requests were being handled
    STORE_UNAVAILABLE = "store_unavailable"  # 503: the database could not commit


class Metrics:
    """The metrics of one receiver, in a registry of its own.

    Args:
        db: The SQLite file (its size and its ``-wal``'s are reported); None on Postgres,
            whose size is the server's to report.
        plugins: The enabled plugins' names; their series exist from start-up on, at 0.
        clock_ms: The wall clock, Unix ms (the age of the oldest pending delivery).

    Attributes:
        registry: The ``CollectorRegistry`` of the counters, the histogram and the build info.
    """

    def __init__(
        self, *, db: Path | None, plugins: Sequence[str], clock_ms: Callable[[], int]
    ) -> None:
        self._db = db
        self._plugins = tuple(plugins)
        self._clock_ms = clock_ms
        self.registry = CollectorRegistry()
        # The callback path's own counts: plain numbers, changed on the event loop only, and
        # turned into their families at scrape (a Counter's or a Histogram's lock and method
        # calls cost several µs per callback: bench/README.md).
        self._verdicts = dict.fromkeys(Verdict, 0)
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last: over every bound
        self._latency_sum_s = 0.0
        rejections = Counter(
            "kling_hooks_callback_rejections",
            "Callbacks refused (nothing stored), by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._rejections = {r: rejections.labels(r.value) for r in Rejection}
        self._header_timeouts = Counter(
            "kling_hooks_header_timeouts",
            "Connections closed (408) whose request line and headers took longer than "
            "KLING_HOOKS_HEADER_TIMEOUT_S (on any route: the path may not have arrived).",
            registry=self.registry,
        )
        self._headers_too_large = Counter(
            "kling_hooks_headers_too_large",
            "Connections closed (431) whose request line and headers were over "
            "KLING_HOOKS_MAX_HEADER_BYTES.",
            registry=self.registry,
        )
        self._near_fd_limit = Counter(
            "kling_hooks_connections_near_fd_limit",
            "Connections accepted while the open connections were past the file "
            "descriptor budget (7/8 of RLIMIT_NOFILE's soft limit).",
            registry=self.registry,
        )
        self._attempts = Counter(
            "kling_hooks_delivery_attempts",
            "Delivery attempts that ended, by plugin and outcome (done; failed: a retry "
            "follows; dead: no retry).",
            ["plugin", "outcome"],
            registry=self.registry,
        )
        self._attempt_series = {
            (name, state): self._attempts.labels(name, state.value)
            for name in self._plugins
            for state in _OUTCOMES
        }
        Info(
            "kling_hooks_build",
            "Versions of kling-hooks and what it runs on.",
            registry=self.registry,
        ).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
            }
        )

    def callback(self, verdict: Verdict) -> None:
        """Count a stored callback by its verdict (on the event loop)."""
        self._verdicts[verdict] += 1

    def rejected(self, reason: Rejection) -> None:
        """Count a refused callback by its reason."""
        self._rejections[reason].inc()

    def header_timed_out(self) -> None:
        """Count a connection closed because its headers did not arrive in time."""
        self._header_timeouts.inc()

    def header_too_large(self) -> None:
        """Count a connection closed because its header block was too large."""
        self._headers_too_large.inc()

    def near_fd_limit(self) -> None:
        """Count a connection accepted while connections were past the fd budget."""
        self._near_fd_limit.inc()

    def callback_took(self, seconds: float) -> None:
        """Observe one callback's handling time, seconds (any outcome; on the event loop)."""
        self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self._latency_sum_s += seconds

    def delivery_finished(self, job: Job, outcome: Outcome) -> None:
        """Count an attempt's committed outcome: a ``receiver.dispatcher.DeliveryListener``."""
        series = self._attempt_series.get((job.plugin, outcome.state))
        if series is None:  # a plugin not named at start-up
            series = self._attempts.labels(job.plugin, outcome.state.value)
        series.inc()

    async def scrape(self, reader: StatusReads) -> bytes:
        """Every metric in Prometheus' text format (:data:`CONTENT_TYPE`), UTF-8.

        Args:
            reader: The status API's reads; the outbox gauges are one query.

        Raises:
            StoreUnavailable: the database did not answer that query.
        """
        outbox = _outbox_families(await reader.backlog(), self._plugins, self._clock_ms())
        computed = [*self._callback_families(), *outbox]
        if self._db is not None:
            computed.append(self._database_size(self._db))
        return generate_latest(_Scrape(self.registry, computed))

    def _callback_families(self) -> list[Metric]:
        callbacks = CounterMetricFamily(
            "kling_hooks_callbacks",
            "Callbacks stored, by verdict (new transition, duplicate, stale).",
            labels=["verdict"],
        )
        for verdict, count in self._verdicts.items():
            callbacks.add_metric([verdict.value], count)
        cumulative = list(itertools.accumulate(self._latency_counts))
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
        latency = HistogramMetricFamily(
            "kling_hooks_callback_duration_seconds",
            "Time from the callback handler's start to its answer, every outcome, seconds.",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self._latency_sum_s,
        )
        return [callbacks, latency]

    @staticmethod
    def _database_size(db: Path) -> Metric:
        size = 0
        for path in (db, db.with_name(db.name + "-wal")):
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                pass
        family = GaugeMetricFamily(
            "kling_hooks_database_size_bytes",
            "Size of the SQLite database file plus its write-ahead log (-wal), bytes.",
        )
        family.add_metric([], size)
        return family


class _Scrape:
    """One scrape: the registry's metrics, then those computed for this scrape.

    The ``_created`` samples of counters and histograms (each series' start time, which the
    0.0.4 text format would send as one more gauge per series) are left out; the library can
    drop them only for the whole process.
    """

    def __init__(self, registry: CollectorRegistry, computed: Iterable[Metric]) -> None:
        self._registry = registry
        self._computed = computed

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():  # fresh objects on every call
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
        yield from self._computed


def _outbox_families(
    backlog: Sequence[Backlog], plugins: Sequence[str], now_ms: int
) -> list[Metric]:
    """The outbox gauges: every enabled plugin (at 0 when it has nothing waiting), and any
    other plugin that still has deliveries in the store (one no longer enabled)."""
    by_plugin = {b.plugin: b for b in backlog}
    for name in plugins:
        by_plugin.setdefault(name, Backlog(name))
    pending = GaugeMetricFamily(
        "kling_hooks_deliveries_pending",
        "Deliveries not yet done or dead (waiting, running, or failed and due for a retry).",
        labels=["plugin"],
    )
    age = GaugeMetricFamily(
        "kling_hooks_delivery_oldest_pending_age_seconds",
        "Age of the oldest pending delivery (since its transition was stored), seconds; "
        "0 when none.",
        labels=["plugin"],
    )
    dead = GaugeMetricFamily(
        "kling_hooks_deliveries_dead",
        "Dead deliveries (retries exhausted or a permanent error), until replayed.",
        labels=["plugin"],
    )
    for name, b in sorted(by_plugin.items()):
        oldest_s = 0.0 if b.oldest_pending_at is None else (now_ms - b.oldest_pending_at) / 1000
        pending.add_metric([name], b.pending)
        age.add_metric([name], max(0.0, oldest_s))
        dead.add_metric([name], b.dead)
    return [pending, age, dead]
