"""A kling-hooks database of many tasks, built fast, for benchmarks of the status API.

Run it from the repository root, in the project's virtualenv::

    python bench/bulkdb.py /tmp/big.db                 # 1,000,000 tasks
    python bench/bulkdb.py /tmp/small.db --tasks 20000 --seed 3

or from Python (the status API benchmark and the harness do)::

    from bench.bulkdb import build
    built = build(Path("/tmp/big.db"), 1_000_000, seed=0)

How it builds:

1. the file (and its ``-wal``/``-shm``) is replaced; the project's own migrations make the
   schema (``receiver.store.connect`` and ``receiver.store.migrate``, as ``serve`` would:
   WAL, ``auto_vacuum = INCREMENTAL``, every index of ``migrations/``);
2. on a plain ``sqlite3`` connection: ``journal_mode = OFF``, ``synchronous = OFF``, a large
   page cache, temporary tables in memory; the migrations' own indexes (those with SQL in
   ``sqlite_master``) are dropped and their exact SQL kept; the UNIQUE constraints stay;
3. three 62-bit numbers per task from ``random.Random(seed)``, and its external_task_id
   made from them, go into a temporary table (``executemany``); every other value is
   derived from those numbers in SQL, so the same ``(tasks, seed)`` gives the same file;
4. one ``INSERT ... SELECT`` per table makes the rows: a temporary ``plan`` (one row per task:
   ids, route, final status, times), then ``tasks``, ``transitions`` and ``callbacks`` (both
   in arrival order, so one task's rows are spread among its neighbours' as on a real
   receiver), ``deliveries`` and ``files``. Task ids and ULID external ids grow with time,
   so the UNIQUE indexes are filled in order;
5. the dropped indexes are made again from their SQL, ``ANALYZE`` is not run (``serve`` does
   not run it either), the journal goes back to WAL, and the file is closed.

What the tasks look like (shares of the tasks): routes images/generations 40%,
videos/text2video 25%, videos/image2video 20%, images/multi-image2image 10%,
videos/multi-image2video 5%, and about 1.6% never registered (no route, no request: only
Kling's callbacks came). Final status: succeed about 90%, failed about 9%, about 1% stuck in
``processing`` or ``submitted`` (lost callbacks), and the newest 0.1% still running. One new
task every 8 s on average, so 1,000,000 tasks span about 93 days ending at ``END_MS``.
Transitions: ``submitted`` (the registration), ``processing`` for 81% (Kling does not always
send it), then the final one. Raw callbacks: one per transition Kling sent (verdict new),
Kling's own ``submitted`` for 25% (duplicate), a repeated final callback for 12.5%
(duplicate), a ``processing`` after the end for 3% (stale). Deliveries: ``slack`` and
``webhook`` for every final transition, ``downloader`` for every ``succeed``; 98.8% done,
1.2% dead, and among the newest 1% of the tasks a few failed (a retry due) or pending.
Files: one per result URL of every done ``downloader`` delivery. About 2,900 bytes per task
on disk (2.7 GiB for 1,000,000 tasks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver import store
from submitter.protocol import Route

#: The newest task's first-seen time, Unix ms (2026-12-01T00:00:00Z): fixed, so that a
#: seed gives the same file on every day.
END_MS = 1_796_083_200_000
#: Average time between two new tasks, ms.
STEP_MS = 8_000
#: Most task_ids in :attr:`Built.task_ids`.
SAMPLE = 10_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PROMPTS = [
    "a lighthouse at dawn, volumetric light",
    "a red fox running through fresh snow, slow motion",
    "portrait of an old fisherman, 85mm, soft rim light",
    "isometric city block at night, neon signs, rain",
    "a paper boat drifting down a gutter stream",
    "macro shot of a dew drop on a spider web",
    "a cat astronaut floating inside a space station",
    "aerial view of rice terraces in the morning mist",
    "a steaming bowl of ramen on a wooden table",
    "time-lapse of clouds over a mountain ridge",
    "a vintage car driving along a coastal road at sunset",
    "watercolor painting of a quiet harbor town",
    "a robot watering plants in a greenhouse",
    "close-up of hands shaping clay on a potter's wheel",
    "a hot air balloon festival over the desert",
    "an owl landing on a branch, feathers in detail",
]
_FAILURES = [
    "content safety check failed",
    "task timed out",
    "image generation failed, please try again",
    "internal error",
]
#: (route, kind of result, share out of 1024 of the route dice, upper bound).
_ROUTES = [
    (Route.IMAGES_GENERATIONS, 410),
    (Route.VIDEOS_TEXT2VIDEO, 666),
    (Route.VIDEOS_IMAGE2VIDEO, 870),
    (Route.IMAGES_MULTI_IMAGE2IMAGE, 973),
    (Route.VIDEOS_MULTI_IMAGE2VIDEO, 1024),
]


@dataclass(frozen=True)
class Built:
    """A database :func:`build` made.

    Attributes:
        path: The SQLite file.
        tasks: How many tasks it holds.
        seconds: How long the build took, wall clock.
        task_ids: Up to :data:`SAMPLE` task_ids of tasks in it, a random sample (by ``seed``).
        filters: Query strings for ``GET /tasks`` (``task_status=succeed&limit=50``,
            ``route=...&task_status=failed&limit=50``, some with a ``cursor``), each matching
            at least a full page of tasks.
    """

    path: Path
    tasks: int
    seconds: float
    task_ids: list[str]
    filters: list[str]


def build(path: Path, tasks: int = 1_000_000, *, seed: int = 0) -> Built:
    """Make ``path`` a kling-hooks database (current schema) holding ``tasks`` tasks.

    Args:
        path: The file to write; replaced when it exists (with its ``-wal`` and ``-shm``).
        tasks: How many tasks, at least 1.
        seed: Chooses every random value; the same ``(tasks, seed)`` gives the same rows.

    Returns:
        A :class:`Built`.

    Raises:
        ValueError: ``tasks`` is below 1.
        sqlite3.Error: the file cannot be written (its folder is missing, the disk is full).
    """
    if tasks < 1:
        raise ValueError(f"tasks={tasks} is below 1")
    started = time.perf_counter()
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whether or not one runs here
        pool.submit(asyncio.run, _migrate(path)).result()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _fill(conn, tasks, seed)
        task_ids = _sample(conn, tasks, seed)
        filters = _filters(conn, tasks)
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()
    return Built(path, tasks, time.perf_counter() - started, task_ids, filters)


async def _migrate(path: Path) -> None:
    conn = await store.connect(path)
    try:
        await store.migrate(conn)
    finally:
        await conn.close()


def _fill(conn: sqlite3.Connection, tasks: int, seed: int) -> None:
    for pragma in (
        "journal_mode = OFF",
        "synchronous = OFF",
        "cache_size = -1000000",  # KiB
        "temp_store = MEMORY",
    ):
        conn.execute(f"PRAGMA {pragma}")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall()
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    _dice(conn, tasks, seed)
    _templates(conn)
    conn.execute(_plan_sql(tasks))
    conn.execute("CREATE UNIQUE INDEX temp.plan_by_task ON plan (task_id)")
    recent = tasks - max(1, tasks // 100)  # only the newest 1% have retries due
    for sql in (_TASKS, _TRANSITIONS, _CALLBACKS, _DELIVERIES, _FILES):
        conn.execute(sql.replace("{recent}", str(recent)))
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    for table in ("dice", "plan", "result_tpl", "request_tpl", "prompts", "failures", "nums"):
        conn.execute(f"DROP TABLE temp.{table}")


def _dice(conn: sqlite3.Connection, tasks: int, seed: int) -> None:
    """``dice(n, a, b, c, ext)``: three random 62-bit numbers per task ``n`` (1-based), and
    its external_task_id, ``"kh-"`` and a ULID (made here: 26 Base32 digits cost SQLite
    more than all the rest of a task's plan)."""
    rng = random.Random(seed)
    bits = rng.getrandbits
    start = END_MS - tasks * STEP_MS

    def rows() -> Iterator[tuple[int, int, int, int, str]]:
        for n in range(1, tasks + 1):
            a, b, c = bits(62), bits(62), bits(62)
            t0 = start + n * STEP_MS + ((c >> 44) & 4095)  # as _plan_sql's t0
            yield n, a, b, c, f"kh-{_base32(t0, 10)}{_base32(n, 8)}{_base32(b, 8)}"

    conn.execute("CREATE TEMP TABLE dice (n INTEGER PRIMARY KEY, a INT, b INT, c INT, ext TEXT)")
    conn.executemany("INSERT INTO dice VALUES (?, ?, ?, ?, ?)", rows())


#: Two Crockford Base32 digits (a ULID's alphabet) for each 10-bit number.
_PAIRS = [_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024)]


def _base32(value: int, digits: int) -> str:
    """The low ``5 * digits`` bits of ``value`` (``digits`` even) in Crockford Base32, most
    significant first."""
    return "".join(_PAIRS[(value >> 10 * k) & 1023] for k in range(digits // 2 - 1, -1, -1))


def _templates(conn: sqlite3.Connection) -> None:
    """Small lookup tables: prompts, failure messages, result and request bodies."""
    conn.execute("CREATE TEMP TABLE prompts (k INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO prompts VALUES (?, ?)", enumerate(_PROMPTS))
    conn.execute("CREATE TEMP TABLE failures (k INTEGER PRIMARY KEY, text TEXT)")
    conn.executemany("INSERT INTO failures VALUES (?, ?)", enumerate(_FAILURES))
    conn.execute("CREATE TEMP TABLE nums (i INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO nums VALUES (?)", ((i,) for i in range(9)))
    conn.execute(
        "CREATE TEMP TABLE result_tpl (kind TEXT, results INT, json TEXT,"
        " PRIMARY KEY (kind, results))"
    )
    rows = [("image", k, _result("image", k)) for k in (1, 2, 4)]
    rows += [(kind, 1, _result(kind, 1)) for kind in ("video5", "video10")]
    conn.executemany("INSERT INTO result_tpl VALUES (?, ?, ?)", rows)
    conn.execute(
        "CREATE TEMP TABLE request_tpl (route TEXT, results INT, json TEXT,"
        " PRIMARY KEY (route, results))"
    )
    conn.executemany(
        "INSERT INTO request_tpl VALUES (?, ?, ?)",
        [(r.value, k, _request(r, k)) for r, _ in _ROUTES for k in (1, 2, 4)],
    )


def _result(kind: str, results: int) -> str:
    """Kling's ``task_result`` as the receiver stores it (compact), ``TASKID`` to replace."""
    if kind == "image":
        items = [
            {"index": i, "url": f"https://cdn.example.com/kling/out/TASKID-{i}.png"}
            for i in range(results)
        ]
        return json.dumps({"images": items}, separators=(",", ":"))
    duration = "5.1" if kind == "video5" else "10.1"
    video = {
        "id": "TASKID-v0",
        "url": "https://cdn.example.com/kling/out/TASKID-0.mp4",
        "duration": duration,
    }
    return json.dumps({"videos": [video]}, separators=(",", ":"))


def _request(route: Route, results: int) -> str:
    """The registered body (``json.dumps`` as ``POST /tasks`` stores it), ``PROMPT`` and
    ``EXTID`` to replace."""
    image = "https://cdn.example.com/inputs/EXTID-in.png"
    body: dict[str, object]
    if route is Route.IMAGES_GENERATIONS:
        body = {"model_name": "kling-v2-1", "prompt": "PROMPT", "n": results, "aspect_ratio": "1:1"}
    elif route is Route.IMAGES_MULTI_IMAGE2IMAGE:
        subjects = [{"subject_image": image}, {"subject_image": image.replace("-in", "-in2")}]
        body = {"model_name": "kling-v2", "prompt": "PROMPT", "subject_image_list": subjects}
        body["n"] = results
    elif route is Route.VIDEOS_MULTI_IMAGE2VIDEO:
        body = {"model_name": "kling-v1-6", "prompt": "PROMPT", "image_list": [{"image": image}]}
        body |= {"mode": "std", "duration": "5"}
    elif route is Route.VIDEOS_IMAGE2VIDEO:
        body = {"model_name": "kling-v2-1", "image": image, "prompt": "PROMPT", "mode": "pro"}
        body["duration"] = "5"
    else:
        body = {"model_name": "kling-v2-1", "prompt": "PROMPT", "mode": "std", "duration": "5"}
        body["aspect_ratio"] = "16:9"
    return json.dumps({**body, "external_task_id": "EXTID"})


def _bits(column: str, shift: int, width: int) -> str:
    """SQL: ``width`` bits of ``column`` from bit ``shift``."""
    return f"(({column} >> {shift}) & {(1 << width) - 1})"


def _plan_sql(tasks: int) -> str:
    """SQL: the temporary table ``plan``, one row per task with every choice made (three
    levels: dice -> choices -> what follows from them; each level materialized, so that
    SQLite does not expand a column into its whole expression wherever it is used)."""
    route = "CASE" + "".join(
        f" WHEN {_bits('a', 10, 10)} < {bound} THEN '{r.value}'" for r, bound in _ROUTES
    )
    in_flight = max(1, tasks // 1000)  # the newest tasks, still running
    roll = _bits("a", 0, 10)
    status = (
        f"CASE WHEN n > {tasks - in_flight} THEN"
        " (CASE WHEN a & 1 THEN 'processing' ELSE 'submitted' END)"
        f" WHEN {roll} < 7 THEN 'processing' WHEN {roll} < 10 THEN 'submitted'"
        f" WHEN {roll} < 102 THEN 'failed' ELSE 'succeed' END"
    )
    t0 = f"({END_MS - tasks * STEP_MS} + n * {STEP_MS} + {_bits('c', 44, 12)})"
    result = "replace(r.json, 'TASKID', x.task_id)"
    return f"""
CREATE TEMP TABLE plan AS
WITH y AS MATERIALIZED (
        SELECT n, a, b, c, ext,
               printf('%d', 860000000000000000 + n * 1000 + {_bits("a", 50, 9)}) AS task_id,
               {t0} AS t0, {route} END AS route_all, {status} AS status,
               {_bits("a", 20, 6)} != 0 AS registered,
               {_bits("a", 28, 4)} < 13 AS has_processing,
               {_bits("a", 32, 2)} = 0 AS kling_submitted,
               {_bits("a", 34, 3)} = 0 AS repeated_end,
               {_bits("a", 37, 5)} = 0 AS stale_processing,
               CASE {_bits("a", 26, 2)} WHEN 2 THEN 2 WHEN 3 THEN 4 ELSE 1 END AS n_images,
               {_bits("c", 31, 4)} AS prompt_k, {_bits("c", 35, 2)} AS failure_k
        FROM dice
), x AS MATERIALIZED (
    SELECT y.*,
           CASE WHEN y.registered THEN y.route_all END AS route,
           CASE WHEN y.route_all LIKE 'images/%' THEN 'image'
                WHEN {_bits("y.b", 50, 2)} = 0 THEN 'video10' ELSE 'video5' END AS kind,
           CASE WHEN y.route_all LIKE 'images/%' THEN y.n_images ELSE 1 END AS results
    FROM y
)
SELECT x.*,
       x.status = 'processing' OR (x.has_processing AND x.status IN ('succeed', 'failed'))
           AS processing,
       x.t0 - 40 - {_bits("x.b", 40, 7)} AS created_at,
       x.t0 + 1500 + {_bits("x.c", 0, 13)} AS t_processing,
       x.t0 + 1500 + {_bits("x.c", 0, 13)}
           + CASE WHEN x.kind = 'image' THEN 8000 + {_bits("x.c", 13, 15)}
                  ELSE 60000 + {_bits("x.c", 13, 18)} END AS t_end,
       1000 + 10 * {_bits("x.b", 52, 10)} AS repeat_after,
       CASE x.status WHEN 'failed' THEN f.text ELSE '' END AS msg_end,
       CASE x.status WHEN 'succeed' THEN {result} ELSE '{{}}' END AS result_end,
       CASE WHEN x.status != 'succeed' THEN '0'
            WHEN x.kind = 'image' THEN printf('%g', 0.2 * x.results)
            ELSE CASE {_bits("x.b", 48, 2)} WHEN 0 THEN '1' WHEN 1 THEN '2'
                 WHEN 2 THEN '3.5' ELSE '7' END END AS units_end,
       CASE WHEN x.registered
            THEN replace(replace(q.json, 'PROMPT', pr.text), 'EXTID', x.ext) END
           AS request_json,
       json_object('external_task_id', x.ext) AS info_json
FROM x
JOIN prompts pr ON pr.k = x.prompt_k
JOIN failures f ON f.k = x.failure_k
JOIN request_tpl q ON q.route = x.route_all AND q.results = x.results
LEFT JOIN result_tpl r ON r.kind = x.kind AND r.results = x.results
ORDER BY x.n
"""


_TASKS = """
INSERT INTO tasks (id, task_id, external_task_id, route, request_json, task_status,
                   task_status_msg, task_result_json, task_info_json, final_unit_deduction,
                   created_at, updated_at, first_seen_at, last_received_at)
SELECT n, task_id, ext, route, request_json, status,
       CASE WHEN status IN ('succeed', 'failed') THEN msg_end
            WHEN status = 'processing' OR NOT registered THEN '' END,
       CASE WHEN status IN ('succeed', 'failed') THEN result_end
            WHEN status = 'processing' OR NOT registered THEN '{}' END,
       CASE WHEN status = 'submitted' AND registered THEN NULL ELSE info_json END,
       CASE WHEN status IN ('succeed', 'failed') THEN units_end
            WHEN status = 'processing' OR NOT registered THEN '0' END,
       created_at,
       CASE status WHEN 'submitted' THEN created_at
                   WHEN 'processing' THEN t_processing - 20 ELSE t_end - 20 END,
       t0,
       CASE WHEN status IN ('succeed', 'failed')
                THEN t_end + max(CASE WHEN repeated_end THEN repeat_after ELSE 0 END,
                                 CASE WHEN stale_processing THEN 400 ELSE 0 END)
            WHEN status = 'processing' THEN t_processing
            WHEN kling_submitted OR NOT registered THEN t0 + 30 ELSE t0 END
FROM plan ORDER BY n
"""

#: Every accepted state change, in arrival order (ids are assigned in that order).
_TRANSITIONS = """
INSERT INTO transitions (task_id, task_status, updated_at, received_at, source,
                         task_status_msg, task_result_json, final_unit_deduction)
SELECT * FROM (
    SELECT task_id, 'submitted', created_at, t0, 'registration', NULL, NULL, NULL
    FROM plan WHERE registered
    UNION ALL
    SELECT task_id, 'submitted', created_at, t0 + 30, 'callback', '', '{}', '0'
    FROM plan WHERE NOT registered
    UNION ALL
    SELECT task_id, 'processing', t_processing - 20, t_processing, 'callback', '', '{}', '0'
    FROM plan WHERE processing
    UNION ALL
    SELECT task_id, status, t_end - 20, t_end, 'callback', msg_end, result_end, units_end
    FROM plan WHERE status IN ('succeed', 'failed')
) ORDER BY 4
"""

_BODY = """json_object('task_id', task_id, 'task_status', st, 'task_status_msg', msg,
    'created_at', created_at, 'updated_at', at - 20, 'final_unit_deduction', units,
    'task_info', json(info_json), 'task_result', json(result))"""

#: Every raw callback body with its verdict, in arrival order.
_CALLBACKS = f"""
INSERT INTO callbacks (task_id, task_status, verdict, received_at, body, source)
SELECT task_id, st, verdict, at, {_BODY}, 'callback' FROM (
    SELECT *, 'submitted' AS st, 'new' AS verdict, t0 + 30 AS at, '' AS msg, '{{}}' AS result,
           '0' AS units
    FROM plan WHERE NOT registered
    UNION ALL
    SELECT *, 'submitted', 'duplicate', t0 + 30, '', '{{}}', '0'
    FROM plan WHERE registered AND kling_submitted
    UNION ALL
    SELECT *, 'processing', 'new', t_processing, '', '{{}}', '0' FROM plan WHERE processing
    UNION ALL
    SELECT *, status, 'new', t_end, msg_end, result_end, units_end
    FROM plan WHERE status IN ('succeed', 'failed')
    UNION ALL
    SELECT *, status, 'duplicate', t_end + repeat_after, msg_end, result_end, units_end
    FROM plan WHERE status IN ('succeed', 'failed') AND repeated_end
    UNION ALL
    SELECT *, 'processing', 'stale', t_end + 400, '', '{{}}', '0'
    FROM plan WHERE status IN ('succeed', 'failed') AND stale_processing
) ORDER BY at
"""

#: One outbox row per (final transition, plugin that wants it), by transition.
_DELIVERIES = f"""
WITH plugins (k, plugin, error) AS (VALUES
    (0, 'downloader', 'DownloadError: https://cdn.example.com/kling/out/TASKID-0.png answered 403'),
    (1, 'slack', 'SlackError: cannot reach Slack (ConnectError)'),
    (2, 'webhook', 'WebhookError: https://hooks.example.com/kling answered 502: bad gateway')
), due AS (
    SELECT t.id AS transition_id, t.received_at AS at, g.plugin, g.error, p.task_id, p.c,
           p.n > {{recent}} AS recent, ((p.b >> (10 * g.k)) & 1023) AS roll, g.k
    FROM transitions t
    JOIN plan p ON p.task_id = t.task_id
    JOIN plugins g ON g.plugin != 'downloader' OR t.task_status = 'succeed'
    WHERE t.task_status IN ('succeed', 'failed')
), judged AS (
    SELECT *, CASE WHEN roll < 1000 THEN 'done' WHEN roll < 1012 THEN 'dead'
                   WHEN recent AND roll < 1020 THEN 'failed' WHEN recent THEN 'pending'
                   ELSE 'done' END AS state
    FROM due
)
INSERT INTO deliveries (transition_id, plugin, state, attempts, next_attempt_at, last_error,
                        created_at, updated_at)
SELECT transition_id, plugin, state,
       CASE state WHEN 'done' THEN 1 + ({_bits("c", 37, 3)} = 0) WHEN 'dead' THEN 5
                  WHEN 'failed' THEN 1 + {_bits("c", 40, 2)} ELSE 0 END,
       CASE state WHEN 'failed' THEN {END_MS} + 60000 * (1 + {_bits("c", 40, 2)})
                  WHEN 'pending' THEN at END,
       CASE WHEN state IN ('dead', 'failed') THEN replace(error, 'TASKID', task_id) END,
       at,
       CASE state WHEN 'done' THEN at + 150 + 97 * k + {_bits("c", 44, 12)}
                  WHEN 'dead' THEN at + 3600000 WHEN 'failed' THEN {END_MS} - 30000
                  ELSE at END
FROM judged ORDER BY transition_id, k
"""

#: One saved file per result URL of every done downloader delivery.
_FILES = """
INSERT INTO files (task_id, delivery_id, url, path, bytes, sha256, saved_at)
SELECT p.task_id, d.id,
       'https://cdn.example.com/kling/out/' || p.task_id || '-' || i.i
           || CASE p.kind WHEN 'image' THEN '.png' ELSE '.mp4' END,
       '/var/lib/kling-hooks/downloads/' || p.ext || '/'
           || CASE p.kind WHEN 'image' THEN 'image-' || i.i || '.png' ELSE 'video-0.mp4' END,
       CASE p.kind WHEN 'image' THEN 400000 + ((p.c >> (3 * i.i)) & 1048575)
                   ELSE 3000000 + ((p.c >> 8) & 16777215) END,
       printf('%016x%016x%016x%016x', p.a - i.i, p.b + i.i, p.c - i.i, (p.a >> 1) + p.b),
       d.updated_at
FROM deliveries d
JOIN transitions t ON t.id = d.transition_id
JOIN plan p ON p.task_id = t.task_id
JOIN nums i ON i.i < p.results
WHERE d.plugin = 'downloader' AND d.state = 'done'
ORDER BY d.id, i.i
"""


def survey(path: Path, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """The :attr:`Built.task_ids` and :attr:`Built.filters` of a database :func:`build` made
    earlier (read-only; the sample is the same for the same ``seed`` and task count).

    Raises:
        sqlite3.Error: ``path`` is not such a database.
    """
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        (tasks,) = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return _sample(conn, tasks, seed), _filters(conn, tasks)
    finally:
        conn.close()


def _sample(conn: sqlite3.Connection, tasks: int, seed: int) -> list[str]:
    """Up to :data:`SAMPLE` task_ids, a random sample in random order."""
    ids = random.Random(seed + 1).sample(range(1, tasks + 1), min(SAMPLE, tasks))
    found = dict(
        conn.execute(
            f"SELECT id, task_id FROM tasks WHERE id IN ({','.join('?' * len(ids))})", ids
        ).fetchall()
    )
    return [found[i] for i in ids]


def _filters(conn: sqlite3.Connection, tasks: int) -> list[str]:
    """The ``GET /tasks`` query strings that match at least a full page (50 tasks)."""
    cursor = tasks // 2
    candidates: list[dict[str, str]] = [
        {"task_status": "succeed"},
        {"task_status": "failed"},
        {"task_status": "processing"},
        {"route": "videos/text2video"},
        {"route": "images/generations", "task_status": "succeed"},
        {"route": "videos/image2video", "task_status": "failed"},
        {"route": "images/multi-image2image", "task_status": "failed"},
        {"route": "videos/multi-image2video", "task_status": "succeed"},
        {"task_status": "failed", "cursor": str(cursor)},
        {"route": "videos/text2video", "task_status": "succeed", "cursor": str(cursor)},
    ]
    kept = []
    for query in candidates:
        where = " AND ".join("id < ?" if name == "cursor" else f"{name} = ?" for name in query)
        (count,) = conn.execute(
            f"SELECT COUNT(*) FROM tasks WHERE {where}",
            [int(v) if k == "cursor" else v for k, v in query.items()],
        ).fetchone()
        if count >= 50:
            kept.append(urllib.parse.urlencode({**query, "limit": "50"}, safe="/"))
    return kept


def main(argv: list[str] | None = None) -> int:
    """``python bench/bulkdb.py PATH [--tasks N] [--seed S]``: build, then print the time,
    the file's size and the sample's and filters' sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the database file to write (replaced)")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="how many tasks")
    parser.add_argument("--seed", type=int, default=0, help="chooses every random value")
    args = parser.parse_args(argv)
    built = build(args.path, args.tasks, seed=args.seed)
    size = args.path.stat().st_size
    print(
        f"{built.path}: {built.tasks:,} tasks in {built.seconds:.1f} s, "
        f"{size / 2**20:,.0f} MiB ({size / built.tasks:,.0f} bytes per task); "
        f"{len(built.task_ids):,} sample task_ids, {len(built.filters)} filters"
    )
    for query in built.filters:
        print(f"  GET /tasks?{query}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
