"""A large kling-hooks database for the status API figures: ``tasks`` tasks with their
transitions, raw callbacks and plugin deliveries, written in bulk.

    from bench.bulkdb import build
    built = build(Path("/tmp/bulk.db"), 1_000_000, seed=0)   # about a minute, ~1 GB

The schema is the receiver's own: :func:`receiver.store.connect` and
:func:`receiver.store.migrate` create the file (WAL, ``auto_vacuum = INCREMENTAL``), then the
rows go in through the standard library's ``sqlite3`` in one transaction (``executemany``, the
journal off while the file is new; WAL again at the end).

Each task, numbered ``i``, is registered by the submitter and then called back:

- ``task_id`` ``"8{i:011d}"``, ``external_task_id`` ``"kh-bulk-{i:07d}"``; a route and a final
  status drawn from ``random.Random(seed)``: 85% ``succeed``, 10% ``failed``, 5%
  ``processing``; the routes weighted 40/15/15/15/15 in :class:`~submitter.protocol.Route`'s
  order; a registered request (model and prompt); one result URL when it succeeded;
- two transitions: ``submitted`` (source ``registration``) and the final status (source
  ``callback``), and one raw callback row (verdict ``new``, a short body) for the latter;
- one ``done`` delivery per plugin that wants the final status: ``downloader`` (``succeed``)
  and ``slack`` (``succeed`` and ``failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from receiver.store import connect, migrate
from submitter.protocol import Route, TaskStatus

#: ``task_ids`` holds at most this many ids.
SAMPLE_IDS = 10_000
#: The first task's Kling times, Unix ms; task ``i`` is ``i`` x 10 ms later.
BASE_MS = 1_774_800_000_000
_STATUSES = ((TaskStatus.SUCCEED, 85), (TaskStatus.FAILED, 10), (TaskStatus.PROCESSING, 5))
_ROUTE_WEIGHTS = (40, 15, 15, 15, 15)
#: One row's values, in its INSERT's column order.
Row = tuple[object, ...]
_PLUGINS = {TaskStatus.SUCCEED: ("downloader", "slack"), TaskStatus.FAILED: ("slack",)}


@dataclass(frozen=True)
class Built:
    """What :func:`build` made.

    Attributes:
        path: The database file.
        tasks: Tasks in it.
        seconds: Wall time of the build.
        task_ids: A random sample of up to :data:`SAMPLE_IDS` of its task_ids.
        filters: ``GET /tasks`` query strings (``task_status=succeed&route=...``) that each
            match many tasks, most matches first.
    """

    path: Path
    tasks: int
    seconds: float
    task_ids: list[str]
    filters: list[str]


def task_id(i: int) -> str:
    """Kling's task id of bulk task ``i``."""
    return f"8{i:011d}"


async def _create(path: Path) -> None:
    conn = await connect(path)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def _draws(tasks: int, seed: int) -> Iterator[tuple[int, Route, TaskStatus]]:
    rng = random.Random(seed)
    routes, statuses = list(Route), [s for s, _ in _STATUSES]
    weights = [w for _, w in _STATUSES]
    for i in range(tasks):
        route = rng.choices(routes, _ROUTE_WEIGHTS)[0]
        yield i, route, rng.choices(statuses, weights)[0]


def _result(i: int, route: Route, status: TaskStatus) -> str | None:
    if status is not TaskStatus.SUCCEED:
        return None
    kind = "images" if route.value.startswith("images/") else "videos"
    url = f"https://cdn.klingai.com/bs2/upload-kling-api/bulk/{task_id(i)}/{kind[:-1]}-0"
    return json.dumps({kind: [{"index": 0, "url": url}]})


def _rows(tasks: int, seed: int, counts: Counter[tuple[str, str]]) -> Iterator[tuple[str, Row]]:
    """``(table, row)`` for every row, in id order per table; counts (status, route)."""
    delivery_id = 0
    for i, route, status in _draws(tasks, seed):
        counts[(status.value, route.value)] += 1
        tid, ext = task_id(i), f"kh-bulk-{i:07d}"
        at = BASE_MS + i * 10
        msg = "content moderation" if status is TaskStatus.FAILED else ""
        result = _result(i, route, status)
        request = json.dumps({"model_name": "kling-v1", "prompt": f"bulk task {i}"})
        info = json.dumps({"external_task_id": ext})
        yield (
            "tasks",
            (
                i + 1,
                tid,
                ext,
                route.value,
                request,
                status.value,
                msg,
                result,
                info,
                "0.2",
                at - 60_000,
                at,
                at - 60_000,
                at,
            ),
        )
        first, last = 2 * i + 1, 2 * i + 2
        yield (
            "transitions",
            (first, tid, "submitted", None, at - 60_000, "registration", None, None, None),
        )
        yield "transitions", (last, tid, status.value, at, at, "callback", msg, result, "0.2")
        body = json.dumps({"task_id": tid, "task_status": status.value, "updated_at": at})
        yield "callbacks", (i + 1, tid, status.value, "new", at, body, "callback")
        for plugin in _PLUGINS.get(status, ()):
            delivery_id += 1
            yield "deliveries", (delivery_id, last, plugin, "done", 1, None, None, at, at + 50)


_INSERTS = {
    "tasks": "INSERT INTO tasks (id, task_id, external_task_id, route, request_json,"
    " task_status, task_status_msg, task_result_json, task_info_json, final_unit_deduction,"
    " created_at, updated_at, first_seen_at, last_received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "transitions": "INSERT INTO transitions (id, task_id, task_status, updated_at, received_at,"
    " source, task_status_msg, task_result_json, final_unit_deduction)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "callbacks": "INSERT INTO callbacks (id, task_id, task_status, verdict, received_at, body,"
    " source) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "deliveries": "INSERT INTO deliveries (id, transition_id, plugin, state, attempts,"
    " next_attempt_at, last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
}
_BATCH_ROWS = 20_000


def _insert(conn: sqlite3.Connection, rows: Iterator[tuple[str, Row]]) -> None:
    pending: dict[str, list[Row]] = {table: [] for table in _INSERTS}
    for table, row in rows:
        batch = pending[table]
        batch.append(row)
        if len(batch) >= _BATCH_ROWS:
            conn.executemany(_INSERTS[table], batch)
            batch.clear()
    for table, batch in pending.items():
        conn.executemany(_INSERTS[table], batch)


def build(path: Path, tasks: int = 1_000_000, *, seed: int = 0) -> Built:
    """Create ``path`` (which must not exist) with ``tasks`` tasks as the module docstring
    says; the same ``seed`` gives the same rows.

    Raises:
        FileExistsError: ``path`` exists.
    """
    if path.exists():
        raise FileExistsError(f"{path} exists; build() makes a new database")
    started = time.monotonic()
    asyncio.run(_create(path))
    counts: Counter[tuple[str, str]] = Counter()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB
        conn.execute("BEGIN")
        _insert(conn, _rows(tasks, seed, counts))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    rng = random.Random(seed + 1)
    ids = [task_id(i) for i in rng.sample(range(tasks), min(SAMPLE_IDS, tasks))]
    filters = [
        f"task_status={status}&route={route}"
        for (status, route), n in counts.most_common()
        if n >= min(1000, tasks // 20)
    ]
    return Built(path, tasks, time.monotonic() - started, ids, filters)
