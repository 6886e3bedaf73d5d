"""No secret reaches a log line, on any error path, and every line of a request carries its
request id (issue 9, observability).

A real ``kling-hooks serve`` with JSON logs at ``debug`` runs the Slack, webhook and
downloader plugins against local sinks that fail in every way a target can (5xx, 4xx, an
answer that echoes the secret URL back, a closed port, a hang past the timeout), while it gets
callbacks with good and forged tokens and API calls with good and wrong tokens. Then every
line it printed is searched for each secret: the callback secret, the API and metrics tokens,
the callback URLs' tokens, the Slack webhook URL and its path, the webhook signing secret.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from bench.suites.secrets import (
    FORGED,
    METRICS_TOKEN,
    SLACK_PATH,
    WEBHOOK_SECRET,
    config_text,
    run_secrets,
)
from submitter.tokens import CallbackTokens
from tests.conftest import API_TOKEN, SECRET, serve, task_body
from tests.sinks import Answer, start_sink
from tests.test_cli import closed_port_url


async def test_no_secret_in_any_log_line_while_every_plugin_fails(tmp_path: Path) -> None:
    failing = Answer(503, b"down")
    async with (
        start_sink(failing) as slack,
        start_sink(failing) as hook,
        start_sink(failing) as files,
    ):
        slack_url = slack.url + SLACK_PATH
        echo = Answer(500, f"no such hook: {slack_url} {SLACK_PATH}".encode())
        slack.answer(echo, Answer(hang=True), Answer(404, b"no_service"))
        hook.answer(Answer(500, WEBHOOK_SECRET.encode()), Answer(410, b"gone"))
        files.answer(Answer(404, b"missing"))
        config = tmp_path / "kling-hooks.toml"
        config.write_text(config_text(tmp_path, slack_url, hook.url))
        env = {"KLING_HOOKS_LOG_LEVEL": "debug", "KLING_HOOKS_METRICS_TOKEN": METRICS_TOKEN}
        tokens = CallbackTokens([SECRET])
        async with serve(config, tmp_path, env=env) as server, httpx.AsyncClient() as http:
            urls = [tokens.callback_url(server.url, f"kh-{i}") for i in range(4)]
            result = {"images": [{"index": 0, "url": f"{files.url}/r/0.png"}]}
            unreachable = {"images": [{"index": 0, "url": f"{closed_port_url()}/r/3.png"}]}
            sent = [
                await http.post(
                    urls[0], json=task_body("0", "succeed", "kh-0", task_result=result)
                ),
                await http.post(
                    urls[3], json=task_body("3", "succeed", "kh-3", task_result=unreachable)
                ),
                await http.post(urls[1], json=task_body("1", "failed", "kh-1")),
                await http.post(urls[2], json=task_body("2", "processing", "kh-2")),
                await http.post(urls[2], content=b"{not json"),
                await http.post(urls[2], json={"task_id": "2"}),
                await http.post(urls[2].replace("kh-2", "kh-9"), json=task_body("9", "failed")),
                await http.post(f"{server.url}/callbacks/kh-2/{FORGED}", json={}),
                # a real token followed by one more path segment: 401, and not logged
                await http.post(urls[2] + "/extra", json=task_body("2", "processing", "kh-2")),
                await http.get(f"{server.url}/tasks", headers={"Authorization": "Bearer wrong"}),
                await http.get(f"{server.url}/tasks/kh-0", headers={"X-Request-ID": "proxy-42"}),
            ]
            # every delivery runs out of attempts: Slack 3 (0, 1, 3), webhook 4, downloader 2
            for _ in range(9):
                await server.until(lambda e: e.get("event") == "delivery_dead")
        events = server.events

    assert [a.status_code for a in sent] == [200, 200, 200, 200, 400, 422, 401, 401, 401, 401, 401]
    secrets = run_secrets(SECRET, API_TOKEN, slack_url, urls)
    lines = [json.dumps(e) for e in events]
    assert len(lines) > 30
    leaks = {s: line for s in secrets for line in lines if s in line}
    assert not leaks, leaks
    # the request's lines carry its id; the proxy's id is kept
    rejected = [e for e in events if e.get("event") == "callback_rejected"]
    assert len(rejected) == 5 and all(len(e["request_id"]) == 16 for e in rejected)
    accepted = [e for e in events if e.get("event") == "callback"]
    assert {(e["task_id"], e["external_task_id"]) for e in accepted} == {
        ("0", "kh-0"),
        ("1", "kh-1"),
        ("2", "kh-2"),
        ("3", "kh-3"),
    }
    assert len({e["request_id"] for e in accepted}) == 4
    assert sent[-1].headers["x-request-id"] == "proxy-42"
    # the delivery lines say which delivery they are about
    dead = [e for e in events if e.get("event") == "delivery_dead"]
    assert sorted(e["plugin"] for e in dead) == sorted(
        ["slack"] * 3 + ["webhook"] * 4 + ["downloader"] * 2
    )
    assert all({"delivery_id", "task_id", "external_task_id"} <= set(e) for e in dead)
