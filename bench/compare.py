"""Callback ingest of two commits and a bare Starlette ceiling, interleaved, in one run.

    python bench/compare.py BEFORE [AFTER] [--rounds 5] [--requests 20000] [--duplicates 0.2]

Each commit is checked out in a temporary git worktree with a virtualenv of its own; every
server is a real ``kling-hooks serve`` process (the ceiling: a Starlette app that only parses
the same body) on loopback with the same uvicorn settings, fed by wrk (Debian package ``wrk``)
from ``bench/callbacks.py``'s workload: distinct, valid, new-transition callbacks, optionally
with a share of duplicates. Rounds rotate the order of the three servers. Printed: per server,
the median req/s with its range, p99, the server's CPU time per request, whether every
acknowledged callback was stored; then the per-round ratios (only same-run ratios count on a
shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import callbacks as cb

CEILING_APP = """
import json
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

async def callback(request):
    json.loads(await request.body())
    return JSONResponse({"ok": True, "verdict": "new"})

async def ok(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[
    Route("/callbacks/{ext:path}/{token}", callback, methods=["POST"]),
    Route("/readyz", ok),
    Route("/healthz", ok),
])
"""

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


def measure(name: str, command: Command, work: cb.Workload, tmp: Path, tag: str) -> dict:
    port = cb.free_port()
    db, log = tmp / f"{tag}-{name}.db", tmp / f"{tag}-{name}.log"
    env = {
        **os.environ,
        "KLING_HOOKS_SECRET": cb.SECRET,
        "KLING_HOOKS_API_TOKEN": cb.API_TOKEN,
        "KLING_HOOKS_LOG_LEVEL": "warning",
        "KLING_HOOKS_LOG_FORMAT": "json",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(command(port, db), env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        cb.wait_ready(base, proc, log)
        warm = cb.run_httpx(base, work.warmup, 64, 300)
        cpu_before = cb.cpu_s(proc.pid)
        result = cb.run_wrk(base, work.timed, 64, 300, 1, tmp)
        cpu = cb.cpu_s(proc.pid) - cpu_before
    finally:
        cb.stop_server(proc)
    lossless = None
    if name != "ceiling":
        new = result.verdicts["new"] + warm.verdicts["new"]
        answered = sum(result.verdicts.values()) + sum(warm.verdicts.values())
        lossless = cb.stored_counts(db) == (new, answered)
    return {
        "rps": result.sent / result.elapsed_s,
        "p99": cb.latency_figures(result)["p99"],
        "cpu_us": cpu / result.sent * 1e6,
        "non200": sum(result.non_200.values()),
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
        (tmp / "ceiling").mkdir()
        (tmp / "ceiling" / "bare_app.py").write_text(CEILING_APP)
        uvicorn = trees[-1] / ".venv" / "bin" / "uvicorn"
        servers = {
            "ceiling": lambda port, db: [
                str(uvicorn),
                "--app-dir",
                str(tmp / "ceiling"),
                "bare_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            **servers,
        }
        work = cb.build_workload(args.requests, 200, args.duplicates, 1)
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
