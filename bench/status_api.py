"""Benchmark: the status API's reads on a large database, against a bare ceiling.

Run it from the repository root, in the project's virtualenv (wrk must be installed)::

    python bench/bulkdb.py /tmp/big.db                      # once: 1,000,000 tasks
    python bench/status_api.py --db /tmp/big.db
    python bench/status_api.py --db /tmp/big.db --baseline OLD/.venv/bin/kling-hooks /tmp/old.db

What it does:

1. starts ``kling-hooks serve`` (this virtualenv's, production settings, log level warning) on
   ``--db``; with ``--baseline BIN DB``, a second one (another commit's ``kling-hooks``, on
   its own copy of the database: a newer schema would be refused by an older receiver); and
   the ceiling, a bare Starlette app under the same uvicorn settings (uvloop, httptools, no
   access log) whose ``GET /tasks/{id}`` checks the bearer token and answers a real task's
   JSON, read from the receiver at start, with no storage;
2. per round, servers in rotated order, for each endpoint (``GET /tasks/{id}`` over a random
   sample of task_ids, ``GET /tasks?...`` over the filters of ``bench.bulkdb.survey``) and
   each connection count: a short warm-up, then ``wrk -t1 -cC -dD --latency`` through a Lua
   script that walks the paths in turn; the ceiling runs the task endpoint only;
3. prints each run (req/s, p50, p99 in ms, the server's CPU µs per request), then per
   server, endpoint and connection count the median req/s with its range over rounds, the
   median p50 and p99, and the median of the per-round ratios to the ceiling at the same
   connection count. Exit 1 when any answer was not 2xx (wrk's "Non-2xx" count).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bulkdb import survey

API_TOKEN = "bench-status-api-token-0123456789"
SECRET = "bench-status-secret-not-for-production-0123456789"
KLING_HOOKS = Path(sys.executable).with_name("kling-hooks")
UVICORN = Path(sys.executable).with_name("uvicorn")
ENDPOINTS = ("task", "list")

CEILING_APP = """
import hmac, os
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

TOKEN = os.environ["CEILING_TOKEN"].encode()
BODY = open(os.environ["CEILING_BODY"], "rb").read()
REFUSED = b'{"ok":false,"error":"missing or invalid bearer token"}'


async def task(request):
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), TOKEN):
        return Response(REFUSED, 401, media_type="application/json")
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/tasks/{id:path}", task)])
"""

WRK_SCRIPT = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
local headers = {["Authorization"] = "Bearer %s"}
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], headers)
end
"""


@dataclass(frozen=True)
class Run:
    """One wrk run: requests per second, latency percentiles (ms), server CPU per request
    (µs), and the answers that were not 2xx."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    non_2xx: int


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One server process on a free loopback port; :meth:`stop` ends it (SIGTERM)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready_path: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                request = urllib.request.Request(
                    self.url + ready_path, headers={"Authorization": f"Bearer {API_TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def receiver(name: str, binary: Path, db: Path) -> Server:
    """``kling-hooks serve`` with production settings on ``db``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    env |= {
        "KLING_HOOKS_API_TOKEN": API_TOKEN,
        "KLING_HOOKS_SECRET": SECRET,
        "KLING_HOOKS_LOG_LEVEL": "warning",
        "KLING_HOOKS_LOG_FORMAT": "json",
    }
    argv = [str(binary), "serve", "--db", str(db), "--host", "127.0.0.1", "--port", "{port}"]
    return Server(name, argv, env, "/readyz")


def ceiling(tmp: Path, body: bytes) -> Server:
    """The bare Starlette app, answering ``body`` to an authorised ``GET /tasks/{id}``."""
    (tmp / "ceiling_app.py").write_text(CEILING_APP)
    (tmp / "ceiling_body.json").write_bytes(body)
    env = {**os.environ, "CEILING_TOKEN": API_TOKEN, "CEILING_BODY": str(tmp / "ceiling_body.json")}
    argv = [str(UVICORN), "--app-dir", str(tmp), "ceiling_app:app", "--host", "127.0.0.1"]
    argv += ["--port", "{port}", "--loop", "uvloop", "--http", "httptools"]
    argv += ["--no-access-log", "--log-level", "warning", "--timeout-keep-alive", "5"]
    return Server("ceiling", argv, env, "/tasks/probe")


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(server: Server, paths_file: Path, connections: int, duration_s: int, tmp: Path) -> Run:
    """One ``wrk -t1`` run over the paths in ``paths_file``; raises RuntimeError when wrk
    fails or prints no figures."""
    script = tmp / "paths.lua"
    script.write_text(WRK_SCRIPT % (paths_file, API_TOKEN))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script)]
    before = cpu_s(server.proc.pid)
    out = subprocess.run([*argv, server.url], capture_output=True, text=True, check=True).stdout
    cpu = cpu_s(server.proc.pid) - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    latency = {p: float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(out)}
    if rps is None or total is None or len(latency) != 2:
        raise RuntimeError(f"wrk printed no figures:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Run(
        rps=float(rps.group(1)),
        p50_ms=latency["50"],
        p99_ms=latency["99"],
        cpu_us=cpu / max(1, int(total.group(1))) * 1e6,
        non_2xx=int(bad.group(1)) if bad else 0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="a bench/bulkdb.py database")
    parser.add_argument(
        "--baseline",
        nargs=2,
        metavar=("BIN", "DB"),
        help="another kling-hooks executable and its own copy of the database",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,16", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="the sample of task_ids")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    task_ids, filters = survey(args.db, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kh-status-api-"))
    (tmp / "task.txt").write_text("".join(f"/tasks/{t}\n" for t in task_ids))
    (tmp / "list.txt").write_text("".join(f"/tasks?{q}\n" for q in filters))
    servers: list[Server] = []
    try:
        servers.append(receiver("after", KLING_HOOKS, args.db))
        if args.baseline:
            servers.append(receiver("before", Path(args.baseline[0]), Path(args.baseline[1])))
        bodies = []
        for task_id in task_ids[:21]:  # the ceiling answers the median size of these
            probe = urllib.request.Request(
                f"{servers[0].url}/tasks/{task_id}",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )
            with urllib.request.urlopen(probe, timeout=10) as answer:
                bodies.append(answer.read())
        body = sorted(bodies, key=len)[len(bodies) // 2]
        servers.insert(0, ceiling(tmp, body))
        print(f"{len(task_ids)} task_ids, {len(filters)} filters, task answer {len(body)} bytes")
        runs: dict[tuple[str, str, int], list[Run]] = {}
        for r in range(args.rounds):
            order = servers[r % len(servers) :] + servers[: r % len(servers)]
            for server in order:
                for endpoint in ENDPOINTS if server.name != "ceiling" else ("task",):
                    paths = tmp / f"{endpoint}.txt"
                    wrk(server, paths, max(connections), 1, tmp)  # warm-up
                    for c in connections:
                        run = wrk(server, paths, c, args.duration, tmp)
                        runs.setdefault((server.name, endpoint, c), []).append(run)
                        print(
                            f"round {r + 1} {server.name:8s} {endpoint:4s} c={c:<3d}"
                            f" {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f}  p99 {run.p99_ms:6.2f}"
                            f" ms  CPU {run.cpu_us:5.0f} µs/req  non-2xx {run.non_2xx}",
                            flush=True,
                        )
    finally:
        for server in servers:
            server.stop()
    print(f"\nmedians over {args.rounds} rounds of {args.duration:g} s (range of req/s)")
    for (name, endpoint, c), rs in runs.items():
        rps = [x.rps for x in rs]
        ceil = runs[("ceiling", "task", c)]
        ratios = [x.rps / y.rps for x, y in zip(rs, ceil, strict=True)]
        print(
            f"{name:8s} {endpoint:4s} c={c:<3d} {statistics.median(rps):8.0f} req/s"
            f" [{min(rps):.0f}-{max(rps):.0f}]"
            f"  p50 {statistics.median(x.p50_ms for x in rs):6.2f}"
            f"  p99 {statistics.median(x.p99_ms for x in rs):6.2f} ms"
            f"  CPU {statistics.median(x.cpu_us for x in rs):5.0f} µs/req"
            f"  /ceiling {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
        )
    return 1 if any(x.non_2xx for rs in runs.values() for x in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
