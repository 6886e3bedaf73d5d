"""Every row of the callback response table, against a real uvicorn server and SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.conftest import Receiver, make_settings, start_receiver, task_body
from tests.conftest import rows as stored_rows

pytestmark = pytest.mark.both_backends

EXT = "kh-test-0001"
TASK = "867283741759111202"


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    """The rows of ``sql`` as plain tuples, from the test's store (``tests.conftest.rows``)."""
    return [tuple(r) for r in stored_rows(db, sql)]


def db_of(r: Receiver) -> Path:
    return r.services.settings.kling_hooks_db


async def test_new_transition_is_committed_before_the_answer(receiver: Receiver) -> None:
    answer = await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "verdict": "new"}
    # Read with a separate connection right after the answer: it is on disk already.
    assert rows(db_of(receiver), "SELECT task_id, task_status FROM transitions") == [
        (TASK, "processing")
    ]
    assert rows(db_of(receiver), "SELECT verdict FROM callbacks") == [("new",)]


async def test_same_task_status_again_is_duplicate_and_keeps_raw_body_only(
    receiver: Receiver,
) -> None:
    await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    again = await receiver.post_callback(EXT, task_body(TASK, "processing", EXT, extra="x"))
    assert again.status_code == 200
    assert again.json() == {"ok": True, "verdict": "duplicate"}
    assert len(rows(db_of(receiver), "SELECT * FROM transitions")) == 1
    assert [r[0] for r in rows(db_of(receiver), "SELECT verdict FROM callbacks ORDER BY id")] == [
        "new",
        "duplicate",
    ]


async def test_late_processing_callback_does_not_reopen_succeeded_task(receiver: Receiver) -> None:
    done = task_body(
        TASK,
        "succeed",
        EXT,
        final_unit_deduction="0.2",
        task_result={"images": [{"index": 0, "url": "https://cdn.example/0.png"}]},
    )
    assert (await receiver.post_callback(EXT, done)).json()["verdict"] == "new"
    late = await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    assert late.status_code == 200
    assert late.json() == {"ok": True, "verdict": "stale"}
    failed = await receiver.post_callback(EXT, task_body(TASK, "failed", EXT))
    assert failed.json()["verdict"] == "stale"  # a terminal state never moves
    task = (await receiver.get_task(TASK)).json()
    assert task["task_status"] == "succeed"
    assert [t["task_status"] for t in task["transitions"]] == ["succeed"]
    assert task["callbacks"] == {"new": 1, "stale": 2}


async def test_submitted_after_processing_is_stale(receiver: Receiver) -> None:
    await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    answer = await receiver.post_callback(EXT, task_body(TASK, "submitted", EXT))
    assert answer.json()["verdict"] == "stale"


@pytest.mark.parametrize("mangle", ["other-token", "other-ext", "empty-token"])
async def test_wrong_token_is_refused_and_nothing_stored(receiver: Receiver, mangle: str) -> None:
    url = receiver.callback_url(EXT)
    if mangle == "other-token":
        url = receiver.callback_url(EXT, secret="not-our-secret")
    elif mangle == "other-ext":  # a valid token, moved to another task's URL
        url = url.replace(f"/{EXT}/", "/kh-someone-else/")
    else:
        url = url.rsplit("/", 1)[0] + "/"
    answer = await receiver.http.post(url, json=task_body(TASK, "succeed", None))
    # A bad token and a URL moved to another task get the same answer, saying neither part.
    expected = (404, "Not Found") if mangle == "empty-token" else (401, "invalid callback URL")
    assert (answer.status_code, answer.json()) == (expected[0], {"ok": False, "error": expected[1]})
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM callbacks") == [(0,)]


async def test_body_naming_another_external_task_id_is_409(receiver: Receiver) -> None:
    answer = await receiver.post_callback(EXT, task_body(TASK, "processing", "kh-other"))
    assert answer.status_code == 409
    assert answer.json() == {"ok": False, "error": "body belongs to another task than the URL"}
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM callbacks") == [(0,)]


async def test_task_id_already_bound_to_another_url_is_409(receiver: Receiver) -> None:
    await receiver.post_callback(EXT, task_body(TASK, "processing", EXT))
    # Old-schema body (no task_info) for the same task_id on a second, valid URL.
    answer = await receiver.post_callback("kh-test-0002", task_body(TASK, "succeed"))
    assert answer.status_code == 409
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM callbacks") == [(1,)]
    assert (await receiver.get_task(TASK)).json()["task_status"] == "processing"


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe{}", b"NaN"])
async def test_body_that_is_not_json_is_400(receiver: Receiver, content: bytes) -> None:
    answer = await receiver.http.post(
        receiver.callback_url(EXT), content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["ok"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"task_status": "succeed"},  # no task_id
        {"task_id": TASK, "task_status": "succeeded"},  # not Kling's spelling
        {"task_id": 867283741759111202, "task_status": "succeed"},  # a number, not a string
        {"task_id": TASK, "task_status": "succeed", "created_at": "yesterday"},
        {"task_id": TASK, "task_status": "succeed", "final_unit_deduction": 1},
        {"task_id": TASK, "task_status": "succeed", "task_info": {"external_task_id": 5}},
        {"task_id": "", "task_status": "succeed"},
        ["not", "an", "object"],
        {"code": 1201, "message": "bad", "data": None},  # an error envelope
    ],
)
async def test_json_that_is_not_a_kling_task_is_422(receiver: Receiver, body: object) -> None:
    answer = await receiver.post_callback(EXT, body)
    assert answer.status_code == 422
    assert answer.json()["ok"] is False and answer.json()["error"]
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM callbacks") == [(0,)]


async def raw_post(url: str, head: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """Send a request head and only ``body`` (maybe less than declared), read the answer."""
    parsed = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    lines = [
        f"POST {parsed.raw_path.decode()} HTTP/1.1",
        f"Host: {parsed.host}",
        *[f"{k}: {v}" for k, v in head.items()],
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    rest = await reader.read(65536)
    writer.close()
    return int(status_line.split()[1]), rest


async def test_declared_oversized_body_is_413_without_reading_it(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_max_body_bytes=4096)
    async with start_receiver(settings) as r:
        # 10 MB declared, none of it sent: the answer comes from the header alone.
        status, rest = await raw_post(r.callback_url(EXT), {"Content-Length": "10000000"}, b"")
        assert status == 413
        assert b'{"ok":false,"error":"body is over 4096 bytes"}' in rest
        ok = await r.post_callback(EXT, task_body(TASK, "processing", EXT))
        assert ok.json()["verdict"] == "new"  # the server keeps running


async def test_streamed_oversized_body_is_413_at_the_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_max_body_bytes=4096)
    async with start_receiver(settings) as r:
        chunk = b"400\r\n" + b"y" * 1024 + b"\r\n"  # 1 KiB chunks, never terminated
        status, _ = await raw_post(r.callback_url(EXT), {"Transfer-Encoding": "chunked"}, chunk * 5)
        assert status == 413
        assert rows(db_of(r), "SELECT COUNT(*) FROM callbacks") == [(0,)]


@pytest.mark.sqlite_only  # Postgres away: tests/test_pg_outage.py
async def test_database_that_cannot_commit_gives_503_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_busy_timeout_ms=100, kling_hooks_retry_after_s=7)
    async with start_receiver(settings) as r:
        body = task_body(TASK, "succeed", EXT, final_unit_deduction="1")
        # Another process takes the write lock, as a backup tool or a stuck writer would.
        locker = sqlite3.connect(settings.kling_hooks_db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            refused = await r.post_callback(EXT, body)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "7"
            assert refused.json() == {"ok": False, "error": "database unavailable, retry later"}
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert rows(settings.kling_hooks_db, "SELECT COUNT(*) FROM callbacks") == [(0,)]
        # The sender retries, as Retry-After asks: now it is recorded, once.
        retried = await r.post_callback(EXT, body)
        assert retried.json() == {"ok": True, "verdict": "new"}
        assert (await r.get_task(EXT)).json()["task_status"] == "succeed"


async def test_forty_identical_concurrent_callbacks_record_one_transition(
    receiver: Receiver,
) -> None:
    body = task_body(TASK, "succeed", EXT, final_unit_deduction="1")
    answers = await asyncio.gather(*[receiver.post_callback(EXT, body) for _ in range(40)])
    verdicts = [a.json()["verdict"] for a in answers]
    assert verdicts.count("new") == 1
    assert verdicts.count("duplicate") == 39
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM transitions") == [(1,)]
    assert rows(db_of(receiver), "SELECT COUNT(*) FROM callbacks") == [(40,)]


async def test_enveloped_callback_is_unwrapped(receiver: Receiver) -> None:
    envelope = {
        "code": 0,
        "message": "SUCCEED",
        "request_id": "req-1",
        "data": task_body(TASK, "succeed", EXT, final_unit_deduction="0.04"),
    }
    answer = await receiver.post_callback(EXT, envelope)
    assert answer.json() == {"ok": True, "verdict": "new"}
    task = (await receiver.get_task(TASK)).json()
    assert task["task_status"] == "succeed"
    assert task["final_unit_deduction"] == "0.04"


async def test_old_schema_callback_takes_external_task_id_from_the_url(receiver: Receiver) -> None:
    old = {
        "task_id": "CjI17WevH1IAAAAAAHmgsw",
        "task_status": "succeed",
        "created_at": 1722769557708,
        "updated_at": 1722769557999,
        "task_result": {
            "videos": [{"id": "v1", "url": "https://cdn.example/v.mp4", "duration": "5.1"}]
        },
    }
    answer = await receiver.post_callback(EXT, old)
    assert answer.json()["verdict"] == "new"
    task = (await receiver.get_task(EXT)).json()
    assert task["task_id"] == "CjI17WevH1IAAAAAAHmgsw"
    assert task["final_unit_deduction"] is None
    assert task["task_result"]["videos"][0]["duration"] == "5.1"  # Kling's string, kept
    assert task["updated_at"] == 1722769557999


async def test_failed_callback_with_empty_objects_keeps_the_reason(receiver: Receiver) -> None:
    body = {
        "task_id": "900000000000000001",
        "task_status": "failed",
        "task_status_msg": "content safety check failed",
        "created_at": 1774805076166,
        "updated_at": 1774805077000,
        "task_info": {},
        "task_result": {},
    }
    assert (await receiver.post_callback(EXT, body)).json()["verdict"] == "new"
    task = (await receiver.get_task("900000000000000001")).json()
    assert task["task_status"] == "failed"
    assert task["task_status_msg"] == "content safety check failed"
    assert task["task_result"] == {}


async def test_failed_callback_with_empty_task_info_keeps_the_task_info_known_before(
    receiver: Receiver,
) -> None:
    await receiver.post_callback(EXT, task_body("9", "processing", EXT))
    failed = task_body("9", "failed", None, task_status_msg="content safety", task_info={})
    assert (await receiver.post_callback(EXT, failed)).json()["verdict"] == "new"
    task = (await receiver.get_task("9")).json()
    assert task["task_status"] == "failed"
    assert task["task_info"] == {"external_task_id": EXT}


async def test_long_digit_task_id_and_unknown_fields_are_kept(receiver: Receiver) -> None:
    long_id = "8672837417591112021234567890"
    body = task_body(
        long_id,
        "succeed",
        EXT,
        final_unit_deduction="1",
        task_result={"audios": [{"url": "https://cdn.example/a.mp3"}]},
        brand_new_field={"nested": True},
    )
    await receiver.post_callback(EXT, body)
    task = (await receiver.get_task(long_id)).json()
    assert task["task_id"] == long_id and isinstance(task["task_id"], str)
    assert task["task_result"] == {"audios": [{"url": "https://cdn.example/a.mp3"}]}
    raw = rows(db_of(receiver), "SELECT body FROM callbacks")[0][0]
    assert '"brand_new_field"' in str(raw) and long_id in str(raw)


async def test_out_of_order_callbacks_end_in_the_right_state(receiver: Receiver) -> None:
    order = ["succeed", "submitted", "processing", "succeed", "processing"]
    verdicts = [
        (await receiver.post_callback(EXT, task_body(TASK, s, EXT))).json()["verdict"]
        for s in order
    ]
    assert verdicts == ["new", "stale", "stale", "duplicate", "stale"]
    assert (await receiver.get_task(TASK)).json()["task_status"] == "succeed"


async def test_rotated_secret_still_verifies_until_removed(tmp_path: Path) -> None:
    from pydantic import SecretStr

    old_url_settings = make_settings(tmp_path, kling_hooks_secret=SecretStr("new-secret, old"))
    async with start_receiver(old_url_settings) as r:
        old = r.callback_url(EXT, secret="old")
        new = r.callback_url("kh-test-0002", secret="new-secret")
        assert (await r.http.post(old, json=task_body(TASK, "processing", EXT))).status_code == 200
        assert (await r.http.post(new, json=task_body("T2", "processing"))).status_code == 200
    only_new = make_settings(tmp_path, kling_hooks_secret=SecretStr("new-secret"))
    async with start_receiver(only_new) as r:
        old = r.callback_url(EXT, secret="old")  # same token, this server's port
        refused = await r.http.post(old, json=task_body(TASK, "succeed", EXT))
        assert refused.status_code == 401


@pytest.mark.parametrize(
    "content",
    [
        b"null",
        b"1e999",
        b'{"task_id": {"$gt": ""}, "task_status": "succeed"}',
        b'{"task_id": "1", "task_status": "succeed", "task_result": []}',
        b'{"data": {"data": {"task_id": "1"}}}',
        b'"' + b"a" * 5000 + b'"',
        b'{"task_id": "1", "task_status": "succeed", "created_at": 1e3}',
        b'{"task_id": "1", "task_status": "succeed", "updated_at": 99999999999999999999999}',
    ],
)
async def test_odd_bodies_never_get_a_500(receiver: Receiver, content: bytes) -> None:
    answer = await receiver.http.post(receiver.callback_url(EXT), content=content)
    assert answer.status_code in (200, 400, 422)
    assert (await receiver.http.get(f"{receiver.url}/healthz")).status_code == 200
