"""Suite 1, crash under load: SIGKILL the receiver while callbacks pour in and plugins run.

``kling-hooks serve`` runs with the downloader, Slack and webhook plugins against local sinks
in this process (``tests.sinks``: a file server, a Slack endpoint, a webhook endpoint). N
distinct valid ``succeed`` callbacks, one result image each, are sent over C connections;
a callback with no 200 (a 503, a broken or refused connection) is sent again, as Kling does.
At random moments (once a random share of the callbacks is acknowledged, plus a random delay)
the receiver is killed with SIGKILL and started again on the same database and port, at least
3 times. Once every callback is acknowledged, the suite waits until the outbox is empty.

On Postgres (``database_url``), ``replicas`` receivers share the database and one listening
socket (one URL in front of them, as a load balancer gives: ``ServeProcess``'s ``sock``), and
each kill takes a replica chosen at random, which is then started again under its own
replica id; the others go on serving meanwhile.

Figures: acknowledged, stored (acknowledged callbacks whose task is in the database), lost
(must be 0), deliveries done, deliveries not done at the end (must be 0: not ``done``, or never
written), and duplicate deliveries per plugin (allowed: at-least-once; counted at the sinks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bench.processes import free_port, outbox
from bench.suites import Report
from bench.suites.load import CallbackLoad, poll_until
from bench.suites.serve_process import SECRET, ServeProcess, shared_socket
from bench.workload import succeed_body
from submitter.media import png_bytes
from tests.sinks import Sink, start_sink

NAME = "crash under load"
PLUGINS = ("downloader", "slack", "webhook")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TASK = re.compile(rb"crash-\d+")  # an external_task_id in a Slack message


@dataclass(frozen=True)
class Sizes:
    callbacks: int
    concurrency: int
    kills: int
    drain_timeout_s: float


REDUCED = Sizes(callbacks=1_500, concurrency=32, kills=3, drain_timeout_s=120.0)
FULL = Sizes(callbacks=20_000, concurrency=32, kills=3, drain_timeout_s=900.0)


def write_config(workdir: Path, slack: Sink, hook: Sink) -> Path:
    config = workdir / "kling-hooks.toml"
    retry = "retry_schedule_s = [0.2, 0.2, 0.5, 0.5, 1, 1, 2, 2, 5, 5]"
    config.write_text(
        f"""
kling_hooks_db = "{workdir / "crash.db"}"

[plugins.downloader]
directory = "{workdir / "downloads"}"
allow_private_hosts = true
concurrency = 8
{retry}

[plugins.slack]
webhook_url = "{slack.url}/services/T0/B0/crash"
concurrency = 8
{retry}

[plugins.webhook]
url = "{hook.url}/hook"
secret = "{WEBHOOK_SECRET}"
concurrency = 8
{retry}
"""
    )
    return config


def stored_ids(db: Path | str) -> set[str]:
    """The external_task_ids stored in ``db``: a SQLite file, or a Postgres URL."""
    if isinstance(db, str):
        import psycopg

        with psycopg.connect(db) as pg:
            return {r[0] for r in pg.execute("SELECT external_task_id FROM tasks")}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {r[0] for r in conn.execute("SELECT external_task_id FROM tasks")}


def outbox_of(db: Path | str) -> tuple[int, int]:
    """``(deliveries, of which done)`` in ``db``: a SQLite file, or a Postgres URL."""
    if isinstance(db, Path):
        return outbox(db)
    from bench import postgres  # psycopg: for Postgres only

    return postgres.outbox(db)


def _servers(config: Path, database_url: str | None, replicas: int) -> list[ServeProcess]:
    """One receiver on its own port (SQLite), or ``replicas`` on one socket (Postgres)."""
    if database_url is None:
        return [ServeProcess(config, free_port())]
    sock = shared_socket()
    return [
        ServeProcess(
            config,
            0,
            {"KLING_HOOKS_DATABASE_URL": database_url, "KLING_HOOKS_REPLICA_ID": f"replica-{n}"},
            sock=sock,
        )
        for n in range(replicas)
    ]


def duplicates(keys: list[str]) -> int:
    """How many of ``keys`` repeat an earlier one."""
    return sum(n - 1 for n in collections.Counter(keys).values())


async def killer(
    servers: list[ServeProcess], load: CallbackLoad, sizes: Sizes, rng: random.Random
) -> int:
    """SIGKILL and restart one of ``servers``, chosen at random, ``sizes.kills`` times at
    random points; returns how many."""
    shares = sorted(rng.uniform(0.1, 0.9) for _ in range(sizes.kills))
    for share in shares:
        while len(load.acked) < share * sizes.callbacks:
            load.acked_changed.clear()
            await load.acked_changed.wait()
        await asyncio.sleep(rng.uniform(0, 0.3))
        server = rng.choice(servers)
        await server.kill()
        await asyncio.sleep(rng.uniform(0, 0.3))
        await server.start()
    return len(shares)


async def run(
    full: bool, workdir: Path, *, database_url: str | None = None, replicas: int = 1
) -> Report:
    """N callbacks, >= 3 SIGKILLs and restarts, then an empty outbox; see the module doc.

    Args:
        database_url: A Postgres database (empty) to run on, instead of a SQLite file.
        replicas: How many receivers share it (Postgres only).
    """
    sizes = FULL if full else REDUCED
    rng = random.Random()
    image = png_bytes(8, 8)
    db: Path | str = workdir / "crash.db" if database_url is None else database_url
    if database_url is None and replicas != 1:
        raise ValueError("replicas share a Postgres database: give database_url")
    started = time.monotonic()
    async with start_sink() as slack, start_sink() as hook, start_sink() as files:
        for i in range(sizes.callbacks):
            files.serve_file(f"/r/{i}.png", image, "image/png")

        def body_of(index: int, ext: str) -> bytes:
            doc = json.loads(succeed_body(f"7{index:012d}", ext, 1774805090000))
            doc["task_result"] = {"images": [{"index": 0, "url": f"{files.url}/r/{index}.png"}]}
            return json.dumps(doc).encode()

        config = write_config(workdir, slack, hook)
        servers = _servers(config, database_url, replicas)
        try:
            await asyncio.gather(*(s.start() for s in servers))
            load = CallbackLoad(
                servers[0].url, SECRET, "crash", sizes.callbacks, sizes.concurrency, body_of
            )
            kills, _ = await asyncio.gather(killer(servers, load, sizes, rng), load.run())
            expected = len(PLUGINS) * sizes.callbacks
            await poll_until(
                lambda: outbox_of(db) == (expected, expected), sizes.drain_timeout_s, 0.5
            )
        finally:
            await asyncio.gather(*(s.stop() for s in servers))
            if servers[0].sock is not None:
                servers[0].sock.close()
        total, done = outbox_of(db)
        slack_keys = [
            m.group().decode() if (m := TASK.search(r.body)) else "" for r in slack.requests
        ]
        hook_keys = [r.headers.get("webhook-id", "") for r in hook.requests]
        file_keys = [r.path for r in files.requests if r.method == "GET"]
    acked = load.acked
    lost = len(acked - stored_ids(db))
    report = Report(
        NAME,
        {
            "acknowledged": len(acked),
            "stored": len(acked) - lost,
            "lost": lost,
            "SIGKILLs (each followed by a restart)": kills,
            "deliveries done": done,
            "deliveries not done at the end": len(PLUGINS) * sizes.callbacks - done,
            "duplicate deliveries, downloader": duplicates(file_keys),
            "duplicate deliveries, slack": duplicates(slack_keys),
            "duplicate deliveries, webhook": duplicates(hook_keys),
            "attempts without a 200 (retried)": sum(s.status != 200 for s in load.sent),
            "wall time (s)": round(time.monotonic() - started, 1),
        },
        must_be_zero=("lost", "deliveries not done at the end"),
    )
    report.notes.append(
        f"{sizes.callbacks:,} distinct callbacks at concurrency {sizes.concurrency}; "
        f"plugins {', '.join(PLUGINS)}; {total:,} outbox rows"
    )
    if database_url is not None:
        report.notes.append(f"Postgres, {replicas} replica(s) behind one listening socket")
    if kills < 3:
        report.figures["SIGKILLs short of 3"] = 3 - kills
        report.must_be_zero += ("SIGKILLs short of 3",)
    return report
