"""The performance harness of issue 11: every figure in one table, from one run.

    python bench/run.py                         # full run, 3 rounds (about 10-15 minutes)
    python bench/run.py --quick                 # tiny sizes, 1 round (a smoke test)
    python bench/run.py --only ingest,status --rounds 5 --json figures.json
    python bench/run.py --bulk-db /var/tmp/kh-bulk.db     # build the 1M-task database once
    python bench/run.py --postgres --only ingest,fanout,status   # and the Postgres column

Figure groups (``--only``): ``ingest`` (2), ``duplicates`` (3), ``fanout`` (4), ``status``
(5), ``footprint`` (6), ``peer`` (7); the ceiling (1) runs whenever a group needs its ratios.
``fanout`` and ``footprint`` also run the ingest job (the fan-out latency load is half of its
maximum; three footprint figures come from its run).

``--postgres`` adds the Postgres jobs (:mod:`bench.perf.pg`) to the ingest, fanout and status
groups, in the same rounds: on a throwaway cluster it starts with fsync on, or on the server
of ``--postgres-url`` (an admin URL: a role that may create databases).

Method: in every round each configuration (one job of :data:`JOBS`: its own server
processes on loopback, started afresh) runs once, in an order rotated by one job per round
(the fan-out latency job is moved after the ingest job when the rotation puts it first).
Every figure is the median of the rounds with its min-max; every ratio is to the ceiling of
the same round. Load comes from wrk (``bench/wrk.py``). Each receiver is checked for loss after
its stop; a lossy run, or any failed check, makes the exit code 1 (the table is printed all
the same, the problems under it). Progress goes to stderr, the table to stdout.

Needs wrk and webhook (``apt-get install wrk webhook``) and the project installed in this
virtualenv (``pip install .``: the harness runs the installed ``kling-hooks``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.perf import fanout, footprint, ingest, notes, pg, status, table, targets
from bench.perf.servers import sink_server
from bench.perf.sizes import FULL, QUICK, Context, Sample, Sizes, build_feeds

Job = Callable[[Context], dict[str, Sample]]
GROUPS = ("ingest", "duplicates", "fanout", "status", "footprint", "peer")
#: Every configuration, in the first round's order, with its figure group.
JOBS: dict[str, tuple[str, Job]] = {
    "ceiling": ("ceiling", ingest.ceiling_job),
    "ingest": ("ingest", ingest.ingest_job),
    "ingest-plugins": ("ingest", ingest.ingest_plugins_job),
    "duplicates": ("duplicates", ingest.duplicates_job),
    "fanout-burst": ("fanout", fanout.burst_job),
    "fanout-latency": ("fanout", fanout.latency_job),
    "status": ("status", status.status_job),
    "connections": ("footprint", footprint.connections_job),
    "download": ("footprint", footprint.download_job),
    "peer": ("peer", ingest.peer_job),
    "pg-ingest": ("ingest", pg.ingest_job),
    "pg-fanout": ("fanout", pg.fanout_job),
    "pg-status": ("status", pg.status_job),
}


def jobs_for(groups: frozenset[str], postgres: bool = False) -> list[str]:
    """The jobs a run of ``groups`` needs, in :data:`JOBS` order (the ``pg-*`` jobs only
    with ``postgres``)."""
    wanted = set(groups)
    if wanted & {"ingest", "duplicates", "status", "peer"}:
        wanted.add("ceiling")
    names = [
        name
        for name, (group, _) in JOBS.items()
        if group in wanted and (postgres or not name.startswith("pg-"))
    ]
    if wanted & {"fanout", "footprint"} and "ingest" not in names:
        names.insert(0, "ingest")
    return names


def round_order(names: list[str], round_no: int) -> list[str]:
    """``names`` rotated by ``round_no - 1``, with ``fanout-latency`` after ``ingest``."""
    shift = (round_no - 1) % len(names)
    order = names[shift:] + names[:shift]
    if "fanout-latency" in order and order.index("fanout-latency") < order.index("ingest"):
        order.remove("fanout-latency")
        order.insert(order.index("ingest") + 1, "fanout-latency")
    return order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--only", default="", help=f"comma-separated groups of {GROUPS}, or ceiling"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per wrk run (default 8; 0.5 with --quick)"
    )
    parser.add_argument("--json", type=Path, help="write every raw figure to this file")
    parser.add_argument(
        "--bulk-db", type=Path, help="the status figures' database: reused, or built there"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="add the Postgres jobs (a throwaway cluster with fsync on, unless --postgres-url)",
    )
    parser.add_argument(
        "--postgres-url", help="with --postgres: the admin URL of a server to use instead"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run directory (logs, databases)"
    )
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS) - {"ceiling"})
    if unknown:
        parser.error(f"--only: unknown group(s) {', '.join(unknown)} (groups: {GROUPS})")
    args.groups = frozenset(groups)
    if args.postgres_url and not args.postgres:
        parser.error("--postgres-url needs --postgres")
    args.rounds = args.rounds or (1 if args.quick else 3)
    if args.rounds < 1 or (args.duration is not None and args.duration <= 0):
        parser.error("--rounds >= 1 and --duration > 0")
    needed = ["wrk"] + (["webhook"] if "peer" in args.groups else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not installed (apt-get install wrk webhook)")
    return args


def raise_fd_limit() -> int:
    """Raise this process's (and so its children's) soft ``RLIMIT_NOFILE`` to the hard
    limit; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_round(ctx: Context, order: list[str]) -> dict[str, Sample]:
    """Every job of ``order`` once; a job that raises is a problem (its figures are missing)."""
    ctx.this_round = {}
    for name in order:
        started = time.monotonic()
        ctx.progress(f"{name} ...")
        try:
            ctx.this_round.update(JOBS[name][1](ctx))
        except Exception:
            ctx.problems.append(f"round {ctx.round_no} {name} raised:\n{traceback.format_exc()}")
        ctx.progress(f"{name} done in {time.monotonic() - started:.1f} s")
    return ctx.this_round


@contextlib.contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    """A new temporary directory for the run, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="kling-hooks-perf-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def prepare_status(ctx: Context, bulk_db: Path | None, names: list[str]) -> None:
    """The status figures' database (and its Postgres copy when ``pg-status`` runs); a
    set-up that raises is a problem, and its jobs are left out of ``names``."""
    if "status" not in ctx.groups:
        return
    try:
        data = status.prepare(ctx, bulk_db)
        ctx.extra["status"] = data
    except Exception:
        ctx.problems.append(f"status set-up raised:\n{traceback.format_exc()}")
        names[:] = [n for n in names if n not in ("status", "pg-status")]
        return
    if "pg-status" in names:
        try:
            ctx.extra["pg-status"] = pg.prepare(ctx, data)
        except Exception:
            ctx.problems.append(f"Postgres status set-up raised:\n{traceback.format_exc()}")
            names.remove("pg-status")


def report(
    ctx: Context, args: argparse.Namespace, rounds: list[dict[str, Sample]], orders: list[list[str]]
) -> str:
    """The table, its notes, the targets and the problems, as markdown."""
    sizes = ctx.sizes
    shown_groups = args.groups | {"ceiling"}
    data = ctx.extra.get("status")
    tasks = data.tasks if isinstance(data, status.StatusData) else sizes.tasks
    rows = [
        row
        for row in table.rows(
            sizes.connections, sizes.download_bytes, tasks, sizes.burst, postgres=args.postgres
        )
        if row.group in shown_groups
        and (row.group != "ceiling" or any(row.key in r for r in rounds))
    ]
    parts = [table.markdown(rows, rounds), "", "Notes:"]
    parts += notes.lines(ctx, rounds, orders, args.load_before)
    parts += ["", "Targets (medians):", *targets.target_lines(rows, rounds)]
    if args.quick:
        parts.append(
            f"(--quick: {sizes.connections:,} connections, a download of "
            f"{sizes.download_bytes:,} bytes and a database of {tasks:,} tasks: the verdicts "
            "say nothing of the targets' own sizes)"
        )
    if ctx.problems:
        parts += ["", f"PROBLEMS ({len(ctx.problems)}):", *(f"- {p}" for p in ctx.problems)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base: Sizes = QUICK if args.quick else FULL
    sizes = dataclasses.replace(base, duration_s=args.duration or base.duration_s)
    started, when = time.monotonic(), datetime.now(UTC)
    args.load_before = os.getloadavg()[0]
    raise_fd_limit()
    names = jobs_for(args.groups, args.postgres)
    rounds: list[dict[str, Sample]] = []
    orders: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(run_directory(args.keep))
        sink = stack.enter_context(sink_server(workdir))
        feeds = build_feeds(workdir, sizes, sink.url)
        ctx = Context(sizes, workdir, sink, feeds, args.groups, keep=args.keep)
        if args.postgres:
            ctx.extra["postgres"] = stack.enter_context(pg.server(args.postgres_url))
        prepare_status(ctx, args.bulk_db, names)
        copied = ctx.extra.get("pg-status")
        if isinstance(copied, pg.StatusCopy) and not args.keep:
            stack.callback(pg.drop, ctx, copied.url)
        for round_no in range(1, args.rounds + 1):
            ctx.round_no = round_no
            orders.append(round_order(names, round_no))
            rounds.append(dict(run_round(ctx, orders[-1])))
        took_s = time.monotonic() - started
        print(
            f"## kling-hooks performance: `python bench/run.py{' ' if argv else ''}"
            f"{' '.join(argv or [])}`, {when:%Y-%m-%d %H:%M} UTC, {args.rounds} round(s), "
            f"wall time {took_s / 60:.1f} min\n"
        )
        print(report(ctx, args, rounds, orders), flush=True)
    if args.json:
        doc = {
            "started": when.isoformat(),
            "wall_time_s": took_s,
            "sizes": dataclasses.asdict(sizes),
            "orders": orders,
            "rounds": rounds,
            "problems": ctx.problems,
        }
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 1 if ctx.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
