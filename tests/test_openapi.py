"""The published ``/openapi.json`` against live answers of a real server, on every route.

Every answer a real receiver gives (successes and refusals) must have a status code the
document lists for that route and method, and a body that validates against the schema it
lists there. So any drift between the models the server sends and the document fails here.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from receiver.api import API_ROUTES
from receiver.callbacks import CALLBACK_ROUTES
from receiver.models import DeliveryState
from receiver.openapi import openapi_document
from receiver.plugins import SavedFile
from tests.conftest import (
    API_TOKEN,
    Outcomes,
    Receiver,
    RecordingPlugin,
    make_settings,
    start_receiver,
    task_body,
)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FILE = SavedFile("https://cdn.example/a.png", "/srv/a.png", 3, "ab" * 32)


class Conformance:
    """Calls the server and checks each answer against the document it published."""

    def __init__(self, receiver: Receiver, document: dict[str, Any]) -> None:
        self.r = receiver
        self.doc = document
        self.seen: set[tuple[str, str, int]] = set()

    def _operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, operations in self.doc["paths"].items():
            pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
            if re.fullmatch(pattern, path) and method in operations:
                return template, operations[method]
        raise AssertionError(f"{method.upper()} {path} is not in /openapi.json")

    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", AUTH)
        answer = await self.r.http.request(method, self.r.url + path, headers=headers, **kw)
        template, operation = self._operation(method.lower(), path.split("?")[0])
        documented = operation["responses"]
        status = str(answer.status_code)
        assert status in documented, f"{method} {template}: {status} is not documented"
        media_type = answer.headers["content-type"].split(";")[0]
        content = documented[status]["content"]
        assert media_type in content, f"{method} {template}: {media_type} is not documented"
        body = answer.json() if media_type == "application/json" else answer.text
        jsonschema.validate(
            body,
            {**content[media_type]["schema"], "components": self.doc["components"]},
            cls=jsonschema.Draft202012Validator,
        )
        self.seen.add((method.lower(), template, answer.status_code))
        return answer


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    plugin = RecordingPlugin(files=[FILE])
    settings = make_settings(tmp_path, kling_hooks_max_body_bytes=4096)
    async with start_receiver(settings, [plugin]) as r:
        document = (await r.http.get(f"{r.url}/openapi.json")).json()
        yield Conformance(r, document), r


async def test_every_live_answer_matches_the_published_schema(live: Any) -> None:
    c, r = live
    outcomes = Outcomes(r)
    url = r.callback_url("kh-1").removeprefix(r.url)
    body = task_body("1", "succeed", "kh-1", task_result={"images": [{"index": 0, "url": "u"}]})
    registration = {"route": "images/generations", "task_id": "1", "external_task_id": "kh-1"}
    assert (await c.call("POST", "/tasks", json={**registration, "request": {"n": 1}})).is_success
    for verdict in ("new", "duplicate"):
        assert (await c.call("POST", url, json=body, headers={})).json()["verdict"] == verdict
    assert await c.call("POST", url, json=task_body("1", "processing", "kh-1"), headers={})
    await outcomes.ended(2)  # submitted and succeed: done, with the file stored

    task = (await c.call("GET", "/tasks/kh-1")).json()
    assert [t["task_status"] for t in task["transitions"]] == ["submitted", "succeed"]
    assert task["files"] == [FILE.to_json()]
    assert task["callbacks"] == {"new": 1, "duplicate": 1, "stale": 1}
    assert (await c.call("GET", "/tasks?limit=1")).json()["tasks"][0]["task_id"] == "1"
    assert await c.call("GET", "/tasks?task_status=succeed&route=images/generations")
    assert (await c.call("GET", "/tasks?transition_before=1")).json()["tasks"] == []
    answer = await c.call("POST", "/tasks/kh-1/reconcile", json=body)  # Kling's query answer
    assert answer.json()["verdict"] == "duplicate"
    listed = (await c.call("GET", "/deliveries?state=done")).json()["deliveries"]
    assert [d["state"] for d in listed] == [DeliveryState.DONE] * len(listed) != []
    assert (await c.call("GET", "/plugins")).json()["plugins"][0]["started"] is True
    assert (await c.call("POST", f"/deliveries/{listed[0]['id']}/redeliver")).is_success
    assert (await c.call("POST", "/deliveries/redeliver", json={"state": "done"})).is_success
    assert (await c.call("POST", "/deliveries/redeliver")).is_success  # empty: the dead ones
    for path in ("/healthz", "/readyz"):
        assert (await c.call("GET", path, headers={})).json() == {"ok": True}
    assert "kling_hooks_callbacks_total" in (await c.call("GET", "/metrics")).text
    counted = await c.call("POST", "/prune", json={"older_than_ms": 1, "dry_run": True})
    assert counted.json()["dry_run"] is True
    pruned = await c.call("POST", "/prune", json={"older_than_ms": 1, "vacuum": True})
    assert pruned.json()["callbacks"] == 4  # new, duplicate, stale, reconcile
    answered = {(m, p) for m, p, status in c.seen if status == 200}
    listed_ops = {(m, p) for p, ops in c.doc["paths"].items() for m in ops}
    assert answered == listed_ops, "every documented route was tried and answered 200"


async def test_every_refusal_matches_the_published_schema(live: Any) -> None:
    c, r = live
    url = r.callback_url("kh-2").removeprefix(r.url)
    refusals: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", url, {"content": b"{nope", "headers": {}}, 400),
        ("POST", "/callbacks/kh-2/forged", {"json": task_body("2", "succeed"), "headers": {}}, 401),
        ("POST", url, {"json": task_body("2", "succeed", "kh-other"), "headers": {}}, 409),
        ("POST", url, {"content": b"x" * 5000, "headers": {}}, 413),
        ("POST", url, {"json": {"task_status": "succeed"}, "headers": {}}, 422),
        ("GET", "/tasks", {"headers": {}}, 401),
        ("GET", "/tasks?limit=0", {}, 400),
        ("GET", "/tasks?task_status=done", {}, 400),
        ("GET", "/tasks/unknown", {}, 404),
        ("POST", "/tasks", {"content": b"[", "headers": AUTH}, 400),
        ("POST", "/tasks", {"json": {"route": "images/generations"}}, 422),
        ("POST", "/tasks", {"content": b"{" + b" " * 5000 + b"}"}, 413),
        ("GET", "/deliveries?state=lost", {}, 400),
        ("POST", "/deliveries/99/redeliver", {}, 404),
        ("POST", "/deliveries/redeliver", {"json": {"plugin": "absent"}}, 409),
        ("POST", "/deliveries/redeliver", {"json": {"state": "running"}}, 422),
        ("GET", "/plugins", {"headers": {"Authorization": "Bearer wrong"}}, 401),
        ("GET", "/metrics", {"headers": {"Authorization": "Bearer wrong"}}, 401),
        ("GET", "/tasks?transition_before=soon", {}, 400),
        ("POST", "/tasks/unknown/reconcile", {"json": task_body("9", "succeed")}, 404),
        ("POST", "/prune", {"content": b"nope"}, 400),
        ("POST", "/prune", {"json": {"older_than_ms": 0}}, 422),
        ("POST", "/prune", {"content": b"{" + b" " * 5000 + b"}"}, 413),
    ]
    for method, path, kw, status in refusals:
        answer = await c.call(method, path, **kw)
        assert answer.status_code == status, (method, path, answer.text)
        assert answer.json()["ok"] is False
    await c.call(
        "POST",
        "/tasks",
        json={"route": "images/generations", "task_id": "3", "external_task_id": "kh-2"},
    )
    conflict = {"route": "images/generations", "task_id": "4", "external_task_id": "kh-2"}
    assert (await c.call("POST", "/tasks", json=conflict)).status_code == 409


async def test_the_routes_the_document_secures_are_those_that_need_the_token(live: Any) -> None:
    c, _ = live
    for template, operations in c.doc["paths"].items():
        if template.startswith("/callbacks/"):
            continue  # authenticated by the token in its URL, not a header
        path = re.sub(r"\{[^}]+\}", "1", template)
        for method, operation in operations.items():
            answer = await c.call(method.upper(), path, headers={})
            if "security" in operation:
                assert answer.status_code == 401, (method, template)
                assert answer.headers["www-authenticate"] == "Bearer"
            else:
                assert answer.status_code == 200, (method, template)


def test_the_document_lists_exactly_the_routes_the_app_serves() -> None:
    served = {
        (method.lower(), route.path.replace(":path", ""))
        for route in [*CALLBACK_ROUTES, *API_ROUTES]
        for method in route.methods or ()
        if method != "HEAD" and route.path != "/openapi.json"  # the document itself
    }
    documented = {(m, p) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert served == documented


async def test_answers_while_the_database_is_locked_match_the_published_schema(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_busy_timeout_ms=0)
    async with start_receiver(settings) as r:
        c = Conformance(r, (await r.http.get(f"{r.url}/openapi.json")).json())
        url = r.callback_url("kh-5").removeprefix(r.url)
        registration = {"route": "images/generations", "task_id": "5", "external_task_id": "kh-5"}
        locker = sqlite3.connect(settings.kling_hooks_db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            locked = await c.call("POST", url, json=task_body("5", "succeed"), headers={})
            refused = await c.call("POST", "/tasks", json=registration)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    assert (locked.status_code, refused.status_code) == (503, 503)
    assert locked.headers["retry-after"] == refused.headers["retry-after"] == "5"


async def test_replaying_a_running_delivery_matches_the_published_schema(tmp_path: Path) -> None:
    gate = asyncio.Event()
    plugin = RecordingPlugin(gate=gate)
    async with start_receiver(make_settings(tmp_path), [plugin]) as r:
        c = Conformance(r, (await r.http.get(f"{r.url}/openapi.json")).json())
        await r.post_callback("kh-6", task_body("6", "succeed", "kh-6"))
        [event] = await plugin.wait_for(1)
        busy = await c.call("POST", f"/deliveries/{event.delivery_id}/redeliver")
        gate.set()
    assert busy.status_code == 409


def test_every_bound_in_the_document_is_json_schemas_minimum_or_maximum() -> None:
    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return {k for v in node for k in keys(v)} if isinstance(node, list) else set()

    document = openapi_document()
    assert not keys(document) & {"ge", "le", "gt", "lt"}  # pydantic's names: no bound at all
    limit = document["components"]["schemas"]["PruneRequest"]["properties"]["older_than_ms"]
    assert (limit["minimum"], limit["type"]) == (1, "integer")


def test_the_query_parameters_are_whole_numbers_with_their_bounds() -> None:
    parameters = openapi_document()["paths"]["/tasks"]["get"]["parameters"]
    schemas = {p["name"]: p["schema"] for p in parameters}
    assert (schemas["limit"]["minimum"], schemas["limit"]["maximum"]) == (1, 500)
    assert schemas["cursor"]["type"] == schemas["transition_before"]["type"] == "integer"
    assert schemas["cursor"]["maximum"] == 2**63 - 1
