"""``kling-hooks migrate-store``: a SQLite database made by the real receiver (``kling-hooks
demo``, the bulk builder of bench/), copied by the installed command into a real Postgres
database, compared row for row; interrupted with SIGKILL and resumed; refused, with one line
and exit 1, whenever the copy could not be sound."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.bulkdb import build
from receiver import store
from receiver.models import Verdict
from receiver.store import DatabaseLock
from receiver.store.postgres import Replica, connect, migrate
from receiver.store.postgres.copy import COPY_LOCK, SOURCE_KEY, TABLES
from receiver.transitions import Registration
from receiver.writer import Writer
from submitter.protocol import TaskStatus
from submitter.tokens import new_secret
from tests.test_cli import KLING_HOOKS, cli_env, closed_port_url
from tests.test_pg_writes import callback

TREE = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database ``kling-hooks demo`` made (tasks, transitions, callbacks, done deliveries
    and saved files), with the two secrets a receiver keeps in ``meta`` when the
    environment does not set them."""
    folder = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [str(KLING_HOOKS), "demo", "--dir", str(folder)],
        env=cli_env(),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    db = folder / "demo.db"

    async def secrets() -> None:
        conn = await store.connect(db)
        try:
            for key in ("callback_secret", "api_token"):
                await store.get_or_create_meta(conn, key, new_secret)
        finally:
            await conn.close()

    asyncio.run(secrets())
    return db


@pytest.fixture
def source(demo_source: Path, tmp_path: Path) -> Path:
    """A copy of the demo database of this test's own."""
    return _clone(demo_source, tmp_path / "kling-hooks.db")


def _clone(db: Path, to: Path) -> Path:
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)
    return to


def migrate_store(source: Path | str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The installed ``kling-hooks migrate-store --from sqlite:SOURCE --to URL``."""
    return subprocess.run(
        [str(KLING_HOOKS), "migrate-store", "--from", f"sqlite:{source}", "--to", url, *extra],
        env=cli_env(),
        cwd=TREE,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sqlite_rows(db: Path, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        cur = conn.execute(f"SELECT * FROM {table} ORDER BY {'key' if table == 'meta' else 'id'}")
        return [d[0] for d in cur.description], cur.fetchall()


def pg_rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def assert_same(db: Path, url: str) -> dict[str, int]:
    """Every row of every table equal, column by column, in both databases; ``meta`` also
    holds the source's marker; ``tasks.status_rank`` is the rank of ``task_status``. Returns
    the row count per table."""
    counts = {}
    columns, meta = sqlite_rows(db, "meta")
    got = pg_rows(url, "SELECT key, value FROM meta WHERE key != %s ORDER BY key", SOURCE_KEY)
    assert got == meta and {"callback_secret", "api_token"} <= {k for k, _ in meta}
    for table in TABLES:
        columns, expected = sqlite_rows(db, table)
        got = pg_rows(url, f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
        assert got == expected, table
        counts[table] = len(expected)
    ranks = pg_rows(url, "SELECT task_status, status_rank FROM tasks")
    assert all(TaskStatus(s).rank == r for s, r in ranks)
    (marker,) = pg_rows(url, "SELECT value FROM meta WHERE key = %s", SOURCE_KEY)[0]
    assert json.loads(marker)["source"] == str(db.resolve())
    return counts


def test_the_copy_holds_every_row_of_every_table_and_new_rows_get_fresh_ids(
    source: Path, pg_url: str
) -> None:
    run = migrate_store(source, pg_url)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    counts = assert_same(source, pg_url)
    assert all(counts.values()), counts  # the demo fills every table
    for table in TABLES:
        assert f"{table}: {counts[table]:,} rows copied, 0 there already" in run.stdout
    total = sum(counts.values()) + 2  # and the two meta rows
    assert run.stdout.splitlines()[-1].startswith(f"copied {total:,} rows in ")
    # The identities continue past the copied ids: a new row of each table gets a fresh id.
    top = {t: pg_rows(pg_url, f"SELECT MAX(id) FROM {t}")[0][0] for t in TABLES}
    with psycopg.connect(pg_url) as conn:
        task = conn.execute(
            "INSERT INTO tasks (task_id, external_task_id, task_status, status_rank,"
            " first_seen_at, last_received_at) VALUES ('new', 'ext-new', 'submitted', 0, 1, 1)"
            " RETURNING id"
        ).fetchone()
        transition = conn.execute(
            "INSERT INTO transitions (task_id, task_status, received_at, source)"
            " VALUES ('new', 'submitted', 1, 'registration') RETURNING id"
        ).fetchone()
        assert task and transition
        fresh = {"tasks": task[0], "transitions": transition[0]}
        fresh["callbacks"] = conn.execute(
            "INSERT INTO callbacks (task_id, task_status, verdict, received_at, body)"
            " VALUES ('new', 'submitted', 'new', 1, '{}') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        fresh["deliveries"] = conn.execute(
            "INSERT INTO deliveries (transition_id, plugin, state, created_at, updated_at)"
            " VALUES (%s, 'slack', 'pending', 1, 1) RETURNING id",
            (transition[0],),
        ).fetchone()[0]  # type: ignore[index]
        fresh["files"] = conn.execute(
            "INSERT INTO files (task_id, delivery_id, url, path, bytes, sha256, saved_at)"
            " VALUES ('new', %s, 'https://x/new.png', 'new.png', 1, '00', 1) RETURNING id",
            (fresh["deliveries"],),
        ).fetchone()[0]  # type: ignore[index]
    assert fresh == {t: top[t] + 1 for t in TABLES}


async def test_a_postgres_receiver_on_the_copy_writes_after_the_copied_ids(
    source: Path, pg_url: str
) -> None:
    assert migrate_store(source, pg_url).returncode == 0
    top = {t: pg_rows(pg_url, f"SELECT MAX(id) FROM {t}")[0][0] for t in TABLES}
    writer = await Writer.open_postgres(
        pg_url, replica=Replica("r0"), router=lambda status, route: ["slack"]
    )
    writer.start()
    try:
        await writer.submit(callback("t-after-copy", "succeed", at_ms=2))
    finally:
        await writer.close()
    for table in ("tasks", "transitions", "callbacks", "deliveries"):
        new = pg_rows(pg_url, f"SELECT id FROM {table} WHERE id > %s", top[table])
        assert new == [(top[table] + 1,)], table


def test_a_second_run_copies_nothing_and_says_so(source: Path, pg_url: str) -> None:
    assert migrate_store(source, pg_url).returncode == 0
    again = migrate_store(source, pg_url)
    assert again.returncode == 0, again.stderr
    last = again.stdout.splitlines()[-1]
    assert last.startswith("nothing to copy: the Postgres database holds every row already")
    assert "rows copied, 0 there already" not in again.stdout
    assert_same(source, pg_url)


@pytest.fixture
def bulk_source(tmp_path: Path) -> Path:
    """3,000 tasks from bench/bulkdb.py (transitions, callbacks, deliveries and files too),
    with the receiver's two secrets in ``meta``."""
    db = build(tmp_path / "bulk.db", 3000, seed=2).path
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("callback_secret", new_secret()), ("api_token", new_secret())],
        )
    return db


def test_a_copy_killed_mid_table_resumes_where_it_ended_without_duplicates(
    bulk_source: Path, pg_url: str
) -> None:
    command = [str(KLING_HOOKS), "migrate-store", "--from", f"sqlite:{bulk_source}"]
    command += ["--to", pg_url, "--batch-rows", "500", "--pause-ms", "200"]
    with subprocess.Popen(
        command, env=cli_env(), cwd=TREE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first batch of transitions is committed
            if line.startswith("  transitions: "):
                break
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    (total,) = sqlite3.connect(bulk_source).execute("SELECT COUNT(*) FROM transitions").fetchone()
    (copied,) = pg_rows(pg_url, "SELECT COUNT(*) FROM transitions")[0]
    assert 500 <= copied < total  # mid-table, whole batches only
    assert pg_rows(pg_url, "SELECT COUNT(*) FROM callbacks") == [(0,)]

    resumed = migrate_store(bulk_source, pg_url, "--batch-rows", "500")
    assert resumed.returncode == 0, resumed.stderr
    assert f"transitions: {total - copied:,} rows copied, {copied:,} there already" in (
        resumed.stdout
    )
    assert "tasks: 0 rows copied, 3,000 there already" in resumed.stdout
    assert_same(bulk_source, pg_url)
    assert migrate_store(bulk_source, pg_url).stdout.splitlines()[-1].startswith("nothing to copy")


def test_a_copy_whose_connection_is_lost_stops_with_one_line_and_resumes(
    bulk_source: Path, pg_url: str
) -> None:
    command = [str(KLING_HOOKS), "migrate-store", "--from", f"sqlite:{bulk_source}"]
    command += ["--to", pg_url, "--batch-rows", "500", "--pause-ms", "300"]
    with subprocess.Popen(
        command, env=cli_env(), cwd=TREE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if line.startswith("  tasks: "):
                break
        ended = pg_rows(  # the server ends the copy's session (a restart, a failover)
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert ended == [(True,)]
        err = proc.stderr.read()
    assert proc.returncode == 1 and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: the copy stopped: ")
    assert err.rstrip().endswith("run migrate-store again to go on")
    assert 500 <= pg_rows(pg_url, "SELECT COUNT(*) FROM tasks")[0][0] < 3000
    resumed = migrate_store(bulk_source, pg_url)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(bulk_source, pg_url)


# -- refusals: one line on stderr, exit 1, nothing copied ------------------------------------


def assert_refused(run: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_missing_sqlite_file_is_refused(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "none.db"
    assert_refused(migrate_store(missing, pg_url), f"{missing} does not exist")
    assert not missing.exists() and not (tmp_path / "none.db.lock").exists()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, pg_url: str) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a database\n" * 100)
    assert_refused(migrate_store(other, pg_url), "is not a kling-hooks database")


def test_a_sqlite_database_of_another_program_is_refused(tmp_path: Path, pg_url: str) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    assert_refused(
        migrate_store(other, pg_url), "is not a kling-hooks database", "no table meta, tasks"
    )


def test_an_older_schema_is_refused_saying_how_to_migrate_it(tmp_path: Path, pg_url: str) -> None:
    old = tmp_path / "old.db"
    fixture = Path(TREE) / "tests" / "fixtures" / "schema4.sql"
    with sqlite3.connect(old) as conn:
        conn.executescript(fixture.read_text())
    (version,) = sqlite3.connect(old).execute("PRAGMA user_version").fetchone()
    assert version == 4
    assert_refused(
        migrate_store(old, pg_url),
        "schema version 4, older than this kling-hooks copies (6)",
        f"kling-hooks serve --db {old}",
    )
    assert pg_rows(pg_url, "SELECT to_regclass('tasks')") == [(None,)]


def test_a_newer_schema_is_refused(source: Path, pg_url: str) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA user_version = 7")
    assert_refused(migrate_store(source, pg_url), "schema version 7, newer than")


def test_an_unreachable_postgres_is_refused(source: Path) -> None:
    url = closed_port_url().replace("http://", "postgresql://postgres:hunter2@") + "/kh"
    run = migrate_store(source, url)
    assert_refused(run, "cannot connect to Postgres at postgresql://postgres@127.0.0.1:")
    assert "hunter2" not in run.stderr


def test_a_postgres_role_that_may_not_create_tables_is_refused(source: Path, pg_url: str) -> None:
    role = f"reader_{os.getpid()}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")  # Postgres 15: no CREATE on schema public
    try:
        run = migrate_store(source, pg_url.replace("postgres@", f"{role}@", 1))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")
    assert_refused(run, "cannot migrate the Postgres schema at", "permission denied")


def test_a_running_receiver_on_the_sqlite_file_is_refused(source: Path, pg_url: str) -> None:
    with DatabaseLock(source):  # what `kling-hooks serve` holds while it runs
        run = migrate_store(source, pg_url)
    assert_refused(run, f"{source} is in use by process {os.getpid()}", "stop the receiver")
    assert "KLING_HOOKS_DB" not in run.stderr  # serve's advice is not this command's
    assert pg_rows(pg_url, "SELECT to_regclass('tasks')") == [(None,)]  # not even migrated


async def test_a_postgres_database_a_receiver_has_used_is_refused(
    source: Path, pg_url: str
) -> None:
    writer = await Writer.open_postgres(pg_url, replica=Replica("r0"))
    writer.start()
    try:
        await writer.submit(callback("t-postgres", "processing"))
    finally:
        await writer.close()
    run = migrate_store(source, pg_url)
    assert_refused(run, "already holds rows that were not copied by migrate-store", "tasks 1")
    assert pg_rows(pg_url, "SELECT task_id FROM tasks") == [("t-postgres",)]


def test_a_copy_of_another_database_is_refused(
    source: Path, bulk_source: Path, pg_url: str
) -> None:
    assert migrate_store(bulk_source, pg_url, "--batch-rows", "100000").returncode == 0
    assert_refused(
        migrate_store(source, pg_url), f"holds a copy of {bulk_source}", f"{source} differs"
    )


async def test_a_source_written_to_since_the_copy_began_is_refused(
    source: Path, pg_url: str
) -> None:
    assert migrate_store(source, pg_url).returncode == 0
    writer = await Writer.open(source)
    writer.start()
    try:
        await writer.submit(callback("t-late", "succeed", at_ms=3))
    finally:
        await writer.close()
    assert_refused(migrate_store(source, pg_url), "differs from it now", "empty database")


async def test_a_source_row_rewritten_in_place_since_the_copy_is_refused(
    source: Path, pg_url: str
) -> None:
    """A late registration fills in a copied task's route and request: no row is added."""
    writer = await Writer.open(source)
    writer.start()
    try:
        await writer.submit(callback("t-early", "processing", "ext-early", at_ms=3))
        assert migrate_store(source, pg_url).returncode == 0
        counts = {t: sqlite_rows(source, t)[1] for t in TABLES}
        late = Registration(
            "t-early",
            "ext-early",
            "videos/text2video",
            '{"prompt": "a cat"}',
            TaskStatus.SUBMITTED,
            1,
            4,
        )
        assert await writer.submit(late) == Verdict.STALE
    finally:
        await writer.close()
    assert {t: len(sqlite_rows(source, t)[1]) for t in TABLES} == {
        t: len(rows) for t, rows in counts.items()
    }
    assert_refused(migrate_store(source, pg_url), "differs from it now")


async def test_a_copy_a_receiver_wrote_to_afterwards_is_refused(source: Path, pg_url: str) -> None:
    assert migrate_store(source, pg_url).returncode == 0
    writer = await Writer.open_postgres(pg_url, replica=Replica("r0"))
    writer.start()
    try:
        await writer.submit(callback("t-on-postgres", "processing"))
    finally:
        await writer.close()
    assert_refused(
        migrate_store(source, pg_url), "tasks holds rows that are not in", "a receiver has"
    )


def test_a_concurrent_copy_into_the_same_database_is_refused(source: Path, pg_url: str) -> None:
    conn = connect(pg_url)
    try:
        migrate(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (COPY_LOCK,))
        run = migrate_store(source, pg_url)
    finally:
        conn.close()
    assert_refused(run, "another migrate-store is copying into this Postgres database")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "/x.db", "--to", "postgresql://127.0.0.1/x"], "is not sqlite:PATH"),
        (["--from", "sqlite:/x.db", "--to", "mysql://127.0.0.1/x"], "is not a postgresql://"),
    ],
)
def test_malformed_options_are_usage_errors(args: list[str], message: str) -> None:
    run = subprocess.run(
        [str(KLING_HOOKS), "migrate-store", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and message in run.stderr
