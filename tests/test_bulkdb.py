"""``bench/bulkdb.py``, which the status API benchmarks import: a database it builds is one the
current receiver serves as it is, its sample and filters are what ``Built`` says, and a seed
gives the same rows every time."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from bench.bulkdb import Built, build, survey
from receiver.store import SCHEMA_VERSION
from tests.conftest import API_TOKEN, make_settings, rows, start_receiver

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def digest(db: Path) -> str:
    h = hashlib.sha256()
    with sqlite3.connect(db) as conn:
        for table in ("tasks", "transitions", "callbacks", "deliveries", "files"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                h.update(repr(row).encode())
    return h.hexdigest()


async def test_a_built_database_is_served_as_it_is_with_its_sample_and_filters(
    tmp_path: Path,
) -> None:
    built = build(tmp_path / "kling-hooks.db", 3000, seed=1)
    assert isinstance(built, Built) and built.tasks == 3000 and built.seconds > 0
    assert len(built.task_ids) == 3000 and len(set(built.task_ids)) == 3000
    assert rows(built.path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert rows(built.path, "PRAGMA journal_mode")[0][0] == "wal"
    assert rows(built.path, "PRAGMA integrity_check")[0][0] == "ok"
    assert survey(built.path, seed=1) == (built.task_ids, built.filters)
    assert "task_status=succeed&limit=50" in built.filters
    async with start_receiver(make_settings(tmp_path)) as r:
        for task_id in built.task_ids[:20]:
            answer = await r.http.get(f"{r.url}/tasks/{task_id}", headers=AUTH)
            assert answer.status_code == 200, answer.text
            assert answer.json()["task_id"] == task_id
        for query in built.filters:
            page = await r.http.get(f"{r.url}/tasks?{query}", headers=AUTH)
            assert page.status_code == 200, (query, page.text)
            assert len(page.json()["tasks"]) == 50, query


def test_the_same_seed_builds_the_same_rows_and_another_seed_others(tmp_path: Path) -> None:
    one = build(tmp_path / "one.db", 500, seed=7)
    again = build(tmp_path / "one.db", 500, seed=7)  # the file is replaced
    other = build(tmp_path / "other.db", 500, seed=8)
    assert digest(one.path) == digest(again.path)
    assert one.task_ids == again.task_ids
    assert digest(other.path) != digest(one.path)
