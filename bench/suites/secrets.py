"""Suite 6, secrets: no secret in any log line or any API answer, on every failure path.

A ``kling-hooks serve`` with JSON logs at ``debug`` runs the Slack, webhook and downloader
plugins against local sinks (``tests.sinks``) that fail in every way a target can: 5xx, 4xx,
an answer that echoes the secret URL or the signing secret back, a hang past the timeout, a
closed port. Meanwhile it gets good callbacks, and every rejection: bad JSON, a wrong shape, a
too-large body, a token for another task, a forged token, a non-ASCII token, a real token with
an extra path segment, the status API and ``/metrics`` with wrong tokens, a wrong method, an
unknown path. Once every delivery is dead, the API is read with the right token: ``GET
/plugins``, ``/tasks`` and each task, ``/deliveries`` in every state, ``/metrics``,
``/readyz``, ``/openapi.json``.

Every log line (raw stderr, JSON or not) and every answer (status line, headers and body) is
searched for each secret: the callback secret, the API and metrics tokens, every callback
URL's token, the forged token, the Slack webhook URL and its path, the webhook URL's query
token, the webhook signing secret with and without ``whsec_``. Masked values (``**********``)
are what the API may show instead.

Figures: log lines scanned, answers scanned, leaks (must be 0), and the rejections that did not
get their expected status (must be 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.processes import free_port
from bench.suites import Report
from bench.suites.serve_process import API_TOKEN, SECRET, serving
from submitter.tokens import CallbackTokens
from tests.sinks import Answer, start_sink

NAME = "secrets"
SLACK_PATH = "/services/T0SECRET/B0SECRET/slack-path-secret-0123456789"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
QUERY_TOKEN = "query-token-secret-9876"
METRICS_TOKEN = "metrics-token-secret-0123456789"
FORGED = "forged-token-value-0123456789"
DEAD_TIMEOUT_S = 60.0
#: Deliveries that run out of attempts: Slack 3 (succeed, succeed, failed; each dies after
#: retries), webhook 4 (every transition), downloader 2 (the two succeed ones).
DEAD = 9


def bodies(task_id: str, status: str, ext: str, **extra: object) -> dict[str, object]:
    """A bare Kling callback body."""
    return {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1774805076166,
        "updated_at": 1774805090000,
        "task_info": {"external_task_id": ext},
        **extra,
    }


def run_secrets(
    callback_secret: str, api_token: str, slack_url: str, callback_urls: Iterable[str]
) -> set[str]:
    """Every secret of a run with :func:`config_text`'s config that no log line and no answer
    may show: the receiver's callback secret and API token, the metrics token, the webhook
    secret (with and without ``whsec_``), Slack's URL and its secret path, the query token,
    the forged URL token, and the tokens of ``callback_urls``."""
    return {
        callback_secret,
        api_token,
        METRICS_TOKEN,
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        slack_url,
        SLACK_PATH,
        SLACK_PATH.rsplit("/", 1)[1],
        QUERY_TOKEN,
        FORGED,
        *(urlsplit(u).path.rsplit("/", 1)[1] for u in callback_urls),
    }


def config_text(workdir: Path, slack_url: str, hook_url: str) -> str:
    return f"""
kling_hooks_db = "{workdir / "secrets.db"}"

[plugins.slack]
webhook_url = "{slack_url}"
retry_schedule_s = [0.1, 0.1]
timeout_s = 1
statuses = ["succeed", "failed"]

[plugins.webhook]
url = "{hook_url}/hooks?token={QUERY_TOKEN}"
secret = "{WEBHOOK_SECRET}"
retry_schedule_s = [0.1]

[plugins.downloader]
directory = "{workdir / "downloads"}"
allow_private_hosts = true
retry_schedule_s = [0.1]
"""


def shown(answer: httpx.Response) -> str:
    """An answer as a client sees it: status, headers, body."""
    return f"{answer.status_code} {json.dumps(dict(answer.headers))} {answer.text}"


def find_leaks(secrets: Iterable[str], texts: Iterable[str]) -> list[str]:
    """``"secret in: text"`` (shortened) for each secret found in each text."""
    secrets = tuple(secrets)
    return [f"{s!r} in: {t[:300]}" for t in texts for s in secrets if s in t]


async def run(full: bool, workdir: Path) -> Report:
    """One run; ``full`` changes nothing (every path is driven once either way)."""
    failing = Answer(503, b"down")
    async with (
        start_sink(failing) as slack,
        start_sink(failing) as hook,
        start_sink(failing) as files,
    ):
        slack_url = slack.url + SLACK_PATH
        slack.answer(
            Answer(500, f"no such hook: {slack_url} {SLACK_PATH}".encode()),
            Answer(hang=True),
            Answer(404, b"no_service"),
        )
        hook.answer(
            Answer(500, WEBHOOK_SECRET.encode()), Answer(400, QUERY_TOKEN.encode()), Answer(410)
        )
        files.answer(Answer(404, f"missing {slack_url}".encode()))
        config = workdir / "kling-hooks.toml"
        config.write_text(config_text(workdir, slack_url, hook.url))
        env = {"KLING_HOOKS_LOG_LEVEL": "debug", "KLING_HOOKS_METRICS_TOKEN": METRICS_TOKEN}
        tokens = CallbackTokens([SECRET])
        async with serving(config, env) as server, httpx.AsyncClient(timeout=10) as http:
            urls = [tokens.callback_url(server.url, f"kh-{i}") for i in range(4)]
            image = {"images": [{"index": 0, "url": f"{files.url}/r/0.png"}]}
            closed = {"images": [{"index": 0, "url": f"http://127.0.0.1:{free_port()}/r/3.png"}]}
            wrong = {"Authorization": "Bearer wrong"}
            api = {"Authorization": f"Bearer {API_TOKEN}"}
            expected_and_sent = [
                (
                    200,
                    await http.post(
                        urls[0], json=bodies("0", "succeed", "kh-0", task_result=image)
                    ),
                ),
                (
                    200,
                    await http.post(
                        urls[3], json=bodies("3", "succeed", "kh-3", task_result=closed)
                    ),
                ),
                (200, await http.post(urls[1], json=bodies("1", "failed", "kh-1"))),
                (200, await http.post(urls[2], json=bodies("2", "processing", "kh-2"))),
                (400, await http.post(urls[2], content=b"{not json")),
                (422, await http.post(urls[2], json={"task_id": "2"})),
                (413, await http.post(urls[2], content=b"[" * 2_000_000)),
                (
                    401,
                    await http.post(
                        urls[2].replace("kh-2", "kh-9"), json=bodies("9", "failed", "kh-9")
                    ),
                ),
                (401, await http.post(f"{server.url}/callbacks/kh-2/{FORGED}", json={})),
                (401, await http.post(f"{server.url}/callbacks/kh-2/%FF%C0%AF{FORGED}", json={})),
                (401, await http.post(urls[2] + "/extra", json=bodies("2", "processing", "kh-2"))),
                (401, await http.get(f"{server.url}/tasks", headers=wrong)),
                (401, await http.post(f"{server.url}/tasks", headers=wrong, json={})),
                (401, await http.get(f"{server.url}/plugins", headers=wrong)),
                (401, await http.get(f"{server.url}/metrics", headers=api)),
                (405, await http.get(urls[0])),
                (404, await http.get(f"{server.url}/no/such/{FORGED}")),
            ]
            await server.count(lambda e: e.get("event") == "delivery_dead", DEAD, DEAD_TIMEOUT_S)
            reads = [
                await http.get(f"{server.url}/plugins", headers=api),
                await http.get(f"{server.url}/tasks", headers=api),
                *[await http.get(f"{server.url}/tasks/kh-{i}", headers=api) for i in range(4)],
                await http.get(f"{server.url}/deliveries", headers=api),
                *[
                    await http.get(f"{server.url}/deliveries?state={state}", headers=api)
                    for state in ("pending", "running", "done", "failed", "dead")
                ],
                await http.get(
                    f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
                ),
                await http.get(f"{server.url}/readyz"),
                await http.get(f"{server.url}/openapi.json"),
            ]
        lines = server.lines
    secrets = run_secrets(SECRET, API_TOKEN, slack_url, urls)
    answers = [shown(a) for _, a in expected_and_sent] + [shown(a) for a in reads]
    leaks = find_leaks(secrets, lines) + find_leaks(secrets, answers)
    unexpected = [
        f"{want} wanted, {got.status_code}: {got.request.method} {got.request.url.path[:40]}"
        for want, got in expected_and_sent
        if got.status_code != want
    ] + [
        f"200 wanted, {a.status_code}: {a.request.url.path}" for a in reads if a.status_code != 200
    ]
    report = Report(
        NAME,
        {
            "log lines scanned": len(lines),
            "answers scanned": len(answers),
            "secrets searched for": len(secrets),
            "leaks": len(leaks),
            "answers with an unexpected status": len(unexpected),
        },
        must_be_zero=("leaks", "answers with an unexpected status"),
    )
    report.notes += [f"leak: {leak}" for leak in leaks] + [f"status: {u}" for u in unexpected]
    return report
