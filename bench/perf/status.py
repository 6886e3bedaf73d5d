"""Figure 5: the status API on a large database, and the documents of its ceiling.

Set-up, once per run (:func:`prepare`): the database of ``bench/bulkdb.py`` (built in the run
directory, or ``--bulk-db PATH``: reused if it exists, else built there and kept), two feeds
(``GET /tasks/{id}`` over the sample of task_ids; ``GET /tasks?{filter}`` over the filters,
each with ``limit=50``) sent in ``random`` order, and the ceiling's documents: the receiver's
real answers to the first of each, so that the ceiling serialises and sends as many bytes as
the receiver.

Job (:func:`status_job`): ``kling-hooks serve`` on that database (no plugins), each feed at 1
and 16 connections with the API token; every answer must be 200.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from bench import bulkdb, wrk
from bench.perf.loads import sample, timed
from bench.perf.servers import AUTH_HEADER, Running, receiver
from bench.perf.sizes import Context, Sample
from bench.workload import API_TOKEN

CONNECTIONS = (1, 16)
PAGE_LIMIT = 50
#: The row keys' middle part, and the feed each one sends.
LOADS = ("get_task", "list")


@dataclass(frozen=True)
class StatusData:
    """What :func:`prepare` set up.

    Attributes:
        db: The database (``tasks`` tasks).
        tasks: Tasks in it.
        build_s: Seconds its build took (None: reused).
        feeds: The ``get_task`` and ``list`` feed files.
        docs: The ceiling's documents (JSON ``{"task": ..., "page": ...}``).
        doc_bytes: The receiver's answer sizes, bytes, by load.
        filters: The ``GET /tasks`` filters sent (without ``limit``).
        sample_ids: How many task_ids the ``get_task`` feed holds.
    """

    db: Path
    tasks: int
    build_s: float | None
    feeds: dict[str, Path]
    docs: Path
    doc_bytes: dict[str, int]
    filters: list[str]
    sample_ids: int


def sampled(db: Path, seed: int = 0) -> bulkdb.Built:
    """What :func:`bench.bulkdb.build` would have returned for an existing ``db``
    (:func:`bench.bulkdb.survey`: a random sample of its task_ids, and filters matching at
    least a page of tasks)."""
    ids, filters = bulkdb.survey(db, seed=seed)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        tasks = int(conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
    return bulkdb.Built(db, tasks, 0.0, ids, filters)


def prepare(ctx: Context, bulk_db: Path | None) -> StatusData:
    """Build (or reuse) the database, write the feeds, capture the ceiling's documents.

    Raises:
        RuntimeError: the receiver's answers were not 200, or a page held fewer than 50.
    """
    path = bulk_db or ctx.workdir / "bulk.db"
    if path.exists():
        built, build_s = sampled(path), None
    else:
        ctx.progress(f"building the status database: {ctx.sizes.tasks:,} tasks in {path}")
        built = bulkdb.build(path, ctx.sizes.tasks, seed=0)
        build_s = built.seconds
    if not built.task_ids or not built.filters:
        raise RuntimeError(f"{path}: no task_ids or no filters to request")
    feeds = {"get_task": ctx.workdir / "get-task.feed", "list": ctx.workdir / "list.feed"}
    wrk.write_feed(
        feeds["get_task"], (wrk.FeedLine("GET", f"/tasks/{quote(t)}") for t in built.task_ids)
    )
    wrk.write_feed(
        feeds["list"],
        (wrk.FeedLine("GET", f"/tasks?{f}") for f in built.filters),
    )
    docs, sizes = _capture_docs(ctx, path, built)
    return StatusData(
        path, built.tasks, build_s, feeds, docs, sizes, built.filters, len(built.task_ids)
    )


def _capture_docs(ctx: Context, db: Path, built: bulkdb.Built) -> tuple[Path, dict[str, int]]:
    workdir = ctx.workdir / "status-docs"
    workdir.mkdir(exist_ok=True)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with receiver("status-docs", workdir, ctx.problems, db=db) as rx:
        task = httpx.get(f"{rx.url}/tasks/{quote(built.task_ids[0])}", headers=auth, timeout=30)
        page = httpx.get(f"{rx.url}/tasks?{built.filters[0]}", headers=auth, timeout=30)
    for answer in (task, page):
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.url}: {answer.status_code} {answer.text[:300]}")
    if len(page.json()["tasks"]) != PAGE_LIMIT:
        raise RuntimeError(f"{page.url}: {len(page.json()['tasks'])} tasks, not {PAGE_LIMIT}")
    docs = ctx.workdir / "status-docs.json"
    docs.write_text(json.dumps({"task": task.json(), "page": page.json()}))
    return docs, {"get_task": len(task.content), "list": len(page.content)}


def docs_file(ctx: Context) -> Path | None:
    """The ceiling's documents, when the status group runs."""
    data = ctx.extra.get("status")
    return data.docs if isinstance(data, StatusData) else None


def timed_gets(ctx: Context, server: Running, prefix: str) -> dict[str, Sample]:
    """Both loads at 1 and 16 connections against ``server`` (the receiver or the ceiling),
    each after a short untimed warm-up; row keys ``{prefix}.{load}.c{connections}``.
    A non-200 answer is a problem."""
    data = ctx.extra["status"]
    assert isinstance(data, StatusData)
    out: dict[str, Sample] = {}
    for load in LOADS:
        feed = data.feeds[load]
        warm_s = min(0.5, ctx.sizes.duration_s)
        timed(ctx, server, feed, 16, mode="random", duration_s=warm_s, headers=[AUTH_HEADER])
        for connections in CONNECTIONS:
            result, cpu_s = timed(
                ctx, server, feed, connections, mode="random", headers=[AUTH_HEADER]
            )
            bad = sum(result.non2xx.values()) + sum(result.errors.values())
            if bad:
                ctx.problems.append(
                    f"{server.name} {load} c{connections}: {bad} answers not 200 "
                    f"({dict(result.non2xx)}, socket errors {dict(result.errors)})"
                )
            out[f"{prefix}.{load}.c{connections}"] = sample(result, cpu_s)
    return out


def status_job(ctx: Context) -> dict[str, Sample]:
    """The status API's figures of this round, and its start-up time on the large database
    (``status.startup``, ms)."""
    data = ctx.extra["status"]
    assert isinstance(data, StatusData)
    workdir = ctx.rundir("status")
    with receiver("status", workdir, ctx.problems, db=data.db) as rx:
        out = timed_gets(ctx, rx, "status")
        out["status.startup"] = {"value": rx.ready_s * 1000}
    return out
