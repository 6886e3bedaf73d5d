"""Figure 6: the receiver's footprint. Three of its figures come from the ingest job's
64-connection run (:mod:`bench.perf.ingest`: peak RSS, start-up time, database bytes per
task); this module takes the other two.

- Connections (:func:`connections_job`): ``kling-hooks serve`` with ``connections`` wrk
  connections open at once, each sending one callback a second (wrk's ``delay()`` spreads
  them), for ``duration_s``; ``VmRSS`` and the open file descriptors are
  sampled every 100 ms; the figure is the largest RSS. The fd count shows that every
  connection was open (the harness raised its soft ``RLIMIT_NOFILE`` to the hard limit).
- Download (:func:`download_job`): the downloader alone (``max_bytes`` 2 GiB or more,
  ``allow_private_hosts``), one callback whose one video is ``download_bytes`` long on the
  sink, streamed. ``VmRSS`` every 20 ms: before (just before the callback), max during
  (until the delivery is ``done``), after (0.5 s later); flat = max during - before. The
  saved file must have ``download_bytes`` bytes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx

from bench import processes
from bench.perf.loads import timed
from bench.perf.servers import receiver, wait_deliveries
from bench.perf.sizes import Context, Sample
from bench.workload import distinct_callbacks

MIB = 1024 * 1024


class Sampler:
    """Samples a process's ``VmRSS`` (MiB) and open fds in a thread while the block runs.

    Attributes:
        max_rss_mib: The largest RSS seen. ``max_fds``: the most fds seen.
    """

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid, self.every_s = pid, every_s
        self.max_rss_mib, self.max_fds = 0.0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            rss = processes.memory_kib(self.pid).get("VmRSS", 0) / 1024
            self.max_rss_mib = max(self.max_rss_mib, rss)
            self.max_fds = max(self.max_fds, processes.open_fds(self.pid))
            if self._done.wait(self.every_s):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()


def connections_job(ctx: Context) -> dict[str, Sample]:
    """RSS with ``connections`` open connections (see the module docstring)."""
    count = ctx.sizes.connections
    workdir = ctx.rundir("connections")
    with receiver("connections", workdir, ctx.problems) as rx:
        before = rx.rss_mib()
        with Sampler(rx.pid, 0.1) as sampler:
            result, _ = timed(
                ctx,
                rx,
                ctx.feeds.ingest,
                count,
                rate_per_s=count,
                tally=rx.tally,
            )
    if sampler.max_fds < count:
        ctx.problems.append(f"connections: at most {sampler.max_fds} fds open, {count} wanted")
    ctx.done_with(workdir)
    found = {"value": sampler.max_rss_mib, "before_mib": before, "max_fds": sampler.max_fds}
    found.update(rps=result.rps, non2xx=sum(result.non2xx.values()), p99=result.latency_ms["p99"])
    return {"footprint.rss_conns": found}


def _big_callback(ctx: Context, size: int) -> tuple[str, bytes]:
    path, body = distinct_callbacks(1, prefix="big")[0]
    doc = json.loads(body)
    url = f"{ctx.sink.url}/big/{size}.mp4"
    doc["task_result"] = {"videos": [{"id": "v0", "url": url, "duration": "5"}]}
    return path, json.dumps(doc).encode()


def _saved_bytes(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT coalesce(sum(bytes), 0) FROM files").fetchone()
    return int(row[0])


def download_job(ctx: Context) -> dict[str, Sample]:
    """RSS before, during and after one large download (see the module docstring)."""
    size = ctx.sizes.download_bytes
    workdir = ctx.rundir("download")
    toml = f"""
[plugins.downloader]
directory = "{workdir / "downloads"}"
allow_private_hosts = true
max_bytes = {max(2 * 1024**3, 2 * size)}
"""
    path, body = _big_callback(ctx, size)
    with receiver("download", workdir, ctx.problems, plugins_toml=toml) as rx:
        time.sleep(0.5)  # let start-up's allocations settle
        before = rx.rss_mib()
        with Sampler(rx.pid, 0.02) as sampler:
            answer = httpx.post(
                f"{rx.url}{path}", content=body, headers={"Content-Type": "application/json"}
            )
            ok = answer.status_code == 200
            rx.tally.add(int(ok and answer.json()["verdict"] == "new"), int(ok))
            took_s = wait_deliveries(rx, 1, 600)
        time.sleep(0.5)
        after = rx.rss_mib()
        saved = _saved_bytes(rx.db)
    if saved != size:
        ctx.problems.append(f"download: {saved} bytes saved, {size} sent")
    ctx.done_with(workdir)
    during = sampler.max_rss_mib
    return {
        "footprint.download_before": {"value": before},
        "footprint.download_max": {"value": during, "seconds": took_s},
        "footprint.download_after": {"value": after},
        "footprint.download_flat": {"value": during - before},
    }
