"""Upgrades in place: databases made by the releases of schema 1, 2 and 4 (tests/fixtures/) are
migrated by the current ``serve``, keep every row, and read through the status API; a database
newer than this program is refused with one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.store import SCHEMA_VERSION
from submitter.tokens import CallbackTokens
from tests.conftest import API_TOKEN, SECRET, rows, serve, task_body
from tests.test_cli import cli_env, kling_hooks

FIXTURES = Path(__file__).parent / "fixtures"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def load_dump(schema: int, tmp_path: Path) -> tuple[Path, Path]:
    """The fixture of ``schema`` as a database file, and a config naming it."""
    db = tmp_path / "kling-hooks.db"
    with sqlite3.connect(db) as conn:
        conn.executescript((FIXTURES / f"schema{schema}.sql").read_text())
    config = tmp_path / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{db}"\n')
    return db, config


def table_rows(db: Path) -> dict[str, list[dict[str, Any]]]:
    tables = [r["name"] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: [dict(r) for r in rows(db, f"SELECT * FROM {t} ORDER BY rowid")] for t in tables}


@pytest.mark.parametrize("schema", [1, 2, 4])
async def test_a_database_of_an_old_schema_is_upgraded_in_place_keeping_every_row(
    schema: int, tmp_path: Path
) -> None:
    db, config = load_dump(schema, tmp_path)
    assert rows(db, "PRAGMA user_version")[0][0] == schema
    old = table_rows(db)
    async with serve(config, tmp_path) as server, httpx.AsyncClient(timeout=10) as http:
        task = (await http.get(f"{server.url}/tasks/fx-task-1", headers=AUTH)).json()
        listed = (await http.get(f"{server.url}/tasks", headers=AUTH)).json()["tasks"]
        deliveries = (await http.get(f"{server.url}/deliveries", headers=AUTH)).json()
        url = CallbackTokens([SECRET]).callback_url(server.url, "fx-ext-9")
        fresh = await http.post(url, json=task_body("fx-task-9", "succeed"))
    assert rows(db, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
    new = table_rows(db)
    for table, before in old.items():  # every row, every old column, unchanged
        kept = [{k: r[k] for k in before[0]} for r in new[table]] if before else new[table]
        if table in ("tasks", "transitions", "callbacks"):
            kept = [r for r in kept if r["task_id"] != "fx-task-9"]
        assert kept == before, table
    assert {r["source"] for r in new["callbacks"][:7]} == {"callback"}  # schema 3's default

    assert [t["task_id"] for t in listed] == ["fx-task-3", "fx-task-2", "fx-task-1"]
    assert task["task_status"] == "succeed" and task["request"] == {"prompt": "fixture 1"}
    assert [t["task_status"] for t in task["transitions"]] == ["submitted", "processing", "succeed"]
    assert task["callbacks"] == {"new": 2, "duplicate": 1}
    assert fresh.status_code == 200 and fresh.json()["verdict"] == "new"
    if schema == 1:
        assert deliveries["deliveries"] == []
    else:
        assert task["files"] == [
            {
                "url": "https://cdn.example/fx-1.png",
                "path": "/srv/fx-1.png",
                "bytes": 3,
                "sha256": "ab" * 32,
                "content_type": "image/png",  # migration 6: from the name's extension
            }
        ]
        assert [d["state"] for d in task["deliveries"]] == ["done", "done", "done"]
        states = sorted(d["state"] for d in deliveries["deliveries"])
        assert states == ["dead"] * 3 + ["done"] * 5


async def test_serve_refuses_a_database_newer_than_it_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "kling-hooks.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    run = await kling_hooks("serve", "--db", str(db), "--port", "0", env=cli_env(), cwd=tmp_path)
    assert run.code == 1
    assert run.err == (
        f"error: {db} has schema version {SCHEMA_VERSION + 1}, newer than this kling-hooks "
        f"knows ({SCHEMA_VERSION}): run a kling-hooks at least as new as the one that wrote it\n"
    )
    assert rows(db, "SELECT name FROM sqlite_master") == []  # nothing was created in it


async def test_serve_refuses_a_file_that_is_not_a_database_with_one_line(tmp_path: Path) -> None:
    notdb = tmp_path / "notdb.db"
    text = b"kling-hooks notes, not a database\n" * 10
    notdb.write_bytes(text)
    run = await kling_hooks("serve", "--db", "notdb.db", "--port", "0", env=cli_env(), cwd=tmp_path)
    assert run.code == 1
    assert run.err == "error: notdb.db is not a kling-hooks database: file is not a database\n"
    assert notdb.read_bytes() == text  # untouched


async def test_schema_5_lets_the_status_reads_find_their_rows_in_an_index_alone(
    tmp_path: Path,
) -> None:
    db, config = load_dump(4, tmp_path)
    async with serve(config, tmp_path):
        pass  # migrated by serve
    with sqlite3.connect(db) as conn:
        indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))

        def plan(sql: str, *args: object) -> str:
            return " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))

        both = plan(
            "SELECT id FROM tasks WHERE task_status = ? AND route = ? ORDER BY id DESC LIMIT 51",
            "failed",
            "images/generations",
        )
        counts = plan(
            "SELECT verdict, COUNT(*) FROM callbacks WHERE task_id = ? GROUP BY verdict", "x"
        )
    assert indexes["tasks_by_route_status"] == (
        "CREATE INDEX tasks_by_route_status ON tasks (route, task_status, id)"
    )
    assert indexes["callbacks_by_task"] == (
        "CREATE INDEX callbacks_by_task ON callbacks (task_id, verdict)"
    )
    assert "COVERING INDEX tasks_by_route_status (route=? AND task_status=?)" in both
    assert "TEMP B-TREE" not in both  # newest first straight from the index
    assert "COVERING INDEX callbacks_by_task (task_id=?)" in counts
    assert "TEMP B-TREE" not in counts
