"""The Postgres column (``bench/run.py --postgres``, issue 13): ingest, fan-out and the status
API with ``KLING_HOOKS_DATABASE_URL`` set, each configuration on a database of its own on
one Postgres server (a throwaway cluster with ``fsync`` and ``synchronous_commit`` on, or
``--postgres-url``), in the same rounds as the SQLite jobs.

The Postgres server's CPU share of one core over each timed ingest run is noted too
(``pg_cpu``: :func:`bench.postgres.server_cpu_s`, NaN for a server on another machine).

- Ingest (:func:`ingest_job`): 1 replica, then 2 replicas sharing one listening socket
  (``serve --fd``; one wrk at 64 connections, the kernel handing each connection to one of
  them), each on a fresh database: the warm-up feed, then distinct new-transition callbacks
  for ``duration_s``; the ratio is to the same round's ceiling at 64 connections.
- Fan-out (:func:`fanout_job`): the backlog method of :mod:`bench.perf.fanout` on a fresh
  database: one receiver stores a burst while its no-op plugin refuses to start; then 1, or
  2 replicas on one socket, deliver every event (claims leased, ``FOR UPDATE SKIP LOCKED``)
  with no ingest beside them. Every delivery must end ``done`` and be started once (a
  handler start per delivery, over the replicas' start files).
- Status (:func:`status_job`): ``kling-hooks serve`` on a Postgres copy of the status
  figures' SQLite database (:mod:`bench.pgbulk`, made once per run by :func:`prepare`), both
  loads at 1 and 16 connections; ratios to the same round's status ceiling.

Loss checks as on SQLite (:func:`bench.perf.servers.receiver`): the rows ``transitions``
and ``callbacks`` gained, read with psycopg, equal the new verdicts and the 2xx answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from bench import pgbulk, postgres
from bench.perf import fanout, status
from bench.perf.loads import sample, timed, warm
from bench.perf.servers import receiver, wait_deliveries
from bench.perf.sizes import Context, Sample

REPLICAS = (1, 2)
#: The database name prefix of every database the harness makes.
PREFIX = "kh_bench"


@dataclass(frozen=True)
class Server:
    """The run's Postgres server.

    Attributes:
        admin_url: A role that may create databases, on its ``postgres`` database.
        throwaway: Whether the harness started it (else ``--postgres-url``).
        settings: ``SHOW`` of the settings the notes print (:data:`SHOWN`).
    """

    admin_url: str
    throwaway: bool
    settings: dict[str, str]


SHOWN = ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections")


@contextlib.contextmanager
def server(url: str | None) -> Iterator[Server]:
    """The server of ``url`` (an admin URL), or else a throwaway cluster with fsync on
    (:func:`bench.postgres.throwaway_cluster`), stopped when the block ends.

    Raises:
        RuntimeError: no ``url`` and no ``initdb`` (Debian's ``postgresql``).
    """
    with contextlib.ExitStack() as stack:
        throwaway = url is None
        if url is None:
            bin_dir = postgres.pg_bin()
            if bin_dir is None:
                raise RuntimeError("--postgres: no initdb (apt-get install postgresql)")
            url = stack.enter_context(postgres.throwaway_cluster(bin_dir, fsync=True))
        with psycopg.connect(url, autocommit=True) as conn:
            rows = {name: conn.execute(f"SHOW {name}").fetchone() for name in SHOWN}
        shown = {name: str(row[0]) if row else "?" for name, row in rows.items()}
        yield Server(url, throwaway, shown)


def _server(ctx: Context) -> Server:
    found = ctx.extra["postgres"]
    assert isinstance(found, Server)
    return found


def drop(ctx: Context, url: str) -> None:
    """Drop the database of ``url`` on the run's server."""
    postgres.drop_database(_server(ctx).admin_url, url)


@contextlib.contextmanager
def database(ctx: Context) -> Iterator[str]:
    """A fresh database on the run's server, dropped after the block (unless ``--keep``)."""
    admin = _server(ctx).admin_url
    url = postgres.create_database(admin, PREFIX)
    try:
        yield url
    finally:
        if not ctx.keep:
            drop(ctx, url)


def ingest_job(ctx: Context) -> dict[str, Sample]:
    """Ingest, no plugins, 64 connections, on 1 and on 2 replicas (module docstring)."""
    out: dict[str, Sample] = {}
    for replicas in REPLICAS:
        name = f"pg-ingest-r{replicas}"
        workdir = ctx.rundir(name)
        with (
            database(ctx) as url,
            receiver(name, workdir, ctx.problems, database_url=url, replicas=replicas) as rx,
        ):
            warm(ctx, rx, 64, tally=rx.tally)
            pg_before = postgres.server_cpu_s(url)
            result, cpu_s = timed(ctx, rx, ctx.feeds.ingest, 64, tally=rx.tally)
            found = sample(result, cpu_s)
            found["pg_cpu"] = (postgres.server_cpu_s(url) - pg_before) / max(result.span_s, 1e-9)
            found["hwm_mib"] = rx.hwm_mib()
        out[f"pg.ingest.r{replicas}.c64"] = found
        ctx.done_with(workdir)
    return out


def _backlog(ctx: Context, replicas: int) -> Sample:
    key = f"pg.backlog1.r{replicas}"
    workdir = ctx.rundir(key)
    burst = ctx.sizes.burst
    with database(ctx) as url:
        with receiver(
            f"{key}-fill",
            workdir,
            ctx.problems,
            noop=fanout.ONE,
            noop_toml="refuse_start = true\n",
            database_url=url,
        ) as rx:
            timed(ctx, rx, ctx.feeds.ingest, 64, duration_s=0, limit=burst, tally=rx.tally)
            expected = rx.tally.new
        with receiver(
            key, workdir, ctx.problems, noop=fanout.ONE, database_url=url, replicas=replicas
        ) as rx:
            drain_s = wait_deliveries(rx, expected, fanout.drain_timeout_s(expected))
        states = rx.states()
    value, span_s = fanout.events_per_s(ctx, key, rx, expected)
    if states != {"done": expected}:
        ctx.problems.append(f"{key}: deliveries by state {states}, {expected} done wanted")
    per_replica = [sum(1 for _ in fanout.starts_in(path, "i")) for path in rx.starts_files.values()]
    ctx.done_with(workdir)
    found: Sample = {"value": value, "deliveries": expected, "span_s": span_s, "drain_s": drain_s}
    found.update({f"replica{k}_starts": n for k, n in enumerate(per_replica, start=1)})
    return found


def fanout_job(ctx: Context) -> dict[str, Sample]:
    """Draining a backlog of ``burst`` events to one no-op plugin, on 1 and on 2 replicas."""
    return {f"pg.backlog1.r{r}": _backlog(ctx, r) for r in REPLICAS}


@dataclass(frozen=True)
class StatusCopy:
    """The status figures' database copied into Postgres (:func:`prepare`).

    Attributes:
        url: Its URL.
        rows: Rows copied, by table.
        copy_s: Seconds the copy took (schema, rows, indexes, ``VACUUM ANALYZE``).
        size_bytes: ``pg_database_size`` after the copy.
    """

    url: str
    rows: dict[str, int]
    copy_s: float
    size_bytes: int


def prepare(ctx: Context, data: status.StatusData) -> StatusCopy:
    """Copy ``data``'s SQLite database into a new Postgres database (:mod:`bench.pgbulk`).

    Raises:
        psycopg.Error, sqlite3.Error: the copy failed.
    """
    url = postgres.create_database(_server(ctx).admin_url, f"{PREFIX}_status")
    ctx.progress(f"copying {data.tasks:,} tasks into Postgres ...")
    started = time.monotonic()
    rows = pgbulk.copy(data.db, url)
    copy_s = time.monotonic() - started
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    ctx.progress(f"copied in {copy_s:.0f} s: {rows}")
    return StatusCopy(url, rows, copy_s, int(found[0]) if found else 0)


def status_job(ctx: Context) -> dict[str, Sample]:
    """The status API on the Postgres copy: both loads at 1 and 16 connections."""
    copied = ctx.extra["pg-status"]
    assert isinstance(copied, StatusCopy)
    workdir = ctx.rundir("pg-status")
    with receiver("pg-status", workdir, ctx.problems, database_url=copied.url) as rx:
        out = status.timed_gets(ctx, rx, "pg.status")
        out["pg.status.startup"] = {"value": rx.ready_s * 1000}
    ctx.done_with(workdir)
    return out
