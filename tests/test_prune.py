"""Pruning: old raw callbacks and done deliveries go, batch by batch through the writer; tasks,
transitions, saved files, dead letters and the deliveries that files name stay; the space is
given back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from receiver.models import Pruned
from receiver.plugins import Event, PermanentError, SavedFile
from receiver.pruning import prune
from receiver.store.retention import Checkpoint, FullVacuum
from submitter.tokens import CallbackTokens
from tests.conftest import (
    API_TOKEN,
    SECRET,
    Outcomes,
    Receiver,
    RecordingPlugin,
    make_settings,
    postgres_url,
    rows,
    serve,
    start_receiver,
    task_body,
)
from tests.test_cli import cli_env, kling_hooks

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
DAY_MS = 86_400_000
T0 = 1_790_000_000_000
FILE = SavedFile("https://cdn.example/a.png", "/srv/a.png", 3, "ab" * 32)


class Clock:
    """The receiver's wall clock, moved by the test."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


class Keeper(RecordingPlugin):
    """Saves a file for each succeed event, refuses task ``dead`` for good, else succeeds."""

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        await super().handle(event)
        if event.task_id == "dead":
            raise PermanentError("refused for good")
        return [FILE] if event.task_status == "succeed" else None


def counts(db: Path) -> dict[str, int]:
    tables = ("tasks", "transitions", "callbacks", "deliveries", "files")
    return {t: rows(db, f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in tables}


async def traffic(r: Receiver, outcomes: Outcomes, task_ids: Iterable[str], ended: int) -> None:
    """Callbacks (processing, succeed, a duplicate) for each task; waits until ``ended``
    deliveries in all are done or dead."""
    for task_id in task_ids:
        for status in ("processing", "succeed", "succeed"):
            answer = await r.post_callback(f"ext-{task_id}", task_body(task_id, status))
            assert answer.status_code == 200, answer.text
    await outcomes.ended(ended)


async def post_prune(r: Receiver, **body: object) -> Pruned:
    answer = await r.http.post(f"{r.url}/prune", json=body, headers=AUTH)
    assert answer.status_code == 200, answer.text
    return Pruned.model_validate_json(answer.content)


async def test_prune_removes_old_callbacks_and_done_deliveries_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    settings = make_settings(tmp_path)
    db = settings.kling_hooks_db
    async with start_receiver(settings, [Keeper()], clock_ms=clock) as r:
        outcomes = Outcomes(r)
        await traffic(r, outcomes, ["old", "dead"], ended=4)  # 2 transitions each
        clock.now_ms = T0 + 10 * DAY_MS
        await traffic(r, outcomes, ["new"], ended=6)
        before = counts(db)
        assert before == {
            "tasks": 3,
            "transitions": 6,
            "callbacks": 9,
            "deliveries": 6,
            "files": 2,  # old's and new's succeed
        }

        dry = await post_prune(r, older_than_ms=5 * DAY_MS, dry_run=True)
        assert counts(db) == before  # a dry run changes nothing
        done = await post_prune(r, older_than_ms=5 * DAY_MS)

        for answer in (dry, done):
            assert answer.cutoff_ms == T0 + 5 * DAY_MS
            # old: 3 callbacks, its processing delivery (its succeed one names a file);
            # dead: 3 callbacks, its 2 dead deliveries stay
            assert (answer.callbacks, answer.deliveries) == (6, 1)
            assert (answer.dead_kept, answer.kept_for_files) == (2, 1)
        assert dry.dry_run and dry.batches == 0
        assert done.batches == 2  # one window per table
        assert counts(db) == {**before, "callbacks": 3, "deliveries": 5}
        assert {r_["task_id"] for r_ in rows(db, "SELECT task_id FROM callbacks")} == {"new"}
        dangling = (
            "SELECT COUNT(*) AS n FROM files WHERE delivery_id NOT IN (SELECT id FROM deliveries)"
        )
        assert rows(db, dangling)[0]["n"] == 0

        old = (await r.get_task("old")).json()
        assert [t["task_status"] for t in old["transitions"]] == ["processing", "succeed"]
        assert old["task_status"] == "succeed" and old["files"] == [FILE.to_json()]
        assert [d["task_status"] for d in old["deliveries"]] == ["succeed"]
        assert old["callbacks"] == {}
        dead = (await r.get_task("dead")).json()
        assert [d["state"] for d in dead["deliveries"]] == ["dead", "dead"]


async def test_prune_in_small_windows_takes_one_batch_per_window_with_the_same_result(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    settings = make_settings(tmp_path)
    async with start_receiver(settings, [RecordingPlugin()], clock_ms=clock) as r:
        outcomes = Outcomes(r)
        await traffic(r, outcomes, [f"t{n}" for n in range(5)], ended=10)
        clock.now_ms = T0 + 2 * DAY_MS
        await traffic(r, outcomes, ["late"], ended=12)
        svc = r.services
        answer = await prune(svc.writer, svc.reader, cutoff_ms=T0 + DAY_MS, window_rows=4)
    # 18 callbacks (15 old) in windows of 4: the 4th window ends with a new one, the last;
    # 12 deliveries (10 old): 3 windows
    assert (answer.callbacks, answer.deliveries) == (15, 10)
    assert answer.batches == 4 + 3
    assert counts(settings.kling_hooks_db)["callbacks"] == 3
    assert answer.longest_batch_ms > 0


@pytest.mark.sqlite_only  # SQLite's vacuum and checkpoints (Postgres: autovacuum)
async def test_vacuum_gives_the_space_back_incrementally_on_a_new_database(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    settings = make_settings(tmp_path)
    db = settings.kling_hooks_db
    async with start_receiver(settings, clock_ms=clock) as r:
        big = {"task_status_msg": "x" * 3000}
        for n in range(300):
            answer = await r.post_callback(f"ext-{n}", task_body(str(n), "processing", **big))
            assert answer.status_code == 200
        clock.now_ms = T0 + DAY_MS
        answer = await post_prune(r, older_than_ms=1, vacuum=True)
    assert answer.callbacks == 300 and answer.vacuum == "incremental"
    assert answer.free_bytes_after == 0
    assert answer.size_bytes_after < answer.size_bytes_before - 300 * 3000
    assert db.stat().st_size == answer.size_bytes_after  # checkpointed: the file shrank
    assert rows(db, "PRAGMA auto_vacuum")[0][0] == 2  # incremental


@pytest.mark.sqlite_only  # SQLite's vacuum and checkpoints (Postgres: autovacuum)
async def test_vacuum_turns_a_database_made_before_schema_4_incremental(tmp_path: Path) -> None:
    db = tmp_path / "kling-hooks.db"
    with sqlite3.connect(db) as conn:  # schema 2, auto_vacuum none, as its release made it
        conn.executescript((Path(__file__).parent / "fixtures" / "schema2.sql").read_text())
    assert rows(db, "PRAGMA auto_vacuum")[0][0] == 0
    async with start_receiver(make_settings(tmp_path)) as r:
        first = await post_prune(r, older_than_ms=1, vacuum=True)
        second = await post_prune(r, older_than_ms=1, vacuum=True)
        assert (await r.get_task("fx-task-1")).json()["task_status"] == "succeed"
    assert (first.vacuum, second.vacuum) == ("full", "incremental")
    assert first.callbacks == 7
    assert rows(db, "PRAGMA auto_vacuum")[0][0] == 2


async def test_prune_command_defaults_to_the_retention_setting_and_prints_the_counts(
    tmp_path: Path,
) -> None:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n')
    async with serve(config, tmp_path) as server:
        env = cli_env(
            kling_hooks_api_url=server.url,
            kling_hooks_api_token=API_TOKEN,
            kling_hooks_retention="30d",
        )
        run = await kling_hooks(
            "prune", "--dry-run", "--config", str(config), env=env, cwd=tmp_path
        )
        assert run.code == 0, run.err
        assert run.out.startswith("would remove: 0 callbacks, 0 done deliveries (older than ")
        assert "kept: 0 old dead deliveries" in run.out
        json_run = await kling_hooks(
            "prune", "--json", "--older-than", "1s", "--vacuum", env=env, cwd=tmp_path
        )
        assert json_run.code == 0, json_run.err
        answer = Pruned.model_validate_json(json_run.out)
        # SQLite gives the pages back itself; Postgres's autovacuum does, so prune runs none
        assert answer.vacuum == ("none" if postgres_url() else "incremental")
        assert not answer.dry_run
        bad = await kling_hooks("prune", "--older-than", "0s", env=env, cwd=tmp_path)
    event = next(e for e in server.events if e.get("event") == "pruned")
    assert event["dry_run"] is True
    assert answer.cutoff_ms - event["cutoff_ms"] >= 30 * DAY_MS - 1000  # 1s after 30d
    assert bad.code == 2 and "--older-than" in bad.err


async def test_prune_while_callbacks_flow_loses_no_acknowledged_callback(tmp_path: Path) -> None:
    """Eight senders post callbacks while prune removes 120 old rows in windows of 5 (so
    its batches and the callbacks' commits interleave): every callback acknowledged with 200
    is stored, with its transition, and only the old rows went."""
    clock = Clock(T0)
    settings = make_settings(tmp_path)
    db = settings.kling_hooks_db
    async with start_receiver(settings, clock_ms=clock) as r:
        for n in range(40):
            for status in ("processing", "succeed", "succeed"):
                await r.post_callback(f"ext-old{n}", task_body(f"old{n}", status))
        clock.now_ms = T0 + 10 * DAY_MS
        acknowledged: list[str] = []

        async def sender(k: int) -> None:
            for n in range(10):
                task_id = f"new{k}-{n}"
                answer = await r.post_callback(f"ext-{task_id}", task_body(task_id, "succeed"))
                if answer.status_code == 200:
                    acknowledged.append(task_id)

        svc = r.services
        senders = [asyncio.create_task(sender(k)) for k in range(8)]
        pruned = await prune(svc.writer, svc.reader, cutoff_ms=T0 + DAY_MS, window_rows=5)
        await asyncio.gather(*senders)
    assert pruned.callbacks == 120 and pruned.batches >= 24
    assert len(acknowledged) == 80  # nothing refused: prune never blocks a callback for long
    stored = {x["task_id"] for x in rows(db, "SELECT task_id FROM callbacks")}
    assert stored == set(acknowledged)
    new_transitions = rows(db, "SELECT task_id FROM transitions WHERE task_id LIKE 'new%'")
    assert {x["task_id"] for x in new_transitions} == set(acknowledged)
    assert counts(db)["transitions"] == 80 + 2 * 40  # the old tasks' two each stay too


@pytest.mark.sqlite_only  # SQLite's vacuum and checkpoints (Postgres: autovacuum)
async def test_checkpoints_and_a_full_vacuum_do_not_wait_for_a_reader_holding_a_snapshot(
    tmp_path: Path,
) -> None:
    """A reader in a read transaction (as ``kling-hooks backup`` holds one) does not make the
    writer wait its busy timeout (30 s here): the full VACUUM and the checkpoint end, the
    callback queued behind them is answered, and the WAL the reader needed is truncated by the
    first checkpoint after it let go."""
    settings = make_settings(tmp_path, kling_hooks_busy_timeout_ms=30_000)
    db = settings.kling_hooks_db
    async with start_receiver(settings) as r:
        for n in range(20):
            assert (await r.post_callback(f"ext-{n}", task_body(str(n), "succeed"))).is_success
        svc = r.services
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM callbacks").fetchone() == (20,)
            vacuum = asyncio.create_task(svc.writer.submit(FullVacuum()))
            answer = await asyncio.wait_for(
                r.post_callback("ext-late", task_body("late", "succeed")), 10
            )
            assert answer.status_code == 200, answer.text
            assert vacuum.done()  # the writer ran it first, then the callback
            await vacuum
            truncated_with_reader = await asyncio.wait_for(svc.writer.submit(Checkpoint()), 10)
            assert reader.execute("SELECT COUNT(*) FROM callbacks").fetchone() == (20,)
        finally:
            reader.close()
        truncated_after = await svc.writer.submit(Checkpoint())
        assert (await r.get_task("late")).json()["task_status"] == "succeed"
    assert (truncated_with_reader, truncated_after) == (False, True)
    assert rows(db, "PRAGMA auto_vacuum")[0][0] == 2


@dataclass(frozen=True)
class Pragma:
    """A ConnectionOp: ``PRAGMA {statement}`` on the writer's own connection; its value."""

    statement: str

    def run_alone(self, conn: sqlite3.Connection) -> int:
        row = conn.execute(f"PRAGMA {self.statement}").fetchone()
        return int(row[0]) if row else 0


@pytest.mark.sqlite_only  # SQLite's vacuum and checkpoints (Postgres: autovacuum)
async def test_a_full_disk_during_the_vacuum_answers_503_and_the_receiver_keeps_serving(
    tmp_path: Path,
) -> None:
    """``VACUUM`` of a database made before schema 4 adds pointer-map pages; with the writer's
    connection allowed no page more than the file has (``max_page_count``, SQLite's own
    "database or disk is full"), the rewrite fails: ``POST /prune`` answers 503 with
    ``Retry-After``, not 500, nothing is lost, and once there is room it works."""
    db = tmp_path / "kling-hooks.db"
    with sqlite3.connect(db) as conn:  # schema 2, auto_vacuum none
        conn.executescript((Path(__file__).parent / "fixtures" / "schema2.sql").read_text())
    async with start_receiver(make_settings(tmp_path)) as r:
        writer = r.services.writer
        pages = await writer.submit(Pragma("page_count"))
        await writer.submit(Pragma(f"max_page_count = {pages}"))
        keep = 100 * 365 * DAY_MS  # removes nothing: the vacuum alone needs more pages
        full = await r.http.post(
            f"{r.url}/prune", json={"older_than_ms": keep, "vacuum": True}, headers=AUTH
        )
        await writer.submit(Pragma("max_page_count = 1073741823"))  # room again
        after = await r.post_callback("ext-after", task_body("after", "succeed"))
        done = await post_prune(r, older_than_ms=keep, vacuum=True)
        fixture_task = (await r.get_task("fx-task-1")).json()
    assert (full.status_code, full.json()) == (
        503,
        {"ok": False, "error": "database unavailable, retry later"},
    )
    retry_after_s = make_settings(tmp_path).kling_hooks_retry_after_s
    assert full.headers["retry-after"] == str(retry_after_s)
    assert after.status_code == 200 and done.vacuum == "full"
    assert fixture_task["task_status"] == "succeed"
    assert [
        x["task_id"] for x in rows(db, "SELECT task_id FROM tasks WHERE task_id = 'after'")
    ] == ["after"]


@pytest.mark.sqlite_only  # SQLite's trigger and write lock stand in for the trouble
async def test_an_sql_error_inside_a_prune_batch_answers_503_and_undoes_only_that_batch(
    tmp_path: Path,
) -> None:
    """A statement of one prune batch fails in SQLite (here a trigger aborts the DELETE):
    that batch is undone, ``POST /prune`` answers 503 rather than 500, callbacks are still
    committed, and the next prune, with the trouble gone, removes the old rows."""
    clock = Clock(T0)
    settings = make_settings(tmp_path)
    db = settings.kling_hooks_db
    async with start_receiver(settings, clock_ms=clock) as r:
        for n in range(3):
            await r.post_callback(f"ext-old{n}", task_body(f"old{n}", "succeed"))
        clock.now_ms = T0 + 10 * DAY_MS
        with sqlite3.connect(db) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE DELETE ON callbacks"
                " BEGIN SELECT RAISE(ABORT, 'simulated I/O trouble'); END"
            )
        failed = await r.http.post(f"{r.url}/prune", json={"older_than_ms": DAY_MS}, headers=AUTH)
        during = await r.post_callback("ext-new", task_body("new", "succeed"))
        kept = counts(db)["callbacks"]
        with sqlite3.connect(db) as other:
            other.execute("DROP TRIGGER refuse")
        done = await post_prune(r, older_than_ms=DAY_MS)
    assert failed.status_code == 503 and failed.json()["ok"] is False
    assert "retry-after" in failed.headers
    assert during.status_code == 200
    assert kept == 4  # nothing of the failed batch went
    assert done.callbacks == 3
    assert [x["task_id"] for x in rows(db, "SELECT task_id FROM callbacks")] == ["new"]


@pytest.mark.sqlite_only  # SQLite's trigger and write lock stand in for the trouble
async def test_a_stop_ends_a_long_prune_at_its_next_batch_and_loses_no_acknowledged_callback(
    tmp_path: Path,
) -> None:
    """``serve`` gets SIGTERM while ``POST /prune`` has 5,000 old rows to remove in windows of
    500 and its first batch waits for a write lock another connection holds. The stop tells
    the writer first, so once the lock goes the prune ends after that batch: it answers
    ``complete: false`` with what it removed, the process exits, the rest stays for the next
    prune, and every callback answered 200 is stored."""
    config = tmp_path / "kling-hooks.toml"
    db = tmp_path / "kling-hooks.db"
    config.write_text(f'kling_hooks_db = "{db}"\n')
    env = {"KLING_HOOKS_BUSY_TIMEOUT_MS": "60000"}
    acked: list[str] = []
    async with serve(config, tmp_path, env=env) as server, httpx.AsyncClient(timeout=60) as http:
        with sqlite3.connect(db) as conn:  # old raw callbacks, received at 1 ms
            conn.executemany(
                "INSERT INTO callbacks (task_id, task_status, verdict, received_at, body)"
                " VALUES (?, 'succeed', 'new', 1, '{}')",
                [(f"old{n}",) for n in range(5000)],
            )
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer's next transaction waits for it

        async def post(task_id: str) -> None:
            url = CallbackTokens([SECRET]).callback_url(server.url, f"ext-{task_id}")
            with contextlib.suppress(httpx.HTTPError):
                answer = await http.post(url, json=task_body(task_id, "succeed"))
                if answer.status_code == 200:
                    acked.append(task_id)

        pruning = asyncio.create_task(
            http.post(f"{server.url}/prune", json={"older_than_ms": 1000}, headers=AUTH)
        )
        await server.until(lambda e: e.get("event") == "prune_started")
        callback = asyncio.create_task(post("during"))
        server.proc.send_signal(signal.SIGTERM)
        await server.until(lambda e: e.get("event") == "receiver_stopping")
        blocker.rollback()
        blocker.close()
        answer = await pruning
        await callback
        exit_code = await server.proc.wait()
    assert answer.status_code == 200, answer.text
    pruned = Pruned.model_validate_json(answer.content)
    assert pruned.complete is False
    assert pruned.callbacks == 500 * pruned.batches < 5000  # whole batches, then it stopped
    assert exit_code == -signal.SIGTERM
    left = {x["task_id"] for x in rows(db, "SELECT task_id FROM callbacks")}
    assert len(left - set(acked)) == 5000 - pruned.callbacks  # the rest waits for the next prune
    assert set(acked) <= left
