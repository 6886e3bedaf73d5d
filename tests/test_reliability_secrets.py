"""Secrets (issue 10, suite 6): a run that drives every plugin's failure paths and every
rejection shows no secret in any log line or API answer (``bench/suites/secrets.py``).

The suite found two leaks, each named by a test here: a webhook endpoint that echoes only the
token of its URL's query (not the whole query) had it logged and stored in ``last_error``; and
``GET /plugins`` showed the webhook URL, query token and all.
"""

from __future__ import annotations

from pathlib import Path

from bench.suites import secrets
from receiver.plugins.registry import load_plugins
from tests.conftest import API_TOKEN, Outcomes, deliveries, make_settings, start_receiver, task_body
from tests.sinks import Answer, start_sink

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "query-token-secret-9876"


async def test_webhook_endpoint_echoing_its_query_token_alone_has_it_blanked_out_of_last_error(
    tmp_path: Path,
) -> None:
    async with start_sink(Answer(400, f"bad token {TOKEN}".encode())) as sink:
        table = {"url": f"{sink.url}/hooks?token={TOKEN}", "secret": WEBHOOK_SECRET}
        settings = make_settings(tmp_path, plugins={"webhook": {**table, "retry_schedule_s": []}})
        async with start_receiver(settings) as r:
            outcomes = Outcomes(r)
            await r.post_callback("kh-1", task_body("1", "succeed", "kh-1"))
            await outcomes.ended(1)
    [d] = deliveries(settings.kling_hooks_db)
    assert d["last_error"] == "WebhookError: the endpoint answered 400: bad token ***"


async def test_get_plugins_masks_each_query_value_of_a_plugin_url(tmp_path: Path) -> None:
    url = f"https://hooks.example.com/kling?token={TOKEN}&v=2"
    tables = {"webhook": {"url": url, "secret": WEBHOOK_SECRET}}
    settings = make_settings(tmp_path, plugins=tables)
    [loaded] = load_plugins(tables)
    assert loaded.describe(started=True).settings["url"] == (
        "https://hooks.example.com/kling?token=**********&v=**********"
    )
    async with start_receiver(settings) as r:
        answer = await r.http.get(
            f"{r.url}/plugins", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
    assert TOKEN not in answer.text and WEBHOOK_SECRET.removeprefix("whsec_") not in answer.text


async def test_secrets_suite_finds_no_secret_in_any_log_line_or_answer(tmp_path: Path) -> None:
    report = await secrets.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.format()
