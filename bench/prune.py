"""Benchmark: how long callbacks wait while ``prune`` removes a large backlog.

Run it from the repository root, in the project's virtualenv::

    python bench/prune.py                         # 200k old callbacks + 200k old deliveries
    python bench/prune.py --rows 60000 --rounds 3 --vacuum

What it does:

1. builds a database with the current schema (``receiver.store.migrate``) and fills it
   directly, before any receiver owns it, with ``--rows`` tasks, each with one transition,
   one raw callback (a ~1 KB ``succeed`` body) and one ``done`` delivery, all old. The rows
   are split into ``--rounds`` cohorts of different ages (400, 300, 200... days);
2. starts ``kling-hooks serve`` (a subprocess, log level warning) and sends a stream of new
   callbacks over ``--concurrency`` keep-alive connections, each a new task, for the whole run;
3. per round: ``--baseline-s`` seconds of stream alone, then ``POST /prune`` removing one
   cohort (with ``--vacuum``, then giving the space back) while the stream goes on;
4. prints, per round, the callbacks' latency (p50, p99, max, ms) without and during prune,
   the ratio of the two maxima, the prune's batches and its longest batch; then the median of
   each figure over the rounds. The exit code is 1 when a callback was not answered 200, or
   when a cohort was not removed entirely.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from receiver import store
from submitter.tokens import CallbackTokens

SECRET = "bench-secret-not-for-production-0123456789abcdef"
API_TOKEN = "bench-api-token"
DAY_MS = 86_400_000
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def body(task_id: str, ext: str, at_ms: int) -> str:
    images = [{"index": i, "url": f"https://cdn.example/{task_id}/{i}.png"} for i in range(5)]
    return json.dumps(
        {
            "task_id": task_id,
            "task_status": "succeed",
            "task_status_msg": "",
            "created_at": at_ms - 9000,
            "updated_at": at_ms,
            "task_info": {"external_task_id": ext},
            "task_result": {"images": images},
            "final_unit_deduction": "0.2",
            "padding": "x" * 420,
        }
    )


def fill(db: Path, rows: int, rounds: int, now_ms: int) -> list[int]:
    """Fill ``db`` with ``rows`` old tasks in ``rounds`` cohorts; returns each cohort's age in
    days, oldest first."""

    async def create() -> None:
        conn = await store.connect(db)
        await store.migrate(conn)
        await conn.close()

    asyncio.run(create())
    ages = [100 * (rounds - k) + 100 for k in range(rounds)]  # ..., 300, 200 days
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    per = rows // rounds
    for k, age in enumerate(ages):
        at = now_ms - age * DAY_MS
        ids = range(k * per + 1, (k + 1) * per + 1)
        conn.executemany(
            "INSERT INTO tasks (task_id, external_task_id, task_status, first_seen_at,"
            " last_received_at) VALUES (?, ?, 'succeed', ?, ?)",
            ((f"old-{i}", f"old-ext-{i}", at, at) for i in ids),
        )
        conn.executemany(
            "INSERT INTO transitions (id, task_id, task_status, updated_at, received_at, source)"
            " VALUES (?, ?, 'succeed', ?, ?, 'callback')",
            ((i, f"old-{i}", at, at) for i in ids),
        )
        conn.executemany(
            "INSERT INTO callbacks (task_id, task_status, verdict, received_at, body)"
            " VALUES (?, 'succeed', 'new', ?, ?)",
            ((f"old-{i}", at, body(f"old-{i}", f"old-ext-{i}", at)) for i in ids),
        )
        conn.executemany(
            "INSERT INTO deliveries (transition_id, plugin, state, attempts, created_at,"
            " updated_at) VALUES (?, 'bench', 'done', 1, ?, ?)",
            ((i, at, at) for i in ids),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return ages


class Stream:
    """New callbacks over ``concurrency`` connections; each latency with its start time."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.concurrency = concurrency
        self.samples: list[tuple[float, float]] = []  # (started, seconds)
        self.failures = 0
        self._stop = asyncio.Event()
        self._n = 0

    async def _worker(self) -> None:
        tokens = CallbackTokens([SECRET])
        async with httpx.AsyncClient(timeout=60) as http:
            while not self._stop.is_set():
                self._n += 1
                n = self._n
                url = tokens.callback_url(self.url, f"live-ext-{n}")
                content = body(f"live-{n}", f"live-ext-{n}", int(time.time() * 1000))
                started = time.perf_counter()
                answer = await http.post(url, content=content)
                self.samples.append((started, time.perf_counter() - started))
                self.failures += answer.status_code != 200

    def start(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]

    async def stop(self, workers: list[asyncio.Task[None]]) -> None:
        self._stop.set()
        await asyncio.gather(*workers)

    def between(self, start: float, end: float) -> list[float]:
        return [s * 1000 for t, s in self.samples if start <= t < end]


def figures(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "n": len(ordered),
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def prepare(args: argparse.Namespace, work: Path) -> list[int]:
    """Fill the database; returns the cohorts' ages in days."""
    db = work / "kling-hooks.db"
    started = time.perf_counter()
    ages = fill(db, args.rows, args.rounds, int(time.time() * 1000))
    print(
        f"filled {args.rows:,} tasks/callbacks/deliveries in {time.perf_counter() - started:.1f} s,"
        f" {db.stat().st_size / 2**20:.0f} MiB; cohorts {ages} days old"
    )
    return ages


async def run(args: argparse.Namespace, work: Path, ages: list[int]) -> int:
    db = work / "kling-hooks.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env.update(
        KLING_HOOKS_SECRET=SECRET, KLING_HOOKS_API_TOKEN=API_TOKEN, KLING_HOOKS_LOG_LEVEL="warning"
    )
    command = [str(Path(sys.executable).parent / "kling-hooks"), "serve", "--db", str(db)]
    proc = await asyncio.create_subprocess_exec(*command, "--port", str(port), env=env, cwd=work)
    base = f"http://127.0.0.1:{port}"
    failed = 0
    try:
        async with httpx.AsyncClient(timeout=3600) as api:
            for _ in range(200):
                try:
                    if (await api.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            stream = Stream(base, args.concurrency)
            workers = stream.start()
            results = []
            for k, age in enumerate(ages):
                t0 = time.perf_counter()
                await asyncio.sleep(args.baseline_s)
                t1 = time.perf_counter()
                request = {"older_than_ms": (age - 50) * DAY_MS, "vacuum": args.vacuum}
                answer = (await api.post(f"{base}/prune", json=request, headers=AUTH)).json()
                t2 = time.perf_counter()
                quiet, busy = figures(stream.between(t0, t1)), figures(stream.between(t1, t2))
                per = args.rows // args.rounds
                if (answer.get("callbacks"), answer.get("deliveries")) != (per, per):
                    print(f"round {k + 1}: prune removed {answer}, expected {per} of each")
                    failed += 1
                results.append((quiet, busy, answer, t2 - t1))
            await stream.stop(workers)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    report(results, args)
    if stream.failures:
        print(f"FAILED: {stream.failures} callbacks not answered 200")
    return 1 if failed or stream.failures else 0


def report(
    results: list[tuple[dict[str, float], dict[str, float], dict[str, object], float]],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nstream: {args.concurrency} connections; baseline {args.baseline_s} s per round;"
        f" vacuum={args.vacuum}"
    )
    header = (
        "round",
        "without prune p50/p99/max ms",
        "during prune p50/p99/max ms",
        "max ratio",
        "prune s",
        "batches",
        "longest batch ms",
        "vacuum",
    )
    print(" | ".join(header))
    ratios, longest, p50s, maxes = [], [], [], []
    for k, (quiet, busy, answer, seconds) in enumerate(results, 1):
        ratio = busy["max"] / quiet["max"]
        ratios.append(ratio)
        longest.append(float(str(answer["longest_batch_ms"])))
        p50s.append(busy["p50"] / quiet["p50"])
        maxes.append((quiet["max"], busy["max"]))
        print(
            f"{k} | {quiet['p50']:.1f}/{quiet['p99']:.1f}/{quiet['max']:.1f} (n={quiet['n']:.0f})"
            f" | {busy['p50']:.1f}/{busy['p99']:.1f}/{busy['max']:.1f} (n={busy['n']:.0f})"
            f" | {ratio:.2f} | {seconds:.1f} | {answer['batches']} | {answer['longest_batch_ms']}"
            f" | {answer['vacuum']}"
        )
    print(
        f"median over rounds: max latency without {statistics.median(m[0] for m in maxes):.1f} ms,"
        f" during {statistics.median(m[1] for m in maxes):.1f} ms (ratio"
        f" {statistics.median(ratios):.2f}); p50 ratio {statistics.median(p50s):.2f};"
        f" longest prune batch {statistics.median(longest):.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="old rows in each table")
    parser.add_argument("--rounds", type=int, default=4, help="cohorts, one pruned per round")
    parser.add_argument("--concurrency", type=int, default=4, help="stream connections")
    parser.add_argument("--baseline-s", type=float, default=3.0, help="stream alone per round")
    parser.add_argument("--vacuum", action="store_true", help="prune --vacuum")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kling-hooks-prune-") as work:
        ages = prepare(args, Path(work))
        return asyncio.run(run(args, Path(work), ages))


if __name__ == "__main__":
    sys.exit(main())
