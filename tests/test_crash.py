"""Crash safety: ``kling-hooks serve`` is killed with SIGKILL while deliveries are running and
pending, restarted on the same database, and every delivery still completes.

The receiver runs as a real subprocess (the console script, JSON logs on stderr). The Slack
target and the result files are local sinks in the test's event loop; the first requests to
both hang, so deliveries are mid-attempt when the kill comes. The test waits on the
subprocess's own log lines (``receiver_started``, ``delivery_done``), never on a timer.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import sys
from pathlib import Path

import httpx

from submitter.media import mp4_bytes, png_bytes
from tests.conftest import API_TOKEN, DEBUG, SECRET, serve, task_body
from tests.sinks import Answer, Sink, start_sink

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
TASKS = 4


def write_config(tmp_path: Path, slack: Sink, downloads: Path) -> Path:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(
        f"""
kling_hooks_db = "{tmp_path / "kling-hooks.db"}"
kling_hooks_public_url = "http://127.0.0.1:1"

[plugins.slack]
webhook_url = "{slack.url}/services/T000/B000/XXXX"
retry_schedule_s = [0.2, 0.2, 0.2, 0.2]
timeout_s = 60

[plugins.downloader]
directory = "{downloads}"
allow_private_hosts = true
retry_schedule_s = [0.2, 0.2, 0.2, 0.2]
timeout_s = 60
"""
    )
    return config


def delivery_states(db: Path) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, state FROM deliveries"))


async def test_sigkill_during_deliveries_then_restart_completes_every_delivery(
    tmp_path: Path,
) -> None:
    downloads = tmp_path / "downloads"
    db = tmp_path / "kling-hooks.db"
    async with start_sink() as slack, start_sink() as files:
        contents = {}
        for i in range(TASKS):
            contents[f"/r/{i}.png"] = png_bytes(64 + i, 48)
            contents[f"/r/{i}.mp4"] = mp4_bytes(3 + i)
            files.serve_file(f"/r/{i}.png", contents[f"/r/{i}.png"], "image/png")
            files.serve_file(f"/r/{i}.mp4", contents[f"/r/{i}.mp4"], "video/mp4")
        # The first Slack post and the first two downloads hang: they are running at the kill.
        slack.answer(Answer(hang=True))
        files.answer(Answer(hang=True), Answer(hang=True))
        config = write_config(tmp_path, slack, downloads)

        async with serve(config, tmp_path) as server, httpx.AsyncClient() as http:
            from submitter.tokens import CallbackTokens

            tokens = CallbackTokens([SECRET])
            for i in range(TASKS):
                result = {
                    "images": [{"index": 0, "url": f"{files.url}/r/{i}.png"}],
                    "videos": [{"id": f"v{i}", "url": f"{files.url}/r/{i}.mp4"}],
                }
                body = task_body(f"{i}", "succeed", f"kh-{i}", task_result=result)
                answer = await http.post(tokens.callback_url(server.url, f"kh-{i}"), json=body)
                assert answer.json() == {"ok": True, "verdict": "new"}
            await slack.wait_for(1)
            await files.wait_for(2)
            server.proc.send_signal(signal.SIGKILL)
            await server.proc.wait()

        before = delivery_states(db)
        assert len(before) == 2 * TASKS  # slack + downloader for each succeed transition
        assert "running" in before.values(), before
        unfinished = {i for i, state in before.items() if state != "done"}
        assert unfinished

        async with serve(config, tmp_path, env=DEBUG) as server:
            done: set[int] = set()
            # Logged during start-up, before uvicorn's "running" line that serve() waited for.
            assert any(e.get("event") == "deliveries_recovered" for e in server.events)
            while not unfinished <= done:
                event = await server.until(lambda e: e.get("event") == "delivery_done")
                done.add(event["delivery_id"])
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {API_TOKEN}"}
            ) as api:
                tasks = [(await api.get(f"/tasks/kh-{i}")).json() for i in range(TASKS)]

    assert set(delivery_states(db).values()) == {"done"}, delivery_states(db)
    for i, task in enumerate(tasks):
        assert {d["state"] for d in task["deliveries"]} == {"done"}
        saved = {f["url"].removeprefix(files.url): f for f in task["files"]}
        assert set(saved) == {f"/r/{i}.png", f"/r/{i}.mp4"}
        for path, record in saved.items():
            on_disk = Path(record["path"]).read_bytes()
            assert on_disk == contents[path]
            assert record["sha256"] == hashlib.sha256(on_disk).hexdigest()
            assert record["bytes"] == len(on_disk)
    # No partial or temporary file anywhere under the download directory.
    on_disk_names = sorted(p.name for p in downloads.rglob("*") if p.is_file())
    assert len(on_disk_names) == 2 * TASKS, on_disk_names
    # Slack heard about every task; a repeat can only be a redelivery of the same transition.
    posted = [r.json() for r in slack.requests[1:]]
    for i in range(TASKS):
        assert any(f"kh-{i}" in json.dumps(p) for p in posted)
