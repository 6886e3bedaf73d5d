"""The status API's reads (``receiver.store.reads``, ``receiver.store.pool``) on real SQLite
files behind a real uvicorn server: the JSON that SQLite renders for ``GET /tasks/{id}`` and
``GET /tasks`` says what the models of ``receiver.models`` would say of the same rows, for
awkward values too; pages walk every task once; the read pool reads in parallel, refuses
writes and reports failures as ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import StoreUnavailable
from receiver.models import SavedFile, Task, TaskPage, TaskSummary
from receiver.store import ReadPool, connect, migrate
from receiver.store.rows import decode
from tests.conftest import (
    API_TOKEN,
    Outcomes,
    Receiver,
    RecordingPlugin,
    make_settings,
    rows,
    start_receiver,
    task_body,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
#: Values a callback may carry that JSON text and SQLite's json functions could disagree on.
AWKWARD_TEXT = 'quote " backslash \\ NUL \x00 tab \t newline \n bell \x07 é ünï 😀 \u2028 end'
AWKWARD_RESULT = {
    "images": [{"index": 0, "url": "https://cdn.example/ü 😀.png", "watermark_url": ""}],
    "big": 2**70,
    "negative": -(2**63),
    "floats": [0.1, 1e-7, 5.0, 1.5e300, -0.0],
    "nested": {"a": [[], {}, None, True, False, ""], "é": {"\x00": "\x1f"}},
    "empty": {},
}
FILE = SavedFile("https://cdn.example/ü 😀.png", "/srv/dl/é \x07.png", 2**40, "ab" * 32)


def reference_task(db: Path, id_: str) -> dict[str, Any] | None:
    """What ``GET /tasks/{id}`` must answer, built the slow way: rows read one table at a
    time, validated as a :class:`Task`, dumped by the model."""
    found = rows(
        db,
        "SELECT * FROM tasks WHERE task_id = ? OR external_task_id = ? ORDER BY task_id = ? DESC",
        id_,
        id_,
        id_,
    )
    if not found:
        return None
    task = decode(found[0])
    task_id = task["task_id"]
    fields = {n: task[n] for n in Task.model_fields if n in task}
    fields["transitions"] = [
        dict(r)
        for r in rows(
            db,
            "SELECT task_status, updated_at, received_at FROM transitions WHERE task_id = ?"
            " ORDER BY id",
            task_id,
        )
    ]
    fields["callbacks"] = {
        r[0]: r[1]
        for r in rows(
            db, "SELECT verdict, COUNT(*) FROM callbacks WHERE task_id = ? GROUP BY 1", task_id
        )
    }
    fields["deliveries"] = [
        dict(r)
        for r in rows(
            db,
            "SELECT d.id, d.plugin, d.state, d.attempts, d.next_attempt_at, d.last_error,"
            " t.task_status, d.created_at, d.updated_at FROM deliveries d"
            " JOIN transitions t ON t.id = d.transition_id WHERE t.task_id = ? ORDER BY d.id",
            task_id,
        )
    ]
    fields["files"] = [
        dict(r)
        for r in rows(
            db, "SELECT url, path, bytes, sha256 FROM files WHERE task_id = ? ORDER BY id", task_id
        )
    ]
    return Task.model_validate(fields).model_dump(mode="json")


def reference_summaries(db: Path, where: str = "1 = 1", *args: Any) -> list[dict[str, Any]]:
    """Every task matching ``where`` as ``GET /tasks`` lists it, newest first (slow way)."""
    names = ", ".join(f"{n}_json" if n == "task_result" else n for n in TaskSummary.model_fields)
    found = rows(db, f"SELECT {names} FROM tasks WHERE {where} ORDER BY id DESC", *args)
    return [TaskSummary.model_validate(decode(r)).model_dump(mode="json") for r in found]


async def get(r: Receiver, path: str, **params: Any) -> Any:
    answer = await r.http.get(f"{r.url}{path}", params=params, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


async def test_a_task_with_awkward_values_reads_as_its_model_says(tmp_path: Path) -> None:
    plugin = RecordingPlugin(files=[FILE])
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.register("T-1", "kh-1", "images/generations", {"prompt": AWKWARD_TEXT, "n": 1})
        await r.post_callback("kh-1", task_body("T-1", "processing", "kh-1"))
        done = task_body(
            "T-1",
            "succeed",
            "kh-1",
            task_status_msg=AWKWARD_TEXT,
            task_result=AWKWARD_RESULT,
            final_unit_deduction="0.000000000000000000001",
        )
        assert (await r.post_callback("kh-1", done)).json()["verdict"] == "new"
        assert (await r.post_callback("kh-1", done)).json()["verdict"] == "duplicate"
        await outcomes.ended(3)  # submitted, processing, succeed: one delivery each
        db = r.services.settings.kling_hooks_db
        expected = reference_task(db, "T-1")
        by_task_id = await get(r, "/tasks/T-1")
        by_external = await get(r, "/tasks/kh-1")
    assert by_task_id == expected
    assert by_external == expected
    assert expected is not None
    assert expected["task_status_msg"] == AWKWARD_TEXT
    assert expected["task_result"]["big"] == 2**70
    assert expected["files"] == [FILE.to_json()]
    assert [t["task_status"] for t in expected["transitions"]] == [
        "submitted",
        "processing",
        "succeed",
    ]
    assert expected["callbacks"] == {"duplicate": 1, "new": 2}
    assert Task.model_validate(by_task_id) is not None  # the answer is a valid Task


async def test_transitions_and_deliveries_come_in_id_order_not_index_order(
    tmp_path: Path,
) -> None:
    # The (task_id, task_status) index lists failed < processing < submitted; the answer
    # must list them as they were recorded.
    plugin = RecordingPlugin()
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        outcomes = Outcomes(r)
        await r.register("T-2", "kh-2", "videos/text2video")
        await r.post_callback("kh-2", task_body("T-2", "processing", "kh-2"))
        await r.post_callback("kh-2", task_body("T-2", "failed", "kh-2", task_status_msg="no"))
        await outcomes.ended(3)
        answer = await get(r, "/tasks/T-2")
        expected = reference_task(r.services.settings.kling_hooks_db, "T-2")
    assert [t["task_status"] for t in answer["transitions"]] == [
        "submitted",
        "processing",
        "failed",
    ]
    assert [d["task_status"] for d in answer["deliveries"]] == [
        "submitted",
        "processing",
        "failed",
    ]
    assert answer == expected


async def test_a_task_id_is_preferred_over_another_tasks_external_task_id(
    tmp_path: Path,
) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        await r.register("A", "shared", "images/generations")
        await r.register("shared", "kh-b", "images/generations")
        answer = await get(r, "/tasks/shared")
        other = await get(r, "/tasks/kh-b")
        unknown = await r.get_task("nobody")
    assert answer["task_id"] == "shared" and answer["external_task_id"] == "kh-b"
    assert other == answer
    assert unknown.status_code == 404
    assert unknown.json() == {"ok": False, "error": "no task with that task_id or external_task_id"}


async def test_pages_walk_every_matching_task_once_newest_first(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        for n in range(7):
            route = "videos/text2video" if n % 2 else "images/generations"
            await r.register(f"P-{n}", f"kh-p{n}", route)
            if n % 3 == 0:
                result = {"images": [{"index": 0, "url": f"https://cdn.example/{n}.png"}]}
                body = task_body(f"P-{n}", "succeed", f"kh-p{n}", task_result=result)
                await r.post_callback(f"kh-p{n}", body)
        db = r.services.settings.kling_hooks_db
        for params, where, args in [
            ({}, "1 = 1", ()),
            ({"task_status": "succeed"}, "task_status = ?", ("succeed",)),
            ({"route": "videos/text2video"}, "route = ?", ("videos/text2video",)),
            (
                {"route": "images/generations", "task_status": "submitted"},
                "route = ? AND task_status = ?",
                ("images/generations", "submitted"),
            ),
        ]:
            expected = reference_summaries(db, where, *args)
            for limit in (1, 2, 3, len(expected), 500):
                walked: list[dict[str, Any]] = []
                cursor: str | None = None
                while True:
                    query = {**params, "limit": limit}
                    page = await get(r, "/tasks", **query, **({"cursor": cursor} if cursor else {}))
                    assert TaskPage.model_validate(page).tasks is not None
                    walked += page["tasks"]
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                    assert isinstance(cursor, str) and len(page["tasks"]) == limit
                assert walked == expected, (params, limit)
        nothing = await get(r, "/tasks", task_status="failed")
    assert nothing == {"tasks": [], "next_cursor": None}


async def migrated(tmp_path: Path) -> Path:
    """A new database in ``tmp_path``, at the current schema."""
    db = tmp_path / "kling-hooks.db"
    conn = await connect(db)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return db


async def test_the_read_pool_reads_on_as_many_connections_at_once_as_its_size(
    tmp_path: Path,
) -> None:
    pool = ReadPool(await migrated(tmp_path), size=3)
    barrier = threading.Barrier(3, timeout=10)
    seen: list[int] = []

    def read(c: sqlite3.Connection) -> int:
        barrier.wait()  # all three are reading at once, or none gets past
        seen.append(id(c))
        return int(c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])

    try:
        counts = await asyncio.gather(*(pool.run(read) for _ in range(3)))
    finally:
        await pool.close()
    assert counts == [0, 0, 0]
    assert len(set(seen)) == 3  # three connections


async def test_the_read_pool_refuses_writes_and_reports_failures_as_store_unavailable(
    tmp_path: Path,
) -> None:
    pool = ReadPool(await migrated(tmp_path), size=1)
    try:
        with pytest.raises(StoreUnavailable, match="readonly"):
            await pool.run(lambda c: c.execute("DELETE FROM tasks"))
        with pytest.raises(StoreUnavailable, match="no such table"):
            await pool.run(lambda c: c.execute("SELECT * FROM missing_table"))
        assert await pool.run(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1  # still up
    finally:
        await pool.close()
        await pool.close()  # idempotent
    with pytest.raises(StoreUnavailable, match="closed"):
        await pool.run(lambda c: c.execute("SELECT 1"))


def test_a_read_pool_needs_at_least_one_connection(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size=0 is below 1"):
        ReadPool(tmp_path / "kling-hooks.db", size=0)
