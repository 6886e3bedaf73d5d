"""The ``kling-hooks`` console script, run as a subprocess against the Kling simulator and a
real receiver, both served on 127.0.0.1 in the test's event loop (the subprocess runs under
``asyncio.create_subprocess_exec`` so the loop keeps serving while it waits)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from receiver.serving import running
from submitter.protocol import Route
from submitter.simulator import Simulator
from tests.conftest import API_TOKEN, SECRET, Receiver, task_body

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
FAST = (0.0, 0.01)
IMAGE_BODY = {"prompt": "a lighthouse at dawn", "n": 2}
VIDEO_BODY = {"prompt": "waves rolling onto a beach", "duration": "5"}


@dataclass(frozen=True)
class Run:
    """What one run of the command gave: exit code, stdout and stderr as text."""

    code: int
    out: str
    err: str


async def kling_hooks(*args: str, env: dict[str, str], cwd: Path) -> Run:
    """Run the console script with exactly ``env``, letting the event loop keep serving."""
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def cli_env(**values: str) -> dict[str, str]:
    """``os.environ`` without any KLING_* variable, plus ``values`` (names in upper case)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    return {**env, **{k.upper(): v for k, v in values.items()}}


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def submit_env(receiver: Receiver, sim_url: str, **values: str) -> dict[str, str]:
    """Settings for submitting to the simulator with callbacks to ``receiver``."""
    base = {
        "kling_api_base": sim_url,
        "kling_api_key": "any-key",
        "kling_hooks_public_url": receiver.url,
        "kling_hooks_secret": SECRET,
        "kling_hooks_api_token": API_TOKEN,
        "kling_hooks_db": str(receiver.runtime.settings.kling_hooks_db),
    }
    return cli_env(**{**base, **values})


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(delay_s=FAST, seed=1)
    yield simulator
    await simulator.aclose()


@pytest.fixture
async def sim_url(sim: Simulator) -> AsyncIterator[str]:
    async with running(sim.app) as url:
        yield url


def only_json_line(text: str) -> dict[str, Any]:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    doc = json.loads(lines[0])
    assert isinstance(doc, dict)
    return doc


# -- submit: rules are checked before anything is sent -------------------------------------


@pytest.mark.parametrize(
    ("route", "data", "named"),
    [
        ("images/generations", {"prompt": "a cat", "n": 12}, ["n", "less than or equal to 9"]),
        ("images/generations", {"n": 2}, ["prompt", "is required"]),
        (
            "images/generations",
            {"prompt": "a cat", "callback_url": "https://elsewhere.example/hook"},
            ["callback_url", "is set by kling-hooks"],
        ),
        ("videos/text2video", {"prompt": "waves", "duration": "7"}, ["duration", "'5'"]),
        ("videos/lip-sync", {"prompt": "x"}, ["videos/lip-sync"]),
    ],
)
async def test_submit_with_a_body_breaking_a_rule_exits_2_and_sends_nothing(
    receiver: Receiver,
    sim: Simulator,
    sim_url: str,
    tmp_path: Path,
    route: str,
    data: dict[str, Any],
    named: list[str],
) -> None:
    run = await kling_hooks(
        "submit", route, "--data", json.dumps(data), env=submit_env(receiver, sim_url), cwd=tmp_path
    )
    assert run.code == 2, run.err
    assert "nothing sent" in run.err
    for part in named:
        assert part in run.err
    assert run.out == ""
    assert sim.requests == []
    assert sim.tasks == {}
    listed = await receiver.http.get(
        f"{receiver.url}/tasks", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert listed.json()["tasks"] == []


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", "@missing-file.json"])
async def test_submit_with_unreadable_data_exits_2_and_sends_nothing(
    receiver: Receiver, sim: Simulator, sim_url: str, tmp_path: Path, data: str
) -> None:
    run = await kling_hooks(
        "submit",
        "images/generations",
        "--data",
        data,
        env=submit_env(receiver, sim_url),
        cwd=tmp_path,
    )
    assert run.code == 2
    assert "--data" in run.err
    assert sim.requests == []


# -- submit, then read the status back -----------------------------------------------------


async def test_submit_then_task_and_tasks_show_the_final_state(
    receiver: Receiver, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    env = submit_env(receiver, sim_url)
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(IMAGE_BODY))

    first = await kling_hooks(
        "submit",
        "images/generations",
        "--data",
        f"@{body_file}",
        "--external-task-id",
        "my-id",
        env=env,
        cwd=tmp_path,
    )
    assert first.code == 0, first.err
    image = only_json_line(first.out)
    assert {"task_id", "external_task_id", "callback_url", "task_status"} <= set(image)
    assert image["external_task_id"] == "my-id"
    assert image["task_status"] == "submitted"
    assert image["callback_url"].startswith(f"{receiver.url}/callbacks/my-id/")
    assert image["registered"] is True
    assert image["task_id"] in sim.tasks
    created = sim.requests[0]
    assert created.method == "POST" and created.path == "/v1/images/generations"
    assert created.json == {
        **IMAGE_BODY,
        "external_task_id": "my-id",
        "callback_url": image["callback_url"],
    }

    second = await kling_hooks(
        "submit", "videos/text2video", "--data", json.dumps(VIDEO_BODY), env=env, cwd=tmp_path
    )
    assert second.code == 0, second.err
    video = only_json_line(second.out)
    assert video["external_task_id"].startswith("kh-")
    assert video["task_id"] in sim.tasks

    await sim.wait_idle()  # every callback delivered, so committed by the receiver
    # A third task that never ends, reported by a callback alone.
    await receiver.post_callback(
        "kh-stuck", task_body("900000000000000009", "processing", "kh-stuck")
    )

    shown = await kling_hooks("task", "my-id", env=env, cwd=tmp_path)
    assert shown.code == 0, shown.err
    assert re.search(r"^task_status\s+succeed$", shown.out, re.MULTILINE)
    assert re.search(rf"^task_id\s+{image['task_id']}$", shown.out, re.MULTILINE)
    assert re.search(r"^route\s+images/generations$", shown.out, re.MULTILINE)
    assert shown.out.count("image: http") == 2
    for status in ("submitted", "processing", "succeed"):
        assert re.search(rf"^{status}\s", shown.out, re.MULTILINE)

    as_json = await kling_hooks("task", image["task_id"], "--json", env=env, cwd=tmp_path)
    assert as_json.code == 0, as_json.err
    task = json.loads(as_json.out)
    assert task["external_task_id"] == "my-id"
    assert task["task_status"] == "succeed"
    assert task["final_unit_deduction"] == "0.4"
    assert task["request"] == {**IMAGE_BODY, "external_task_id": "my-id"}  # no callback_url
    assert [t["task_status"] for t in task["transitions"]] == ["submitted", "processing", "succeed"]

    listed = await kling_hooks("tasks", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.err
    rows = listed.out.strip().splitlines()
    assert rows[0].split() == ["task_id", "external_task_id", "route", "task_status", "updated_at"]
    assert [row.split()[1] for row in rows[1:]] == ["kh-stuck", video["external_task_id"], "my-id"]

    succeeded = await kling_hooks("tasks", "--status", "succeed", "--json", env=env, cwd=tmp_path)
    assert succeeded.code == 0, succeeded.err
    page = json.loads(succeeded.out)
    assert [t["external_task_id"] for t in page["tasks"]] == [video["external_task_id"], "my-id"]
    assert {t["task_status"] for t in page["tasks"]} == {"succeed"}
    assert page["next_cursor"] is None


async def test_task_that_does_not_exist_exits_1_naming_the_404(
    receiver: Receiver, tmp_path: Path
) -> None:
    env = submit_env(receiver, closed_port_url())
    run = await kling_hooks("task", "no-such-task", env=env, cwd=tmp_path)
    assert run.code == 1
    assert "HTTP 404" in run.err
    assert run.out == ""


async def test_tasks_with_a_wrong_api_token_exits_1_naming_the_401(
    receiver: Receiver, tmp_path: Path
) -> None:
    env = submit_env(receiver, closed_port_url(), kling_hooks_api_token="wrong-token")
    run = await kling_hooks("tasks", env=env, cwd=tmp_path)
    assert run.code == 1
    assert "HTTP 401" in run.err


# -- submit: what goes wrong ---------------------------------------------------------------


async def test_kling_api_error_exits_1_with_code_message_and_request_id(
    receiver: Receiver, tmp_path: Path
) -> None:
    sim = Simulator(delay_s=FAST, seed=1, api_key="right")
    async with running(sim.app) as url:
        env = submit_env(receiver, url, kling_api_key="wrong")
        run = await kling_hooks(
            "submit",
            "images/generations",
            "--data",
            json.dumps(IMAGE_BODY),
            env=env,
            cwd=tmp_path,
        )
    assert run.code == 1
    assert run.out == ""
    assert "1002" in run.err
    assert "authorization is invalid: unknown API key" in run.err
    fields = [
        doc
        for doc in (_json_or_none(line) for line in run.err.splitlines())
        if isinstance(doc, dict) and "event" not in doc
    ]
    assert len(fields) == 1
    details = fields[0]
    assert details["code"] == 1002
    assert details["http_status"] == 401
    assert details["message"] == "authorization is invalid: unknown API key"
    assert re.fullmatch(r"[0-9a-f-]{36}", details["request_id"])
    assert f"request_id {details['request_id']}" in run.err
    assert len(sim.requests) == 1  # a final error is not retried
    assert sim.tasks == {}


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


async def test_submit_with_the_receiver_unreachable_still_exits_0_with_a_warning(
    tmp_path: Path, sim: Simulator, sim_url: str
) -> None:
    nowhere = closed_port_url()
    env = cli_env(
        kling_api_base=sim_url,
        kling_api_key="any-key",
        kling_hooks_public_url=nowhere,
        kling_hooks_secret=SECRET,
        kling_hooks_api_token=API_TOKEN,
        kling_hooks_db=str(tmp_path / "kling-hooks.db"),
    )
    run = await kling_hooks(
        "submit",
        "videos/image2video",
        "--data",
        json.dumps({"image": "https://example.com/a.png", "prompt": "slow zoom in"}),
        env=env,
        cwd=tmp_path,
    )
    assert run.code == 0, run.err
    submission = only_json_line(run.out)
    assert submission["registered"] is False
    assert submission["task_id"] in sim.tasks
    assert submission["callback_url"].startswith(f"{nowhere}/callbacks/")
    warning = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "receiver not reached" in warning[0]


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({}, "KLING_API_KEY"),
        ({"kling_access_key": "ak-only"}, "KLING_SECRET_KEY is missing"),
        ({"kling_secret_key": "sk-only-0123456789abcdef0123456789"}, "KLING_ACCESS_KEY is missing"),
    ],
)
async def test_submit_without_kling_keys_exits_non_zero_naming_the_variables(
    tmp_path: Path, sim: Simulator, sim_url: str, keys: dict[str, str], named: str
) -> None:
    env = cli_env(
        kling_api_base=sim_url,
        kling_hooks_public_url=closed_port_url(),
        kling_hooks_db=str(tmp_path / "kling-hooks.db"),
        **keys,
    )
    run = await kling_hooks(
        "submit", "images/generations", "--data", json.dumps(IMAGE_BODY), env=env, cwd=tmp_path
    )
    assert run.code != 0
    assert "KLING_API_KEY" in run.err
    assert named in run.err
    assert sim.requests == []


async def test_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = cli_env(kling_hooks_max_body_bytes="abc", kling_hooks_db=str(tmp_path / "k.db"))
    run = await kling_hooks("token", env=env, cwd=tmp_path)
    assert run.code == 2
    assert "KLING_HOOKS_MAX_BODY_BYTES" in run.err


async def test_token_for_a_database_that_does_not_exist_exits_2_and_creates_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "elsewhere.db"
    run = await kling_hooks("token", "--db", str(missing), env=cli_env(), cwd=tmp_path)
    assert run.code == 2
    assert "no database at" in run.err and str(missing) in run.err
    assert not missing.exists()


# -- demo ----------------------------------------------------------------------------------


async def test_demo_runs_one_task_per_route_to_its_end(tmp_path: Path) -> None:
    run = await kling_hooks("demo", env=cli_env(), cwd=tmp_path)
    assert run.code == 0, run.err
    for route in Route:
        assert route.value in run.out
    assert "5 tasks ended" in run.out
