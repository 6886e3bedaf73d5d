"""Figures 1, 2, 3 and 7: the ceiling, callback ingest (without and with plugins), the
duplicate storm, and the peer. Each job is one configuration of one round.

- Ceiling: the ingest feed sent in ``cycle`` order (the ceiling stores nothing) at 16 and 64
  connections, and, with the status group, the status API's loads (:mod:`bench.perf.status`).
- Ingest: a fresh ``kling-hooks serve`` per connection count; the warm-up feed, then distinct
  new-transition callbacks (``seq``) for ``duration_s``. The 64-connection run also gives the
  footprint's peak RSS, start-up time and database bytes per task.
- Ingest with plugins: the same with the downloader, Slack and webhook plugins against the
  sink (5 result images per callback are downloaded; one Slack message and one webhook POST).
- Duplicate storm: the warm-up feed ending with one more callback (``new`` once), then that
  callback over and over (``cycle``) at 64 connections.
- Peer: ``webhook`` (:mod:`bench.perf.peer`) at 16 and 64 connections, the ingest feed's
  bodies sent to its hook URL; its payload lines must equal its 2xx answers.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from bench import processes
from bench.perf import peer, status
from bench.perf.loads import sample, timed, warm
from bench.perf.servers import (
    ceiling_server,
    delivery_states,
    peer_server,
    receiver,
    sink_counts,
)
from bench.perf.sizes import Context, Sample

CONNECTIONS = (16, 64)
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MIB = 1024 * 1024


def plugins_toml(sink_url: str, downloads: Path) -> str:
    """The ``[plugins.*]`` tables of the ingest-with-plugins figure: every plugin's defaults
    but the targets, and ``allow_private_hosts`` (the sink is on loopback)."""
    return f"""
[plugins.downloader]
directory = "{downloads}"
allow_private_hosts = true

[plugins.slack]
webhook_url = "{sink_url}/slack/T0/B0/bench"

[plugins.webhook]
url = "{sink_url}/hook"
secret = "{WEBHOOK_SECRET}"
"""


def ceiling_job(ctx: Context) -> dict[str, Sample]:
    """The ceiling's figures of this round (see the module docstring)."""
    out: dict[str, Sample] = {}
    workdir = ctx.rundir("ceiling")
    docs = status.docs_file(ctx)
    with ceiling_server(workdir, docs) as server:
        if ctx.wants("ceiling", "ingest", "duplicates", "peer"):
            warm(ctx, server, 64)
            for connections in CONNECTIONS:
                result, cpu_s = timed(ctx, server, ctx.feeds.ingest, connections, mode="cycle")
                out[f"ceiling.post.c{connections}"] = sample(result, cpu_s)
        if docs is not None:
            out.update(status.timed_gets(ctx, server, "ceiling"))
    return out


def _ingest(ctx: Context, key: str, *, with_plugins: bool) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for connections in CONNECTIONS:
        name = f"{key}-c{connections}"
        workdir = ctx.rundir(name)
        toml = plugins_toml(ctx.sink.url, workdir / "downloads") if with_plugins else ""
        with receiver(name, workdir, ctx.problems, plugins_toml=toml) as rx:
            warm(ctx, rx, connections, tally=rx.tally)
            sink_before, sink_cpu_s = sink_counts(ctx.sink), ctx.sink.cpu_s()
            result, cpu_s = timed(ctx, rx, ctx.feeds.ingest, connections, tally=rx.tally)
            found = sample(result, cpu_s)
            if with_plugins:
                found["sink_cpu"] = (ctx.sink.cpu_s() - sink_cpu_s) / max(result.span_s, 1e-9)
                sink_after = sink_counts(ctx.sink)
                found.update({f"sink_{k}": sink_after[k] - sink_before[k] for k in sink_after})
            found["hwm_mib"], ready_s = rx.hwm_mib(), rx.ready_s
        out[f"{key}.c{connections}"] = found
        if with_plugins:
            _check_plugins_worked(ctx, name, found, delivery_states(rx.db))
        if not with_plugins and connections == 64:
            out["footprint.hwm"] = {"value": found["hwm_mib"]}
            out["footprint.startup"] = {"value": ready_s * 1000}
            out["footprint.bytes_per_task"] = {"value": bytes_per_task(rx.db)}
        ctx.done_with(workdir)
    return out


def _check_plugins_worked(ctx: Context, name: str, found: Sample, states: dict[str, int]) -> None:
    """A plugin that refused every event (a ``dead`` delivery) or never reached the sink
    would make the figure that of a receiver with nothing to do: a problem."""
    found.update({f"deliveries_{state}": n for state, n in states.items()})
    idle = [k for k in ("files", "slack", "hook") if not found.get(f"sink_{k}")]
    if states.get("dead") or idle:
        ctx.problems.append(
            f"{name}: plugins not working: deliveries {states}, no sink requests for {idle}"
        )


def ingest_job(ctx: Context) -> dict[str, Sample]:
    """Callback ingest without plugins, at 16 and 64 connections (and three footprint
    figures from the 64-connection run)."""
    return _ingest(ctx, "ingest.none", with_plugins=False)


def ingest_plugins_job(ctx: Context) -> dict[str, Sample]:
    """Callback ingest with the downloader, Slack and webhook plugins, at 16 and 64."""
    return _ingest(ctx, "ingest.plugins", with_plugins=True)


def bytes_per_task(db: Path) -> float:
    """The database's size on disk (file, plus its WAL if the stop left one) per task row."""
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tasks = int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    return size / max(tasks, 1)


def duplicates_job(ctx: Context) -> dict[str, Sample]:
    """The duplicate storm: one stored callback sent again and again at 64 connections."""
    workdir = ctx.rundir("duplicates")
    with receiver("duplicates", workdir, ctx.problems) as rx:
        warm(ctx, rx, 64, feed=ctx.feeds.warmup_then_duplicate, tally=rx.tally)
        result, cpu_s = timed(ctx, rx, ctx.feeds.duplicate, 64, mode="cycle", tally=rx.tally)
    if result.new or result.stale:
        ctx.problems.append(f"duplicates: {result.new} new and {result.stale} stale verdicts")
    ctx.done_with(workdir)
    return {"duplicates.c64": sample(result, cpu_s)}


def peer_job(ctx: Context) -> dict[str, Sample]:
    """The peer at 16 and 64 connections; ``stored`` and ``acknowledged`` payloads."""
    out: dict[str, Sample] = {}
    for connections in CONNECTIONS:
        name = f"peer-c{connections}"
        workdir = ctx.rundir(name)
        with peer_server(name, workdir) as server:
            warmed = warm(ctx, server, connections, path=peer.HOOK_PATH)
            cpu_before = processes.cpu_with_children_s(server.pid)
            result, _ = timed(
                ctx, server, ctx.feeds.ingest, connections, mode="cycle", path=peer.HOOK_PATH
            )
            cpu_s = processes.cpu_with_children_s(server.pid) - cpu_before
        found = sample(result, cpu_s)
        found.update(acknowledged=warmed.ok + result.ok, stored=peer.stored(workdir / name))
        out[f"peer.c{connections}"] = found
        ctx.done_with(workdir)
    return out
