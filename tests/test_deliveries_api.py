"""The delivery side of the status API (``GET /tasks/{id}`` deliveries and files,
``GET /deliveries``, ``POST /deliveries/{id}/redeliver``, ``POST /deliveries/redeliver``,
``GET /plugins``) against a real uvicorn server, SQLite file and dispatcher, with recording
plugins. Tests wait on the dispatcher's outcome listener, never on the clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from receiver.plugins import Event, Plugin, PluginSettings, SavedFile
from receiver.store.deliveries import Job, Outcome
from submitter.protocol import TaskStatus
from tests.conftest import (
    API_TOKEN,
    Receiver,
    RecordingPlugin,
    make_settings,
    start_receiver,
    task_body,
)
from tests.test_api import assert_error

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FAILURE = "RuntimeError: recording plugin failure"
DELIVERY_FIELDS = {"id", "plugin", "state", "attempts", "next_attempt_at", "last_error"}
LISTED_FIELDS = {
    *DELIVERY_FIELDS,
    "created_at",
    "updated_at",
    "task_id",
    "external_task_id",
    "task_status",
}
SAVED = SavedFile("https://cdn.example/T0/0.png", "/srv/kling/T0/0.png", 1234, "ab" * 32)


def once(name: str, *, fail_first: int = 0, files: Sequence[SavedFile] = ()) -> RecordingPlugin:
    """A recording plugin with one attempt per delivery: a failure makes it ``dead`` at once."""
    return RecordingPlugin(
        PluginSettings(retry_schedule_s=[]), name=name, fail_first=fail_first, files=files
    )


class Outcomes:
    """Every attempt's outcome as the dispatcher commits it; :meth:`wait_for` waits on an
    event set by the dispatcher's listener."""

    def __init__(self, receiver: Receiver) -> None:
        self.seen: list[tuple[int, str]] = []
        self._changed = asyncio.Event()
        receiver.services.dispatcher.add_listener(self._record)

    def _record(self, job: Job, outcome: Outcome) -> None:
        self.seen.append((job.event.delivery_id, outcome.state.value))
        self._changed.set()

    async def until(self, done: Callable[[], bool], timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, count: int) -> list[tuple[int, str]]:
        """Wait until ``count`` attempts have ended; returns ``(delivery_id, state)`` each."""
        await self.until(lambda: len(self.seen) >= count)
        return list(self.seen)


@contextlib.asynccontextmanager
async def receiving(
    tmp_path: Path, plugins: Sequence[Plugin], **settings: Any
) -> AsyncIterator[tuple[Receiver, Outcomes]]:
    async with start_receiver(make_settings(tmp_path, **settings), plugins=plugins) as r:
        yield r, Outcomes(r)


async def succeed(r: Receiver, *names: str) -> None:
    """One ``succeed`` callback per task name (task ``name``, external_task_id ``kh-name``)."""
    for name in names:
        answer = await r.post_callback(f"kh-{name}", task_body(name, "succeed", f"kh-{name}"))
        assert answer.json()["verdict"] == "new"


async def deliveries(r: Receiver, **params: str) -> httpx.Response:
    return await r.http.get(f"{r.url}/deliveries", params=params, headers=AUTH)


async def listed(r: Receiver, **params: str) -> list[dict[str, Any]]:
    answer = await deliveries(r, **params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["deliveries"]
    return items


async def redeliver_one(r: Receiver, id_: object) -> httpx.Response:
    return await r.http.post(f"{r.url}/deliveries/{id_}/redeliver", headers=AUTH)


async def redeliver_many(r: Receiver, doc: Any = None, **kw: Any) -> httpx.Response:
    return await r.http.post(f"{r.url}/deliveries/redeliver", json=doc, headers=AUTH, **kw)


# -- GET /tasks/{id}: deliveries and files -------------------------------------------------


async def test_task_shows_each_delivery_by_id_with_state_attempts_and_last_error(
    tmp_path: Path,
) -> None:
    async with receiving(tmp_path, [once("ok"), once("bad", fail_first=99)]) as (r, outcomes):
        await r.post_callback("kh-T0", task_body("T0", "processing", "kh-T0"))
        await succeed(r, "T0")
        await outcomes.wait_for(4)
        task = (await r.get_task("kh-T0")).json()
    shown = task["deliveries"]
    assert all(DELIVERY_FIELDS <= set(d) for d in shown)
    assert [d["id"] for d in shown] == sorted(d["id"] for d in shown)
    assert [
        (d["plugin"], d["task_status"], d["state"], d["attempts"], d["last_error"]) for d in shown
    ] == [
        ("ok", "processing", "done", 1, None),
        ("bad", "processing", "dead", 1, FAILURE),
        ("ok", "succeed", "done", 1, None),
        ("bad", "succeed", "dead", 1, FAILURE),
    ]
    assert [d["next_attempt_at"] for d in shown] == [None] * 4
    assert task["files"] == []


async def test_task_shows_a_failed_delivery_with_its_next_attempt_time(tmp_path: Path) -> None:
    plugin = RecordingPlugin(PluginSettings(retry_schedule_s=[60]), fail_first=1)
    async with receiving(tmp_path, [plugin]) as (r, outcomes):
        await succeed(r, "T0")
        await outcomes.wait_for(1)
        (delivery,) = (await r.get_task("T0")).json()["deliveries"]
    assert delivery["state"] == "failed"
    assert delivery["attempts"] == 1
    assert delivery["last_error"] == FAILURE
    # The second attempt waits 60 s with +/-20% jitter: at least 48 s after the first began.
    assert delivery["next_attempt_at"] >= delivery["created_at"] + 48_000


async def test_task_lists_the_files_its_plugin_saved(tmp_path: Path) -> None:
    async with receiving(tmp_path, [once("saver", files=[SAVED])]) as (r, outcomes):
        await succeed(r, "T0")
        assert await outcomes.wait_for(1) == [(1, "done")]
        task = (await r.get_task("kh-T0")).json()
    assert task["files"] == [SAVED.to_json()]
    assert SAVED.to_json()["content_type"] is None  # the plugin recorded none


async def test_task_without_plugins_has_no_deliveries_and_no_files(receiver: Receiver) -> None:
    await succeed(receiver, "T0")
    task = (await receiver.get_task("T0")).json()
    assert task["deliveries"] == []
    assert task["files"] == []


# -- GET /deliveries -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def six_deliveries(tmp_path: Path) -> AsyncIterator[Receiver]:
    """Tasks T0, T1, T2 succeed; plugin ``alpha`` fails (3 dead), ``beta`` works (3 done).
    Delivery ids: T0 alpha 1, beta 2; T1 alpha 3, beta 4; T2 alpha 5, beta 6."""
    async with receiving(tmp_path, [once("alpha", fail_first=99), once("beta")]) as (r, seen):
        await succeed(r, "T0", "T1", "T2")
        await seen.wait_for(6)
        yield r


async def test_deliveries_are_listed_newest_first_with_their_task(tmp_path: Path) -> None:
    async with six_deliveries(tmp_path) as r:
        answer = await deliveries(r)
    page = answer.json()
    assert page["next_cursor"] is None
    items = page["deliveries"]
    assert all(set(d) == LISTED_FIELDS for d in items)
    assert [d["id"] for d in items] == [6, 5, 4, 3, 2, 1]
    assert [(d["task_id"], d["external_task_id"], d["plugin"]) for d in items[:2]] == [
        ("T2", "kh-T2", "beta"),
        ("T2", "kh-T2", "alpha"),
    ]
    assert {d["task_status"] for d in items} == {"succeed"}
    assert [d["state"] for d in items] == ["done", "dead"] * 3
    assert [d["last_error"] for d in items] == [None, FAILURE] * 3


async def test_deliveries_filter_by_state_and_by_plugin(tmp_path: Path) -> None:
    async with six_deliveries(tmp_path) as r:
        dead = await listed(r, state="dead")
        beta = await listed(r, plugin="beta")
        beta_dead = await listed(r, plugin="beta", state="dead")
        alpha_dead = await listed(r, plugin="alpha", state="dead")
        nobody = await listed(r, plugin="nobody")
    assert [(d["id"], d["plugin"], d["state"]) for d in dead] == [
        (5, "alpha", "dead"),
        (3, "alpha", "dead"),
        (1, "alpha", "dead"),
    ]
    assert [(d["id"], d["plugin"], d["state"]) for d in beta] == [
        (6, "beta", "done"),
        (4, "beta", "done"),
        (2, "beta", "done"),
    ]
    assert beta_dead == []
    assert [d["id"] for d in alpha_dead] == [5, 3, 1]
    assert nobody == []


async def test_deliveries_limit_and_cursor_walk_every_delivery_exactly_once(
    tmp_path: Path,
) -> None:
    async with six_deliveries(tmp_path) as r:
        seen: list[int] = []
        sizes: list[int] = []
        params = {"limit": "4"}
        while True:
            page = (await deliveries(r, **params)).json()
            sizes.append(len(page["deliveries"]))
            seen += [d["id"] for d in page["deliveries"]]
            if page["next_cursor"] is None:
                break
            params = {"limit": "4", "cursor": page["next_cursor"]}
        first = (await deliveries(r, state="dead", limit="2")).json()
        second = (await deliveries(r, state="dead", limit="2", cursor=first["next_cursor"])).json()
    assert sizes == [4, 2]
    assert seen == [6, 5, 4, 3, 2, 1]
    assert [d["id"] for d in first["deliveries"]] == [5, 3]
    assert [d["id"] for d in second["deliveries"]] == [1]
    assert second["next_cursor"] is None


async def test_deliveries_with_an_unknown_state_is_400_naming_the_allowed_states(
    receiver: Receiver,
) -> None:
    message = assert_error(await deliveries(receiver, state="zombie"), 400)
    assert "'zombie'" in message
    for state in ("pending", "running", "done", "failed", "dead"):
        assert state in message


@pytest.mark.parametrize(
    "params",
    [{"state": "DEAD"}, {"limit": "0"}, {"limit": "501"}, {"limit": "ten"}, {"cursor": "abc"}],
)
async def test_deliveries_with_a_bad_parameter_is_400(
    receiver: Receiver, params: dict[str, str]
) -> None:
    assert_error(await deliveries(receiver, **params), 400)


# -- POST /deliveries/{id}/redeliver -------------------------------------------------------


async def test_redelivering_a_dead_delivery_runs_the_handler_again_until_done(
    tmp_path: Path,
) -> None:
    plugin = once("recording", fail_first=1)
    async with receiving(tmp_path, [plugin]) as (r, outcomes):
        await succeed(r, "T0")
        [(delivery_id, state)] = await outcomes.wait_for(1)
        assert state == "dead"
        answer = await redeliver_one(r, delivery_id)
        assert answer.status_code == 200
        assert answer.json() == {"ok": True, "redelivered": 1}
        assert await outcomes.wait_for(2) == [(delivery_id, "dead"), (delivery_id, "done")]
        (delivery,) = (await r.get_task("T0")).json()["deliveries"]
    first, again = plugin.events
    assert first.idempotency_key == again.idempotency_key == "T0:succeed"
    assert first.delivery_id == again.delivery_id == delivery_id
    assert (first.attempt, again.attempt) == (1, 1)  # a replay starts a fresh schedule
    assert delivery["state"] == "done"
    assert delivery["attempts"] == 1
    assert delivery["last_error"] is None


@pytest.mark.parametrize("id_", ["999", "0", "abc", "1.5", "99999999999999999999"])
async def test_redelivering_an_unknown_or_malformed_delivery_id_is_404(
    tmp_path: Path, id_: str
) -> None:
    async with receiving(tmp_path, [once("recording")]) as (r, outcomes):
        await succeed(r, "T0")
        await outcomes.wait_for(1)
        answer = await redeliver_one(r, id_)
        assert_error(answer, 404)
        assert [d["state"] for d in await listed(r)] == ["done"]


async def test_redelivering_a_running_delivery_is_409_and_leaves_it_running(
    tmp_path: Path,
) -> None:
    hanging = RecordingPlugin(PluginSettings(retry_schedule_s=[], timeout_s=5), hang=True)
    async with receiving(tmp_path, [hanging], kling_hooks_shutdown_grace_s=0) as (r, _):
        await succeed(r, "T0")
        await hanging.wait_for(1)  # claimed (running) before its handler started
        (running,) = await listed(r)
        message = assert_error(await redeliver_one(r, running["id"]), 409)
        assert "running" in message
        assert [(d["id"], d["state"], d["attempts"]) for d in await listed(r)] == [
            (running["id"], "running", 1)
        ]
    assert len(hanging.events) == 1


async def test_deliveries_of_a_plugin_no_longer_loaded_are_not_replayed(
    tmp_path: Path,
) -> None:
    async with receiving(tmp_path, [once("gone", fail_first=1)]) as (r, outcomes):
        await succeed(r, "T0")
        [(delivery_id, _)] = await outcomes.wait_for(1)
    async with receiving(tmp_path, [once("kept")]) as (r, _):
        message = assert_error(await redeliver_one(r, delivery_id), 409)
        assert message == (
            f"delivery {delivery_id} belongs to plugin 'gone', which is not loaded: "
            "enable [plugins.gone] and restart, then replay it"
        )
        bulk = await r.http.post(
            f"{r.url}/deliveries/redeliver", json={"plugin": "gone"}, headers=AUTH
        )
        assert assert_error(bulk, 409) == "plugin='gone' is not loaded (loaded: kept)"
        everything = await r.http.post(f"{r.url}/deliveries/redeliver", json={}, headers=AUTH)
        assert everything.json() == {"ok": True, "redelivered": 0}
        assert [(d["plugin"], d["state"]) for d in await listed(r)] == [("gone", "dead")]


# -- POST /deliveries/redeliver ------------------------------------------------------------


async def test_bulk_redeliver_replays_only_the_deliveries_matching_the_filter(
    tmp_path: Path,
) -> None:
    alpha, beta = once("alpha", fail_first=3), once("beta", fail_first=1)
    async with receiving(tmp_path, [alpha, beta]) as (r, outcomes):
        await succeed(r, "T0", "T1", "T2")
        await outcomes.wait_for(6)  # alpha: 3 dead; beta: 1 dead, 2 done
        (beta_dead,) = await listed(r, plugin="beta", state="dead")

        answer = await redeliver_many(r, {"plugin": "alpha"})  # state defaults to dead
        assert answer.status_code == 200
        assert answer.json() == {"ok": True, "redelivered": 3}
        await outcomes.wait_for(9)
        assert len(alpha.events) == 6
        assert len(beta.events) == 3
        assert [d["id"] for d in await listed(r, state="dead")] == [beta_dead["id"]]

        answer = await redeliver_many(r, {"plugin": "beta", "state": "done"})
        assert answer.json() == {"ok": True, "redelivered": 2}
        await outcomes.wait_for(11)
        assert len(alpha.events) == 6
        assert len(beta.events) == 5
        assert [d["id"] for d in await listed(r, state="dead")] == [beta_dead["id"]]

        empty = await r.http.post(f"{r.url}/deliveries/redeliver", headers=AUTH)
        assert empty.json() == {"ok": True, "redelivered": 1}  # an empty body: every dead one
        await outcomes.wait_for(12)
        assert (await redeliver_many(r, {})).json() == {"ok": True, "redelivered": 0}
        assert {d["state"] for d in await listed(r)} == {"done"}
    assert len(beta.events) == 6


async def test_bulk_redeliver_since_replays_only_deliveries_created_at_or_after_it(
    tmp_path: Path,
) -> None:
    plugin = once("recording")
    async with receiving(tmp_path, [plugin]) as (r, outcomes):
        await succeed(r, "T0", "T1", "T2")
        await outcomes.wait_for(3)
        items = await listed(r)
        since = items[0]["created_at"]  # the newest delivery's
        expected = sum(1 for d in items if d["created_at"] >= since)
        later = await redeliver_many(r, {"state": "done", "since": since + 1})
        assert later.json() == {"ok": True, "redelivered": 0}
        answer = await redeliver_many(r, {"state": "done", "since": since})
        assert answer.json() == {"ok": True, "redelivered": expected}
        await outcomes.wait_for(3 + expected)
    assert len(plugin.events) == 3 + expected
    assert plugin.events[-1].task_id == "T2"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"state": "running"}, "state"),
        ({"state": "zombie"}, "state"),
        ({"since": "yesterday"}, "since"),
        ({"since": -1}, "since"),
        ({"since": True}, "since"),
        ({"since": 1.5}, "since"),
        ({"plugin": 5}, "plugin"),
        ({"colour": "red"}, "colour"),
        (["dead"], "body"),
    ],
)
async def test_bulk_redeliver_with_a_bad_filter_is_422_naming_the_field(
    receiver: Receiver, doc: Any, field: str
) -> None:
    message = assert_error(await redeliver_many(receiver, doc), 422)
    if field != "body":
        assert message.startswith(field)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"dead"])
async def test_bulk_redeliver_with_a_body_that_is_not_json_is_400(
    receiver: Receiver, content: bytes
) -> None:
    answer = await redeliver_many(receiver, content=content)
    assert_error(answer, 400)


# -- GET /plugins --------------------------------------------------------------------------


class SecretSettings(PluginSettings):
    token: SecretStr
    channel: str


class SecretPlugin(Plugin):
    """A plugin whose settings hold a secret."""

    name = "secretive"
    version = "2.1"
    settings_model = SecretSettings
    default_statuses = frozenset({TaskStatus.SUCCEED, TaskStatus.FAILED})

    async def handle(self, event: Event) -> None:
        return None


SECRET_TOKEN = "xoxb-do-not-show-me"


def secret_plugin() -> SecretPlugin:
    return SecretPlugin(SecretSettings(token=SecretStr(SECRET_TOKEN), channel="#renders"))


async def test_plugins_lists_each_enabled_plugin_with_its_secrets_masked(tmp_path: Path) -> None:
    async with receiving(tmp_path, [secret_plugin(), once("recording")]) as (r, _):
        answer = await r.http.get(f"{r.url}/plugins", headers=AUTH)
    assert answer.status_code == 200
    assert SECRET_TOKEN not in answer.text
    secretive, recording = answer.json()["plugins"]
    assert secretive["name"] == "secretive"
    assert secretive["version"] == "2.1"
    assert secretive["origin"] == "test"
    assert secretive["statuses"] == ["failed", "succeed"]
    assert secretive["routes"] is None
    assert secretive["settings"]["token"] == "**********"
    assert secretive["settings"]["channel"] == "#renders"
    assert secretive["settings"]["retry_schedule_s"] == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert recording["name"] == "recording"
    assert recording["settings"]["retry_schedule_s"] == []


async def test_plugins_is_empty_without_plugins(receiver: Receiver) -> None:
    answer = await receiver.http.get(f"{receiver.url}/plugins", headers=AUTH)
    assert answer.json() == {"plugins": []}


# -- authorization, OpenAPI ----------------------------------------------------------------

NEW_ROUTES = [
    ("GET", "/deliveries"),
    ("POST", "/deliveries/1/redeliver"),
    ("POST", "/deliveries/redeliver"),
    ("GET", "/plugins"),
]


@pytest.mark.parametrize(("method", "path"), NEW_ROUTES)
@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer not-the-token"}])
async def test_delivery_and_plugin_routes_answer_401_without_the_right_bearer(
    tmp_path: Path, method: str, path: str, auth: dict[str, str]
) -> None:
    plugin = once("recording", fail_first=1)
    async with receiving(tmp_path, [plugin]) as (r, outcomes):
        await succeed(r, "T0")
        await outcomes.wait_for(1)
        answer = await r.http.request(method, f"{r.url}{path}", headers=auth)
        assert_error(answer, 401)
        assert answer.headers["www-authenticate"] == "Bearer"
        assert [d["state"] for d in await listed(r)] == ["dead"]  # nothing was replayed
    assert len(plugin.events) == 1
