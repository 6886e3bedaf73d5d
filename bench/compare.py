"""Callback ingest of two commits and a bare Starlette ceiling, interleaved, in one run.

    python bench/compare.py BEFORE [AFTER] [--rounds 5] [--requests 20000] [--duplicates 0.2]

Each commit is checked out in a temporary git worktree with a virtualenv of its own; every
server is a real ``kling-hooks serve`` process (the ceiling: ``bench/ceiling.py``, a Starlette
app that only parses the same body, under the receiver's own uvicorn settings) on loopback,
fed by wrk (Debian package ``wrk``; ``bench/wrk.py``) with ``bench/workload.py``'s callbacks:
distinct, valid, new-transition callbacks, optionally with a share of duplicates. Rounds
rotate the order of the three servers. Printed: per server,
the median req/s with its range, p99, the server's CPU time per request, whether every
acknowledged callback was stored; then the per-round ratios (only same-run ratios count on a
shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ceiling, wrk
from bench.callbacks import run_httpx
from bench.processes import (
    cpu_s,
    free_port,
    start_server,
    stop_server,
    stored_counts,
    wait_ready,
)
from bench.workload import Workload, build_workload

Command = Callable[[int, Path], list[str]]


def checkout(rev: str, where: Path) -> Path:
    """A worktree of ``rev`` at ``where`` with its own venv; returns its ``bin`` folder."""
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(where), rev], check=True
    )
    subprocess.run([sys.executable, "-m", "venv", str(where / ".venv")], check=True)
    pip = where / ".venv" / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(where)], check=True)
    return where / ".venv" / "bin"


def measure(name: str, command: Command, work: Workload, tmp: Path, tag: str) -> dict:
    port = free_port()
    db, log = tmp / f"{tag}-{name}.db", tmp / f"{tag}-{name}.log"
    feed = tmp / "timed.feed"
    if not feed.exists():
        wrk.write_feed(feed, (wrk.FeedLine("POST", path, body) for path, body in work.timed))
    proc = start_server(command(port, db), log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", proc, log)
        warm = run_httpx(base, work.warmup, 64, 300)
        cpu_before = cpu_s(proc.pid)
        result = wrk.run_wrk(base, feed, connections=64, workdir=tmp)
        cpu = cpu_s(proc.pid) - cpu_before
    finally:
        stop_server(proc)
    lossless = None
    if name != "ceiling":
        new = result.new + warm.verdicts["new"]
        answered = result.ok + sum(warm.verdicts.values())
        lossless = stored_counts(db) == (new, answered)
    return {
        "rps": result.rps,
        "p99": result.latency_ms["p99"],
        "cpu_us": cpu / result.answered * 1e6,
        "non200": sum(result.non2xx.values()) + sum(result.errors.values()),
        "lossless": lossless,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="the commit to compare against")
    parser.add_argument("after", nargs="?", default="HEAD", help="the commit measured")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--duplicates", type=float, default=0.0, help="share re-sent")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kh-compare-"))
    repo = Path(__file__).resolve().parent.parent
    trees = []
    try:
        servers: dict[str, Command] = {}
        for label, rev in (("before", args.before), ("after", args.after)):
            bin_ = checkout(rev, tmp / label)
            trees.append(tmp / label)
            servers[label] = lambda port, db, b=bin_: [
                str(b / "kling-hooks"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db",
                str(db),
            ]
        servers = {"ceiling": lambda port, db: ceiling.command(port), **servers}
        work = build_workload(args.requests, 200, args.duplicates, 1)
        rows: dict[str, list[dict]] = {name: [] for name in servers}
        names = list(servers)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                rows[name].append(measure(name, servers[name], work, tmp, f"r{r}"))
                print(f"round {r + 1} {name}: {rows[name][-1]['rps']:.0f} req/s", flush=True)
        print(
            f"\n{args.requests} callbacks, {args.duplicates:.0%} duplicates, 64 connections, "
            f"{args.rounds} rounds; before {args.before}, after {args.after}"
        )
        for name, rs in rows.items():
            rps = [x["rps"] for x in rs]
            print(
                f"{name:8s} {statistics.median(rps):7.0f} req/s [{min(rps):.0f}-{max(rps):.0f}]"
                f"  p99 {statistics.median(x['p99'] for x in rs):5.1f} ms"
                f"  CPU {statistics.median(x['cpu_us'] for x in rs):4.0f} µs/req"
                f"  non-200 {sum(x['non200'] for x in rs)}"
                f"  all stored {all(x['lossless'] is not False for x in rs)}"
            )
        for a, b in (("before", "ceiling"), ("after", "ceiling"), ("after", "before")):
            ratios = [x["rps"] / y["rps"] for x, y in zip(rows[a], rows[b], strict=True)]
            print(
                f"{a}/{b}: median {statistics.median(ratios):.3f}"
                f" [{min(ratios):.3f}-{max(ratios):.3f}]"
            )
    finally:
        for tree in trees:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
