"""Figure 4: fan-out from callbacks to plugin handlers.

(a) Events/s (:func:`burst_job`): ``kling-hooks serve`` with the no-op plugin
(:mod:`bench.perf.noop_plugin`), once as ``noop`` alone and once under three names (``noop``,
``noop_b``, ``noop_c``: three plugins, each with its own outbox rows, concurrency and
handlers). Events/s = (handler starts - 1) / (last start - first start), over all plugins,
measured two ways:

* **during a burst**: after the warm-up's deliveries are done, wrk sends a burst of ``burst``
  distinct callbacks at 64 connections, and the plugins deliver while they arrive (so with
  one plugin the figure is at most the ingest rate, which shares the process's CPU);
* **draining a backlog** (the fan-out target's figure): the same burst is stored by a
  receiver whose plugins refuse to start, then a second receiver on the same database
  delivers every event, with no ingest beside it.

Once every delivery is ``done`` (checked in the database) the receiver is stopped and the
plugins write their handler start times.

(b) Latency (:func:`latency_job`): the no-op plugin alone, wrk sending distinct callbacks at
half the ingest maximum of the same round (``ingest.none.c64``, throttled with ``delay()``)
for ``duration_s``, and a Python probe (httpx) sending its own callbacks at
``probe_rate_per_s`` beside it, noting the wall time each 200 arrived. Latency = the probe
task's handler start - that time. The probe's CPU use is reported (it must not be the limit).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.perf.loads import sample, timed, warm
from bench.perf.servers import Receiver, receiver, wait_deliveries
from bench.perf.sizes import Context, Sample
from bench.workload import Callback, distinct_callbacks

ONE = ("noop",)
THREE = ("noop", "noop_b", "noop_c")
#: Deliveries per second the wait for ``done`` allows at least, plus a fixed minute.
DRAIN_RATE_PER_S = 200


def starts_in(path: Path, prefix: str) -> Iterator[tuple[str, float]]:
    """``(task_id, Unix s)`` of each handler start one no-op plugin recorded in ``path``
    for tasks whose task_id starts with ``prefix``."""
    for line in path.read_text().splitlines():
        task_id, _, at = line.partition("\t")
        if task_id.startswith(prefix):
            yield task_id, float(at)


def starts(rx: Receiver, prefix: str) -> list[tuple[str, float]]:
    """:func:`starts_in` over all of ``rx``'s no-op plugins (and replicas)."""
    return [found for path in rx.starts_files.values() for found in starts_in(path, prefix)]


def drain_timeout_s(deliveries: int) -> float:
    return 60 + deliveries / DRAIN_RATE_PER_S


def events_per_s(ctx: Context, key: str, rx: Receiver, wanted: int) -> tuple[float, float]:
    """``(events/s, span s)`` over the handler starts of the ingest feed's callbacks."""
    found = starts(rx, "i")
    if len(found) != wanted:
        ctx.problems.append(f"{key}: {len(found)} handler starts, {wanted} wanted")
    times = sorted(at for _, at in found)
    span_s = times[-1] - times[0] if len(times) > 1 else 0.0
    return ((len(times) - 1) / span_s if span_s > 0 else 0.0), span_s


def _burst(ctx: Context, key: str, plugins: tuple[str, ...]) -> Sample:
    workdir = ctx.rundir(key)
    burst, warmup = ctx.sizes.burst, ctx.sizes.warmup
    with receiver(key, workdir, ctx.problems, noop=plugins) as rx:
        warm(ctx, rx, 64, tally=rx.tally)
        wait_deliveries(rx, warmup * len(plugins), drain_timeout_s(warmup * len(plugins)))
        result, _ = timed(ctx, rx, ctx.feeds.ingest, 64, duration_s=0, limit=burst, tally=rx.tally)
        expected = rx.tally.new * len(plugins)
        drain_s = wait_deliveries(rx, expected, drain_timeout_s(expected))
    value, span_s = events_per_s(ctx, key, rx, burst * len(plugins))
    ctx.done_with(workdir)
    return {
        "value": value,
        "deliveries": burst * len(plugins),
        "span_s": span_s,
        "ingest_rps": result.rps,
        "drain_after_burst_s": drain_s,
    }


def _backlog(ctx: Context, key: str, plugins: tuple[str, ...]) -> Sample:
    """A backlog of ``burst`` callbacks' deliveries, drained with no ingest beside it: a
    first receiver stores the burst while its no-op plugins refuse to start (so every
    delivery stays ``pending``); a second one, on the same database, delivers them all."""
    workdir = ctx.rundir(key)
    db = workdir / f"{key}.db"
    burst = ctx.sizes.burst
    refuse = "refuse_start = true\n"
    with receiver(
        f"{key}-fill", workdir, ctx.problems, noop=plugins, noop_toml=refuse, db=db
    ) as rx:
        timed(ctx, rx, ctx.feeds.ingest, 64, duration_s=0, limit=burst, tally=rx.tally)
        expected = rx.tally.new * len(plugins)
    with receiver(key, workdir, ctx.problems, noop=plugins, db=db) as rx:
        drain_s = wait_deliveries(rx, expected, drain_timeout_s(expected))
    value, span_s = events_per_s(ctx, key, rx, burst * len(plugins))
    ctx.done_with(workdir)
    return {"value": value, "deliveries": expected, "span_s": span_s, "drain_s": drain_s}


def burst_job(ctx: Context) -> dict[str, Sample]:
    """Events/s to one no-op plugin and to three: while a burst arrives, and draining a
    backlog (see the module docstring)."""
    return {
        "fanout.noop1": _burst(ctx, "fanout.noop1", ONE),
        "fanout.noop3": _burst(ctx, "fanout.noop3", THREE),
        "fanout.backlog1": _backlog(ctx, "fanout.backlog1", ONE),
        "fanout.backlog3": _backlog(ctx, "fanout.backlog3", THREE),
    }


async def probe(
    url: str, items: list[Callback], rate_per_s: float, duration_s: float
) -> tuple[dict[str, float], int, int, float]:
    """Send ``items`` at ``rate_per_s`` for ``duration_s`` (each on its own schedule, not
    waiting for the one before; up to 8 connections).

    Returns:
        ``({task_id: Unix s its 200 arrived}, new verdicts, 200 answers, CPU share of one
        core this process used meanwhile)``.
    """
    acked: dict[str, float] = {}
    verdicts = {"new": 0, "ok": 0}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:

        async def send(path: str, body: bytes) -> None:
            answer = await client.post(path, content=body, headers=headers)
            at = time.time()
            if answer.status_code == 200:
                acked[json.loads(body)["task_id"]] = at
                verdicts["ok"] += 1
                verdicts["new"] += answer.json()["verdict"] == "new"

        loop = asyncio.get_running_loop()
        cpu_before, started = time.process_time(), loop.time()
        sends = []
        for k, (path, body) in enumerate(items):
            at = started + k / rate_per_s
            if at - started >= duration_s:
                break
            await asyncio.sleep(max(0.0, at - loop.time()))
            sends.append(asyncio.create_task(send(path, body)))
        await asyncio.gather(*sends)
        cpu_share = (time.process_time() - cpu_before) / (loop.time() - started)
    return acked, verdicts["new"], verdicts["ok"], cpu_share


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ``values`` (NaN when empty)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _background(
    ctx: Context, rx: Receiver, rate_per_s: float
) -> tuple[threading.Thread, list[Sample]]:
    """wrk at ``rate_per_s`` against ``rx`` in a thread (started); its sample lands in the
    list once the thread ends (nothing there, and a problem, when it raised)."""
    found: list[Sample] = []

    def load() -> None:
        try:
            result, cpu_s = timed(
                ctx, rx, ctx.feeds.ingest, 64, rate_per_s=rate_per_s, tally=rx.tally
            )
            found.append(sample(result, cpu_s))
        except Exception as exc:  # the probe goes on; the figure is then missing
            ctx.problems.append(f"fanout.latency: the background load raised {exc!r}")

    thread = threading.Thread(target=load, name="background-load")
    thread.start()
    return thread, found


def latency_job(ctx: Context) -> dict[str, Sample]:
    """2xx -> handler start under background load at half the ingest maximum."""
    ingest = ctx.this_round.get("ingest.none.c64")
    if not ingest or not ingest["rps"]:
        ctx.problems.append("fanout.latency: no ingest maximum measured in this round")
        return {}
    target, sizes = ingest["rps"] / 2, ctx.sizes
    count = int(sizes.probe_rate_per_s * sizes.duration_s) + 1
    items = distinct_callbacks(count, prefix="p", image_base=ctx.feeds.image_base)
    workdir = ctx.rundir("fanout.latency")
    with receiver("fanout.latency", workdir, ctx.problems, noop=ONE) as rx:
        warm(ctx, rx, 64, tally=rx.tally)
        wait_deliveries(rx, sizes.warmup, drain_timeout_s(sizes.warmup))
        thread, background = _background(ctx, rx, target)
        acked, new, ok, probe_cpu = asyncio.run(
            probe(rx.url, items, sizes.probe_rate_per_s, sizes.duration_s)
        )
        thread.join()
        rx.tally.add(new, ok)
        wait_deliveries(rx, rx.tally.new, drain_timeout_s(rx.tally.new))
    started = dict(starts(rx, "p"))
    ctx.done_with(workdir)
    latencies = [(started[t] - at) * 1000 for t, at in acked.items() if t in started]
    if len(latencies) != len(acked) or not latencies:
        ctx.problems.append(f"fanout.latency: {len(latencies)} of {len(acked)} probes handled")
    found = {
        "value": background[0]["rps"] if background else 0.0,
        "target_rps": target,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "probes": len(latencies),
        "probe_cpu": probe_cpu,
    }
    return {"fanout.latency": found}
