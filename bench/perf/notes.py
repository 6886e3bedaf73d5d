"""The notes printed under the table: the machine, the method, and what each figure's
configuration was, with the run's own counts (loss checks, non-2xx answers, the load
generators' CPU use)."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from collections.abc import Sequence
from importlib import metadata

from bench.perf import fanout, noop_plugin, pg, table
from bench.perf.sizes import Context, Sample
from bench.perf.status import StatusData
from bench.workload import IMAGES_PER_BODY

PACKAGES = ("kling-hooks", "uvicorn", "uvloop", "httptools", "starlette", "aiosqlite", "httpx")


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> str:
    """One line: CPUs, kernel, Python and the packages and tools that matter."""
    found = [f"{os.cpu_count()} CPUs", platform.platform(), f"Python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    found.append(f"SQLite {sqlite3.sqlite_version}")
    found.append(_version(["wrk", "--version"]).split(" [")[0])
    found.append(_version(["webhook", "-version"]))
    return ", ".join(found)


def _largest(rounds: Sequence[dict[str, Sample]], field: str) -> float:
    return max((s[field] for r in rounds for s in r.values() if field in s), default=0.0)


def _total(rounds: Sequence[dict[str, Sample]], field: str, prefix: str = "") -> int:
    return int(sum(s.get(field, 0) for r in rounds for k, s in r.items() if k.startswith(prefix)))


def _refused(rounds: Sequence[dict[str, Sample]]) -> str:
    """``"ingest.none.c64: 3 (503: 3); ..."`` over every round, or ``"none"``."""
    found: dict[str, dict[str, int]] = {}
    for r in rounds:
        for key, s in r.items():
            for name, n in s.items():
                if name.startswith("non2xx_") and n:
                    codes = found.setdefault(key, {})
                    code = name.removeprefix("non2xx_")
                    codes[code] = codes.get(code, 0) + int(n)
    parts = [
        f"{key} {sum(c.values())} ({', '.join(f'{k}: {n}' for k, n in sorted(c.items()))})"
        for key, c in sorted(found.items())
    ]
    return "; ".join(parts) or "none"


def _median(rounds: Sequence[dict[str, Sample]], key: str, field: str) -> float:
    return table.Spread.of(table.values(rounds, key, field)).median


def lines(
    ctx: Context,
    rounds: Sequence[dict[str, Sample]],
    orders: list[list[str]],
    load_before: float,
) -> list[str]:
    """The notes (markdown list items) of a finished run; ``load_before`` is the 1-minute
    load average when it began."""
    sizes = ctx.sizes
    with ctx.feeds.ingest.open("rb") as feed:
        body_bytes = len(feed.readline().rstrip(b"\n").rsplit(b"\t", 1)[1])
    out: list[tuple[str, str]] = [
        (
            "",
            f"Machine: {machine()}; 1-minute load average {load_before:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end (other work on the machine shows there).",
        ),
        (
            "",
            f"Method: {len(rounds)} rounds, configurations interleaved (orders: "
            + "; ".join(" → ".join(o) for o in orders)
            + f"). Each figure is the median over rounds [min{table.DASH}max]; each ratio is "
            "taken against the ceiling of the same round, then summarised. Every wrk run sends for "
            f"{sizes.duration_s:g} s (wrk 1 thread, Lua feeder bench/wrk.py); latency is wrk's "
            "(request written → answer read).",
        ),
        (
            "",
            "Ceiling (1): bench/ceiling.py, a bare Starlette app that parses the body "
            "(json.loads) and answers {ok, verdict}; run under uvicorn.Config(**receiver_options"
            "(settings)) and receiver.serving.Server, as `kling-hooks serve` runs: uvloop, the "
            "receiver's httptools protocol (header deadline and size limit), keep-alive 5 s, "
            "backlog 2048, access log off.",
        ),
        (
            "",
            f"Receivers (2-6): `kling-hooks serve`, one worker, a fresh database per "
            f"configuration (WAL, synchronous=FULL), KLING_HOOKS_LOG_LEVEL=warning; each gets "
            f"{sizes.warmup} untimed callbacks first. Bodies: distinct `succeed` callbacks of "
            f"{body_bytes} bytes with {IMAGES_PER_BODY} result images on the local sink.",
        ),
        (
            "",
            "Loss checks: after each receiver's stop (every one, the status API's included), "
            "the rows `transitions` gained = its new verdicts and the rows `callbacks` gained "
            "= its 2xx answers. "
            + (
                f"{len(ctx.problems)} problem(s), listed below."
                if ctx.problems
                else "Every run passed."
            ),
        ),
        (
            "ingest",
            "Ingest with plugins (2): [plugins.downloader] (allow_private_hosts = true, other "
            "settings default: concurrency 4, max_bytes 2 GiB), [plugins.slack] and "
            "[plugins.webhook] posting to the sink (bench/perf/sink.py, its own process: "
            f"{IMAGES_PER_BODY} PNGs of 8x8 px per callback, Slack and webhook POSTs answered "
            f"200); sink CPU at 64 conns {_median(rounds, 'ingest.plugins.c64', 'sink_cpu'):.0%} "
            "of a core.",
        ),
        (
            "fanout",
            f"Fan-out (4): the no-op plugin bench/perf/noop_plugin.py (concurrency "
            f"{noop_plugin.CONCURRENCY}: its handler does no I/O; other settings default, all "
            f'statuses); "3 plugins" = that plugin under three names '
            f"({', '.join(fanout.THREE)}). (a) events/s = handler starts / (last "
            f"start {table.MINUS} first start), every delivery reaching `done`: during a burst "
            f"of {sizes.burst:,} callbacks by wrk at 64 conns (after the warm-up's deliveries "
            "were done), and draining a backlog of the same burst, stored first by a receiver "
            "whose plugins refused to start, with no ingest beside it. (b) background "
            "wrk throttled to half of this round's ingest (no plugins, 64) maximum: target "
            f"{_median(rounds, 'fanout.latency', 'target_rps'):,.0f}/s, achieved the value shown; "
            f"probe: httpx at {sizes.probe_rate_per_s:g}/s, "
            f"{_median(rounds, 'fanout.latency', 'probes'):.0f} probes per round, its CPU "
            f"{_median(rounds, 'fanout.latency', 'probe_cpu'):.0%} of a core.",
        ),
    ]
    out += _status_lines(ctx, rounds)
    out += _postgres_lines(ctx, rounds)
    out += [
        (
            "footprint",
            f"Footprint (6): peak RSS, start-up and bytes per task from the ingest run (no "
            f"plugins, 64 conns; start-up includes Python's own start); {sizes.connections:,} "
            f"connections: wrk -c{sizes.connections}, each sending 1 callback/s, at most "
            f"{_median(rounds, 'footprint.rss_conns', 'max_fds'):.0f} fds open in the receiver; "
            f"download: one video of {sizes.download_bytes:,} bytes streamed by the sink, RSS "
            "sampled every 20 ms.",
        ),
        (
            "peer",
            "Peer (7): webhook (Debian package of adnanh/webhook, Go; runs a command per request). "
            f"hooks.json: one hook `kling`, POST only, execute-command persist.sh "
            "(`printf '%s\\n' \"$1\" >> payloads.jsonl`, no fsync) with the entire payload as "
            "its argument, include-command-output-in-response = true (the answer waits for the "
            "command); `webhook -ip 127.0.0.1 -port N -hooks hooks.json`, not verbose. Payloads "
            f"stored / acknowledged: {_total(rounds, 'stored', 'peer.')} / "
            f"{_total(rounds, 'acknowledged', 'peer.')}.",
        ),
        (
            "",
            f"Load generators: wrk used at most {_largest(rounds, 'wrk_cpu'):.0%} of a core in "
            f"any run; socket errors over all runs: {_total(rounds, 'errors')}; answers other "
            f"than 2xx (not counted in any rate), by figure and status: {_refused(rounds)}.",
        ),
    ]
    return [f"- {text}" for group, text in out if not group or ctx.wants(group)]


def _status_lines(ctx: Context, rounds: Sequence[dict[str, Sample]]) -> list[tuple[str, str]]:
    data = ctx.extra.get("status")
    if not isinstance(data, StatusData):
        return []
    size_gib = data.db.stat().st_size / 1024**3
    built = f"built in {data.build_s:.0f} s" if data.build_s is not None else "reused"
    return [
        (
            "status",
            f"Status API (5): {data.tasks:,} tasks with 2 transitions, 1 raw callback and 0-2 "
            f"done deliveries each (bench/bulkdb.py, {size_gib:.2f} GiB, {built}); "
            f"{data.sample_ids:,} random task_ids and {len(data.filters)} filters (task_status "
            "and route) picked at random by the Lua script; bearer token on every request. "
            "Its ceiling: the same bare app, "
            "`GET /tasks/{id}` and `GET /tasks` checking the bearer token (hmac.compare_digest) "
            "and answering the receiver's own answer for one task "
            f"({data.doc_bytes['get_task']:,} bytes) or one page of 50 "
            f"({data.doc_bytes['list']:,} bytes), serialised again on each request. Start-up "
            f"on this database: {_median(rounds, 'status.startup', 'value'):,.0f} ms.",
        ),
    ]


def _postgres_lines(ctx: Context, rounds: Sequence[dict[str, Sample]]) -> list[tuple[str, str]]:
    server = ctx.extra.get("postgres")
    if not isinstance(server, pg.Server):
        return []
    shown = ", ".join(f"{k} {v}" for k, v in server.settings.items())
    where = "a throwaway cluster started by the harness" if server.throwaway else "--postgres-url"
    r2 = [
        f"replica {k} {_median(rounds, 'pg.backlog1.r2', f'replica{k}_starts'):,.0f}"
        for k in (1, 2)
    ]
    text = (
        f"Postgres: {where} on 127.0.0.1 ({shown}); every configuration on a database of its "
        "own; receivers with KLING_HOOKS_DATABASE_URL, KLING_HOOKS_REPLICA_ID per replica and "
        "log level info (nothing is logged per callback or delivery below debug; info logs "
        "receiver_started, which says a replica on a shared socket serves). 2 replicas = two "
        "`kling-hooks serve --fd N` processes on one listening socket (one wrk at 64 conns, "
        "the kernel handing each connection to one of them); their CPU is summed. Fan-out: "
        "one replica stores the burst while the no-op plugin refuses to start, then 1 or 2 "
        f"replicas drain it; handler starts per replica with 2 (median): {', '.join(r2)}."
    )
    pairs = [
        ("ingest 1 replica", "pg.ingest.r1.c64", "ingest.none.c64", "rps"),
        ("ingest 2 replicas", "pg.ingest.r2.c64", "ingest.none.c64", "rps"),
        ("backlog 1 replica", "pg.backlog1.r1", "fanout.backlog1", "value"),
        ("backlog 2 replicas", "pg.backlog1.r2", "fanout.backlog1", "value"),
        ("GET /tasks/{id} 16 conns", "pg.status.get_task.c16", "status.get_task.c16", "rps"),
        ("page of 50 16 conns", "pg.status.list.c16", "status.list.c16", "rps"),
    ]
    found = [
        f"{label} {table.cell(table.Spread.of(_per_round(rounds, a, b, f)), 'ratio')}"
        for label, a, b, f in pairs
    ]
    text += f" Postgres / SQLite in the same round, median [min{table.DASH}max]: " + "; ".join(
        x for x in found if not x.endswith(table.DASH)
    )
    cpu = [
        f"{n} replica{'s' * (n > 1)} {_median(rounds, f'pg.ingest.r{n}.c64', 'pg_cpu'):.0%}"
        for n in pg.REPLICAS
    ]
    text += f". Postgres server's CPU over the ingest runs (share of one core): {', '.join(cpu)}"
    text += "; the receivers': " + ", ".join(
        f"{_median(rounds, f'pg.ingest.r{n}.c64', 'server_cpu'):.0%}" for n in pg.REPLICAS
    )
    text += "."
    copied = ctx.extra.get("pg-status")
    if isinstance(copied, pg.StatusCopy):
        rows = ", ".join(f"{n:,} {t}" for t, n in copied.rows.items())
        text += (
            f" Status: the same database copied into Postgres by bench/pgbulk.py ({rows}; "
            f"{copied.size_bytes / 1024**3:.2f} GiB, {copied.copy_s:.0f} s with its indexes "
            "and VACUUM ANALYZE); start-up on it "
            f"{_median(rounds, 'pg.status.startup', 'value'):,.0f} ms."
        )
    return [("", text)]


def _per_round(rounds: Sequence[dict[str, Sample]], key: str, over: str, field: str) -> list[float]:
    """Per round, ``field`` of ``key`` over ``field`` of ``over`` (rounds with both)."""
    return [
        r[key][field] / r[over][field]
        for r in rounds
        if key in r and over in r and r[over].get(field, 0) > 0 and field in r[key]
    ]
