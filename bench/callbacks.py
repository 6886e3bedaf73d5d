"""Benchmark: how many Kling callbacks per second the receiver stores, and how fast it answers.

Run it from the repository root, in the project's virtualenv::

    python bench/callbacks.py                                  # 20000 callbacks, 64 connections
    python bench/callbacks.py --requests 5000 --concurrency 1,16,64
    python bench/callbacks.py --duplicates 0.2                 # also re-send 20% of them
    python bench/callbacks.py --client wrk                     # wrk as the load generator

What it does, once per concurrency level:

1. starts ``kling-hooks serve`` in a subprocess (its own CPU and event loop: uvloop + httptools,
   one worker, access log off), with a fresh SQLite file in a temporary directory and
   ``KLING_HOOKS_SECRET``, ``KLING_HOOKS_API_TOKEN``, ``KLING_HOOKS_LOG_LEVEL=warning`` set;
   waits until ``GET /readyz`` answers 200;
2. sends ``--warmup`` callbacks (not timed), then ``--requests`` callbacks over exactly
   ``C`` keep-alive connections to 127.0.0.1. Each callback is a distinct task (its own
   ``task_id`` and ``external_task_id``, with a valid callback URL token) whose body is a
   ``succeed`` task object of about 1 KB with five result images, as Kling sends it.
   ``--duplicates F`` adds ``F * requests`` re-sends of callbacks already in the stream;
3. prints requests/s, latency percentiles (ms, from just before the request is written to the
   end of the answer), the verdict counts, the non-200 answers, the server's and the load
   generator's CPU time, and the server's resident memory (``VmRSS``) at the end;
4. stops the server (SIGTERM) and checks with ``sqlite3`` that nothing acknowledged is lost:
   rows in ``transitions`` == "new" verdicts, and rows in ``callbacks`` == 200 answers.
   The exit code is 1 when a check fails.

The load generator shares the machine with the server. httpx is a slow client (a few thousand
requests/s per core): when the client's CPU time is close to the wall time, the client, not
the server, was the limit, and the output says so. ``--client wrk`` uses wrk (C, LuaJIT; the
Lua script of ``bench/wrk.py`` feeds it the pre-built requests) and measures closer to the
server's own limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import wrk
from bench.processes import (
    cpu_s,
    free_port,
    memory_kib,
    serve_command,
    start_server,
    stop_server,
    stored_counts,
    tail,
    wait_ready,
)
from bench.workload import Callback, Workload, build_workload

CLIENT_BOUND_SHARE = 0.85  # client CPU / wall time above this: the client was the limit


# --- load generators ----------------------------------------------------------------------


@dataclass
class Result:
    """What one timed run observed. ``latencies_ms`` may be empty (wrk gives percentiles)."""

    sent: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    verdicts: Counter[str] = field(default_factory=Counter)
    non_200: Counter[str] = field(default_factory=Counter)
    deadline_hit: bool = False
    notes: list[str] = field(default_factory=list)


async def _drive_httpx(
    base_url: str,
    items: list[Callback],
    concurrency: int,
    max_seconds: float,
    result: Result,
) -> None:
    # One client of one keep-alive connection per worker, not one client with a pool of
    # ``concurrency``: httpcore's pool rescans every queued request and connection on each
    # request (O(C^2)), which at C=64 costs the client milliseconds per request.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"content-type": "application/json"}
    next_index = iter(range(len(items)))
    connected, go = 0, asyncio.Event()

    async def worker() -> None:
        nonlocal connected
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
            (await client.get("/healthz")).raise_for_status()  # connect before the clock runs
            connected += 1
            if connected == concurrency:
                go.set()
            await go.wait()
            deadline = time.monotonic() + max_seconds
            for i in next_index:
                if time.monotonic() > deadline:
                    result.deadline_hit = True
                    return
                await _post(client, *items[i], headers, result)

    async def clock() -> None:
        await go.wait()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await workers
        result.elapsed_s = time.perf_counter() - wall0
        result.client_cpu_s = time.process_time() - cpu0

    workers = asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.gather(clock(), workers)


async def _post(
    client: httpx.AsyncClient, path: str, body: bytes, headers: dict[str, str], result: Result
) -> None:
    start = time.perf_counter()
    try:
        response = await client.post(path, content=body, headers=headers)
    except httpx.HTTPError as exc:
        result.non_200[type(exc).__name__] += 1
        return
    result.latencies_ms.append((time.perf_counter() - start) * 1000)
    result.sent += 1
    if response.status_code == 200:
        result.verdicts[response.json()["verdict"]] += 1
    else:
        result.non_200[str(response.status_code)] += 1


def run_httpx(base_url: str, items: list[Callback], concurrency: int, max_seconds: float) -> Result:
    """Send ``items`` from ``concurrency`` workers, each on its own keep-alive connection."""
    result = Result()
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop  # the client gets the fast loop too; it is the bottleneck

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_drive_httpx(base_url, items, concurrency, max_seconds, result))
    return result


def run_wrk(
    base_url: str,
    items: list[Callback],
    concurrency: int,
    max_seconds: float,
    threads: int,
    workdir: Path,
) -> Result:
    """Send ``items`` once each with wrk (``bench/wrk.py``, ``seq`` order); stops sending
    after ``max_seconds``."""
    feed = workdir / f"feed-{concurrency}.txt"
    wrk.write_feed(feed, (wrk.FeedLine("POST", path, body) for path, body in items))
    found = wrk.run_wrk(
        base_url,
        feed,
        connections=concurrency,
        duration_s=max_seconds,
        threads=threads,
        workdir=workdir,
    )
    result = Result(
        sent=found.answered,
        elapsed_s=found.span_s,
        deadline_hit=found.issued < len(items) or not found.finished,
        client_cpu_s=found.wrk_cpu_s,
    )
    result.percentiles_ms = {k: found.latency_ms[k] for k in ("p50", "p95", "p99", "max")}
    verdicts = {"new": found.new, "duplicate": found.duplicate, "stale": found.stale}
    result.verdicts.update({k: v for k, v in verdicts.items() if v})
    result.non_200.update(found.non2xx)
    result.non_200.update({f"socket {kind}": n for kind, n in found.errors.items()})
    if found.extra:
        result.notes.append(f"wrk also sent {found.extra} GET /healthz at the very end")
    return result


# --- checks and report --------------------------------------------------------------------


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, min(len(sorted_ms), round(p / 100 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def latency_figures(result: Result) -> dict[str, float]:
    if result.percentiles_ms:
        return result.percentiles_ms
    ordered = sorted(result.latencies_ms)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def format_counter(counter: Counter[str], keys: tuple[str, ...] = ()) -> str:
    names = [*keys, *sorted(k for k in counter if k not in keys)]
    return "  ".join(f"{k} {counter[k]}" for k in names) or "none"


@dataclass
class Round:
    concurrency: int
    result: Result
    warmup: Result
    server_cpu_s: float
    memory: dict[str, int]
    stored: tuple[int, int]
    exit_code: int

    @property
    def rps(self) -> float:
        return self.result.sent / self.result.elapsed_s if self.result.elapsed_s else 0.0

    @property
    def lossless(self) -> bool:
        new = self.result.verdicts["new"] + self.warmup.verdicts["new"]
        ok = sum(self.result.verdicts.values()) + sum(self.warmup.verdicts.values())
        return self.stored == (new, ok)


def report(r: Round, client: str) -> None:
    res, lat = r.result, latency_figures(r.result)
    wall = res.elapsed_s
    new = res.verdicts["new"] + r.warmup.verdicts["new"]
    ok = sum(res.verdicts.values()) + sum(r.warmup.verdicts.values())
    transitions, callbacks = r.stored
    print(f"-- concurrency {r.concurrency} ({client}) --")
    print(
        f"requests           {res.sent} in {wall:.2f} s"
        + ("  (stopped at --max-seconds)" if res.deadline_hit else "")
    )
    print(f"throughput         {r.rps:,.0f} req/s")
    print(
        f"latency ms         p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  "
        f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}"
    )
    print(f"verdicts           {format_counter(res.verdicts, ('new', 'duplicate', 'stale'))}")
    print(
        f"non-200 answers    {sum(res.non_200.values())}"
        + (f"  ({format_counter(res.non_200)})" if res.non_200 else "")
    )
    print(
        f"stored (warm-up included)  transitions {transitions} vs new verdicts {new}: "
        f"{'OK' if transitions == new else 'MISMATCH'};  callbacks {callbacks} vs "
        f"200 answers {ok}: {'OK' if callbacks == ok else 'MISMATCH'}"
    )
    rss, hwm = r.memory.get("VmRSS", 0) / 1024, r.memory.get("VmHWM", 0) / 1024
    print(
        f"server             RSS {rss:.1f} MiB at the end (peak {hwm:.1f} MiB);  "
        f"CPU {r.server_cpu_s:.2f} s = {r.server_cpu_s / wall:.0%} of one core;  "
        f"exit code {r.exit_code} after SIGTERM"
        + (" (uvicorn re-raises it after a clean shutdown)" if r.exit_code == -15 else "")
    )
    share = res.client_cpu_s / wall if wall else 0.0
    verdict = (
        " -> CLIENT-BOUND: the load generator saturated its core; the server can do more"
        if share > CLIENT_BOUND_SHARE
        else ""
    )
    print(f"client             CPU {res.client_cpu_s:.2f} s = {share:.0%} of one core{verdict}")
    for note in res.notes:
        print(f"note               {note}")


def run_round(args: argparse.Namespace, work: Workload, concurrency: int, tmp: Path) -> Round:
    db, log_path = tmp / f"bench-c{concurrency}.db", tmp / f"server-c{concurrency}.log"
    port = args.port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    proc = start_server(serve_command(port, db=db), log_path)
    try:
        wait_ready(f"{base_url}/readyz", proc, log_path)
        # Warm-up always with httpx: it only needs to be correct.
        warm = run_httpx(base_url, work.warmup, concurrency, args.max_seconds)
        cpu0 = cpu_s(proc.pid)
        if args.client == "wrk":
            result = run_wrk(
                base_url, work.timed, concurrency, args.max_seconds, args.wrk_threads, tmp
            )
        else:
            result = run_httpx(base_url, work.timed, concurrency, args.max_seconds)
        died = proc.poll()
        if died is None:
            server_cpu, memory = cpu_s(proc.pid) - cpu0, memory_kib(proc.pid)
        else:
            server_cpu, memory = 0.0, {}
            result.notes.append(
                f"the server exited by itself during the run (code {died});"
                " its log: " + tail(log_path, 1000)
            )
    finally:
        code = stop_server(proc)
    return Round(concurrency, result, warm, server_cpu, memory, stored_counts(db), code)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=20000,
        help="distinct callbacks timed per concurrency level (default 20000)",
    )
    parser.add_argument(
        "--concurrency",
        default="64",
        help="connections, or a comma-separated list such as 1,16,64 (default 64)",
    )
    parser.add_argument(
        "--duplicates",
        type=float,
        default=0.0,
        help="share of callbacks re-sent later in the stream, e.g. 0.2",
    )
    parser.add_argument(
        "--warmup", type=int, default=200, help="untimed callbacks first (default 200)"
    )
    parser.add_argument("--client", choices=["httpx", "wrk"], default="httpx")
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads (default 1: the server needs the other core)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="stop a timed run after this many seconds (default 300)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--seed", type=int, default=1, help="where re-sends are placed")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (databases, server logs)"
    )
    args = parser.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency {args.concurrency!r} is not a list of whole numbers")
    if not all(1 <= c <= 1024 for c in args.levels):
        parser.error("--concurrency values must be in [1, 1024]")
    if args.requests < 1 or not 0 <= args.duplicates <= 1 or args.warmup < 0:
        parser.error("--requests >= 1, --duplicates in [0, 1], --warmup >= 0")
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("--client wrk: wrk is not installed (apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = build_workload(args.requests, args.warmup, args.duplicates, args.seed)
    body_bytes = len(work.timed[0][1])
    print(
        f"kling-hooks callback benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  "
        f"Python {platform.python_version()}  {os.cpu_count()} CPUs  client {args.client}"
    )
    print(
        f"workload           {work.distinct_timed} distinct succeed callbacks of "
        f"{body_bytes} bytes + {len(work.timed) - work.distinct_timed} re-sends; "
        f"warm-up {len(work.warmup)}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="kling-hooks-bench-"))
    rounds = []
    try:
        for level in args.levels:
            rounds.append(run_round(args, work, level, tmp))
            report(rounds[-1], args.client)
    finally:
        if args.keep:
            print(f"kept               {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(rounds) > 1:
        print("-- summary --")
        print("concurrency  req/s    p50 ms  p95 ms  p99 ms  non-200  lossless")
        for r in rounds:
            lat = latency_figures(r.result)
            print(
                f"{r.concurrency:<11d}  {r.rps:<7,.0f}  {lat['p50']:<6.2f}  {lat['p95']:<6.2f}"
                f"  {lat['p99']:<6.2f}  {sum(r.result.non_200.values()):<7d}  "
                f"{'yes' if r.lossless else 'NO'}"
            )
    return 0 if all(r.lossless for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
