"""The ``kling-hooks`` console script, run as a subprocess against the Kling simulator and a
real receiver, both served on 127.0.0.1 in the test's event loop (the subprocess runs under
``asyncio.create_subprocess_exec`` so the loop keeps serving while it waits)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from receiver import cli
from receiver.serving import running
from submitter.protocol import Route
from submitter.simulator import Simulator
from tests.conftest import (
    API_TOKEN,
    SECRET,
    Receiver,
    make_settings,
    postgres_url,
    serve,
    start_receiver,
    task_body,
)
from tests.test_deliveries_api import (
    FAILURE,
    SAVED,
    SECRET_TOKEN,
    Outcomes,
    once,
    secret_plugin,
    succeed,
)

pytestmark = pytest.mark.both_backends

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
# The console script imports this tree's packages, not a copy installed earlier.
TREE = str(Path(__file__).resolve().parents[1])
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
    """``os.environ`` without any KLING_* variable, plus ``values`` (names in upper case), with
    this tree first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    if (url := postgres_url()) is not None:  # a [postgres] test: commands use its database
        env["KLING_HOOKS_DATABASE_URL"] = url
    return {**env, "PYTHONPATH": TREE, **{k.upper(): v for k, v in values.items()}}


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
        "kling_hooks_api_url": receiver.url,
        "kling_hooks_secret": SECRET,
        "kling_hooks_api_token": API_TOKEN,
        "kling_hooks_db": str(receiver.services.settings.kling_hooks_db),
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


async def test_submit_without_kling_credentials_exits_2_with_one_line(
    receiver: Receiver, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    env = submit_env(receiver, sim_url)
    del env["KLING_API_KEY"]
    run = await kling_hooks(
        "submit", "images/generations", "--data", json.dumps(IMAGE_BODY), env=env, cwd=tmp_path
    )
    assert run.code == 2
    assert run.err.startswith("error: no Kling credentials") and run.err.count("\n") == 1
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


@pytest.mark.parametrize(("flags", "code"), [([], 3), (["--allow-unregistered"], 0)])
async def test_submit_with_the_receiver_unreachable_exits_3_with_a_warning_unless_allowed(
    tmp_path: Path, sim: Simulator, sim_url: str, flags: list[str], code: int
) -> None:
    nowhere = closed_port_url()
    env = cli_env(
        kling_api_base=sim_url,
        kling_api_key="any-key",
        kling_hooks_public_url=nowhere,
        kling_hooks_api_url=nowhere,
        kling_hooks_secret=SECRET,
        kling_hooks_api_token=API_TOKEN,
        kling_hooks_db=str(tmp_path / "kling-hooks.db"),
    )
    run = await kling_hooks(
        "submit",
        "videos/image2video",
        "--data",
        json.dumps({"image": "https://example.com/a.png", "prompt": "slow zoom in"}),
        *flags,
        env=env,
        cwd=tmp_path,
    )
    assert run.code == code, run.err
    submission = only_json_line(run.out)
    assert submission["registered"] is False
    assert submission["task_id"] in sim.tasks
    assert submission["callback_url"].startswith(f"{nowhere}/callbacks/")
    warning = [line for line in run.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "could not register the task with the receiver" in warning[0]


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
        kling_hooks_api_url=closed_port_url(),
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
    assert run.err.startswith("error: bad setting: KLING_HOOKS_MAX_BODY_BYTES: ")
    assert len(run.err.splitlines()) == 1  # one line, no traceback


@pytest.mark.sqlite_only  # about --db and the SQLite file it names
async def test_token_for_a_database_that_does_not_exist_exits_2_and_creates_nothing(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "elsewhere.db"
    run = await kling_hooks("token", "--db", str(missing), env=cli_env(), cwd=tmp_path)
    assert run.code == 2
    assert "no database at" in run.err and str(missing) in run.err
    assert not missing.exists()


# -- deliveries, redeliver, plugins --------------------------------------------------------

DELIVERY_HEADERS = [
    "id",
    "plugin",
    "state",
    "attempts",
    "next_attempt_at",
    "external_task_id",
    "task_status",
    "last_error",
]


async def test_deliveries_prints_a_table_and_redeliver_replays_one_by_id(tmp_path: Path) -> None:
    alpha, beta = once("alpha", fail_first=1), once("beta")
    async with start_receiver(make_settings(tmp_path), plugins=[alpha, beta]) as r:
        outcomes = Outcomes(r)
        await succeed(r, "T0")
        await outcomes.wait_for(2)  # delivery 1 (alpha) dead, 2 (beta) done
        env = submit_env(r, closed_port_url())

        table = await kling_hooks("deliveries", env=env, cwd=tmp_path)
        assert table.code == 0, table.err
        header, *rows = table.out.strip().splitlines()
        assert header.split() == DELIVERY_HEADERS
        assert re.fullmatch(r"2\s+beta\s+done\s+1\s+-\s+kh-T0\s+succeed\s+-", rows[0])
        assert re.fullmatch(rf"1\s+alpha\s+dead\s+1\s+-\s+kh-T0\s+succeed\s+{FAILURE}", rows[1])
        assert len(rows) == 2

        first_page = await kling_hooks("deliveries", "--limit", "1", env=env, cwd=tmp_path)
        assert first_page.out.strip().splitlines()[-1] == "(more: --cursor 2)"
        next_page = await kling_hooks(
            "deliveries", "--limit", "1", "--cursor", "2", env=env, cwd=tmp_path
        )
        assert next_page.code == 0, next_page.err
        header, row = next_page.out.strip().splitlines()  # the last page: no "(more: ...)"
        assert row.split()[:2] == ["1", "alpha"]

        dead = await kling_hooks("deliveries", "--state", "dead", "--json", env=env, cwd=tmp_path)
        assert dead.code == 0, dead.err
        assert [d["id"] for d in json.loads(dead.out)["deliveries"]] == [1]

        replay = await kling_hooks("redeliver", "1", env=env, cwd=tmp_path)
        assert replay.code == 0, replay.err
        assert replay.out.strip() == "1 delivery replayed"
        assert (await outcomes.wait_for(3))[-1] == (1, "done")

        missing = await kling_hooks("redeliver", "999", env=env, cwd=tmp_path)
        assert missing.code == 1
        assert "HTTP 404" in missing.err
    assert len(alpha.events) == 2
    assert len(beta.events) == 1


async def test_redeliver_all_replays_the_deliveries_matching_the_filter(tmp_path: Path) -> None:
    alpha, beta = once("alpha", fail_first=2), once("beta", fail_first=1)
    async with start_receiver(make_settings(tmp_path), plugins=[alpha, beta]) as r:
        outcomes = Outcomes(r)
        await succeed(r, "T0", "T1")
        await outcomes.wait_for(4)  # alpha: 2 dead; beta: 1 dead, 1 done
        env = submit_env(r, closed_port_url())

        run = await kling_hooks("redeliver", "--all", "--plugin", "alpha", env=env, cwd=tmp_path)
        assert run.code == 0, run.err
        assert run.out.strip() == "2 deliveries replayed"
        await outcomes.wait_for(6)

        future = "2100-01-01T00:00:00Z"
        run = await kling_hooks("redeliver", "--all", "--since", future, env=env, cwd=tmp_path)
        assert run.out.strip() == "0 deliveries replayed"

        run = await kling_hooks(
            "redeliver", "--all", "--since", "2020-01-01", env=env, cwd=tmp_path
        )
        assert run.out.strip() == "1 delivery replayed"  # beta's dead one: state defaults to dead
        await outcomes.wait_for(7)

        oldest = min(d["created_at"] for d in await deliveries_of(r))
        run = await kling_hooks(
            "redeliver",
            "--all",
            "--state",
            "done",
            "--plugin",
            "beta",
            "--since",
            str(oldest),
            env=env,
            cwd=tmp_path,
        )
        assert run.out.strip() == "2 deliveries replayed"
        await outcomes.wait_for(9)
    assert (len(alpha.events), len(beta.events)) == (4, 5)


async def deliveries_of(r: Receiver) -> list[dict[str, Any]]:
    answer = await r.http.get(
        f"{r.url}/deliveries", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    items: list[dict[str, Any]] = answer.json()["deliveries"]
    return items


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "delivery ID or --all"),
        (["1", "--all"], "delivery ID or --all"),
        (["1", "--plugin", "alpha"], "go with --all"),
        (["--all", "--since", "yesterday"], "'yesterday'"),
        (["one"], "'one' is not a valid integer"),
        (["--all", "--state", "running"], "'running' is not one of"),
        (["--every"], "--every"),
    ],
)
async def test_redeliver_used_wrongly_exits_2_and_sends_nothing(
    tmp_path: Path, args: list[str], named: str
) -> None:
    env = cli_env(kling_hooks_api_url=closed_port_url(), kling_hooks_api_token=API_TOKEN)
    run = await kling_hooks("redeliver", *args, env=env, cwd=tmp_path)
    assert run.code == 2
    assert named in run.err
    assert run.err.startswith("error: ")
    assert len(run.err.splitlines()) == 1  # one line: no usage block, no traceback
    assert run.out == ""


async def test_plugins_prints_the_enabled_plugins_and_json_masks_secrets(tmp_path: Path) -> None:
    plugins = [secret_plugin(), once("recording")]
    async with start_receiver(make_settings(tmp_path), plugins=plugins) as r:
        env = submit_env(r, closed_port_url())
        table = await kling_hooks("plugins", env=env, cwd=tmp_path)
        as_json = await kling_hooks("plugins", "--json", env=env, cwd=tmp_path)
    assert table.code == 0, table.err
    assert [line.split() for line in table.out.strip().splitlines()] == [
        ["plugin", "version", "statuses", "routes", "started", "origin"],
        ["secretive", "2.1", "failed,succeed", "all", "yes", "test"],
        ["recording", "1.0", "failed,processing,submitted,succeed", "all", "yes", "test"],
    ]
    assert as_json.code == 0, as_json.err
    assert SECRET_TOKEN not in as_json.out
    secretive, _ = json.loads(as_json.out)["plugins"]
    assert secretive["settings"]["token"] == "**********"
    assert secretive["settings"]["channel"] == "#renders"


async def test_task_prints_its_deliveries_and_saved_files(tmp_path: Path) -> None:
    plugins = [once("saver", files=[SAVED]), once("bad", fail_first=1)]
    async with start_receiver(make_settings(tmp_path), plugins=plugins) as r:
        outcomes = Outcomes(r)
        await succeed(r, "T0")
        await outcomes.wait_for(2)
        run = await kling_hooks("task", "kh-T0", env=submit_env(r, closed_port_url()), cwd=tmp_path)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines.index("") < lines.index(next(x for x in lines if x.startswith("id ")))
    assert re.search(r"^1\s+saver\s+done\s+1\s+-\s+succeed\s+-$", run.out, re.MULTILINE)
    assert re.search(rf"^2\s+bad\s+dead\s+1\s+-\s+succeed\s+{FAILURE}$", run.out, re.MULTILINE)
    assert re.search(r"^file\s+path\s+bytes\s+sha256$", run.out, re.MULTILINE)
    file_row = rf"^{re.escape(SAVED.url)}\s+{SAVED.path}\s+1234\s+{SAVED.sha256}$"
    assert re.search(file_row, run.out, re.MULTILINE)


# -- serve --plugins-dir -------------------------------------------------------------------

ECHO_PLUGIN = """
from receiver.plugins import Plugin


class Echo(Plugin):
    name = "echo"
    version = "0.1"

    async def handle(self, event):
        return None


plugin = Echo
"""


async def test_serve_with_a_plugins_dir_that_does_not_exist_exits_2_naming_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-dir"
    env = cli_env(kling_hooks_db=str(tmp_path / "k.db"))
    run = await kling_hooks("serve", "--plugins-dir", str(missing), env=env, cwd=tmp_path)
    assert run.code == 2
    assert str(missing) in run.err


@pytest.mark.sqlite_only  # about --db and the SQLite file it names
async def test_serve_runs_the_plugins_of_its_plugins_dir(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "echo.py").write_text(ECHO_PLUGIN)
    config = tmp_path / "kling-hooks.toml"
    config.write_text("[plugins.echo]\nretry_schedule_s = [1]\n")
    db = tmp_path / "given.db"
    env = cli_env(kling_hooks_api_token=API_TOKEN)
    tree = {"PYTHONPATH": TREE}
    async with serve(
        config, tmp_path, "--plugins-dir", str(folder), "--db", str(db), env=tree
    ) as server:
        run = await kling_hooks("plugins", "--json", "--url", server.url, env=env, cwd=tmp_path)
    assert run.code == 0, run.err
    assert db.exists()  # --db, not the default ./kling-hooks.db
    assert not (tmp_path / "kling-hooks.db").exists()
    (echo,) = json.loads(run.out)["plugins"]
    assert echo["name"] == "echo"
    assert echo["version"] == "0.1"
    assert echo["origin"] == str(folder / "echo.py")
    assert echo["settings"]["retry_schedule_s"] == [1.0]


# -- demo ----------------------------------------------------------------------------------


async def test_demo_runs_one_task_per_route_to_its_end_with_downloads_and_slack(
    tmp_path: Path,
) -> None:
    run = await kling_hooks("demo", "--dir", str(tmp_path / "demo"), env=cli_env(), cwd=tmp_path)
    assert run.code == 0, run.err
    for route in Route:
        assert route.value in run.out
    summary = re.search(
        r"5 tasks ended in [\d.]+ s: (\d) succeed, (\d) failed\. (\d+) files saved, "
        r"(\d+) Slack messages sent\.",
        run.out,
    )
    assert summary, run.out
    succeeded, failed, files, messages = map(int, summary.groups())
    assert succeeded + failed == 5
    assert messages == 5  # one per terminal transition: slack wants succeed and failed
    saved = sorted((tmp_path / "demo" / "downloads").rglob("*.*"))
    assert len(saved) == files >= succeeded  # at least one result per succeeded task
    for path in saved:  # each listed with its size, relative to the demo directory
        relative = path.relative_to(tmp_path / "demo")
        assert re.search(rf"{re.escape(str(relative))}\s+{path.stat().st_size}\s", run.out)


async def test_demo_runs_again_in_the_same_directory_with_a_database_of_its_own(
    tmp_path: Path,
) -> None:
    first = await kling_hooks("demo", "--dir", str(tmp_path), env=cli_env(), cwd=tmp_path)
    again = await kling_hooks("demo", "--dir", str(tmp_path), env=cli_env(), cwd=tmp_path)
    assert (first.code, again.code) == (0, 0), again.out + again.err
    assert f"database {tmp_path / 'demo-2.db'}" in again.out
    assert "\x1b[" not in again.out + again.err  # no terminal colours into a pipe


async def test_status_commands_need_no_database_when_the_api_token_is_set(
    receiver: Receiver, tmp_path: Path
) -> None:
    # KLING_HOOKS_DB points nowhere: the token from the environment is all a client needs.
    env = cli_env(kling_hooks_api_token=API_TOKEN, kling_hooks_db=str(tmp_path / "none.db"))
    run = await kling_hooks("deliveries", "--url", receiver.url, env=env, cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.out.startswith("id  plugin")
    assert not (tmp_path / "none.db").exists()


# -- the command line itself: version, help, the shared options ----------------------------


async def test_version_prints_the_installed_package_version(tmp_path: Path) -> None:
    run = await kling_hooks("--version", env=cli_env(), cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.out == f"kling-hooks, version {importlib.metadata.version('kling-hooks')}\n"


def test_bare_command_exits_2_showing_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("serve", "submit", "tasks", "deliveries", "redeliver", "demo"):
        assert re.search(rf"^  {name}\s", err, re.MULTILINE), err


def test_unknown_command_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tasklist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No such command 'tasklist'.")
    assert len(err.splitlines()) == 1


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every command under ``group``, subcommands of its groups included, by ``"a b"`` name."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_commands(command, (*path, name)))
        else:
            found[" ".join((*path, name))] = command
    return found


COMMANDS = _commands(cli.cli)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command_gives_each_option_help_and_its_default(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert cli.main([*name.split(), "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # help lines are wrapped
    options = [p for p in COMMANDS[name].params if isinstance(p, click.Option)]
    assert options or COMMANDS[name].params  # `config check FILE` takes an argument only
    for option in options:
        assert option.help, f"{name} {option.opts[0]} has no help"
        assert option.help.split()[0] in shown
        if option.is_flag:
            continue  # off unless given
        if isinstance(option.show_default, str):
            assert f"[default: ({option.show_default})]" in shown, option.opts[0]
        elif option.required:
            assert "[required]" in shown
        else:
            default = '""' if option.default == "" else str(option.default)
            assert re.search(rf"\[default: {re.escape(default)}[;\]]", shown), option.opts[0]


def test_help_shows_the_documented_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for args, default in [
        (
            ["serve"],
            "--port INTEGER TCP port (0: any free) [default: (KLING_HOOKS_PORT, else 8000)]",
        ),
        (["simulate"], "--port INTEGER TCP port (0: any free port) [default: 9000]"),
        (["tasks"], "--limit INTEGER page size, 1 to 500 [default: 50]"),
        (["redeliver"], "with --all: only deliveries in this state [default: (dead)]"),
        (["demo"], "--seed INTEGER simulator seed (which tasks fail) [default: 1]"),
    ]:
        assert cli.main([*args, "-h"]) == 0
        assert default in " ".join(capsys.readouterr().out.split())


STATUS_COMMANDS = [
    ["tasks"],
    ["task", "kh-one"],
    ["deliveries"],
    ["redeliver", "--all"],
    ["plugins"],
]


@pytest.mark.sqlite_only  # about --db and the SQLite file it names
async def test_url_and_json_options_work_on_every_command_that_takes_them(
    receiver: Receiver, tmp_path: Path
) -> None:
    await receiver.post_callback("kh-one", task_body("900000000000000001", "succeed", "kh-one"))
    # The environment points at nothing: only --url reaches the receiver.
    env = cli_env(kling_hooks_api_url=closed_port_url(), kling_hooks_api_token=API_TOKEN)
    with_json = {"tasks", "task", "deliveries", "plugins"}
    runs = await asyncio.gather(
        *(
            kling_hooks(
                *args,
                "--url",
                receiver.url,
                *(["--json"] if args[0] in with_json else []),
                env=env,
                cwd=tmp_path,
            )
            for args in STATUS_COMMANDS
        )
    )
    for args, run in zip(STATUS_COMMANDS, runs, strict=True):
        assert run.code == 0, (args, run.err)
    tasks, task, deliveries, replayed, plugins = runs
    assert [t["external_task_id"] for t in json.loads(tasks.out)["tasks"]] == ["kh-one"]
    assert json.loads(task.out)["task_status"] == "succeed"
    assert json.loads(deliveries.out) == {"deliveries": [], "next_cursor": None}
    assert replayed.out == "0 deliveries replayed\n"
    assert json.loads(plugins.out) == {"plugins": []}


async def test_limit_and_cursor_page_through_tasks(receiver: Receiver, tmp_path: Path) -> None:
    for n in (1, 2):
        body = task_body(f"90000000000000000{n}", "processing", f"kh-{n}", updated_at=n)
        await receiver.post_callback(f"kh-{n}", body)
    env = cli_env(kling_hooks_api_url=receiver.url, kling_hooks_api_token=API_TOKEN)
    first = await kling_hooks("tasks", "--limit", "1", env=env, cwd=tmp_path)
    assert first.code == 0, first.err
    _header, row, more = first.out.strip().splitlines()
    assert row.split()[1] == "kh-2"
    cursor = re.fullmatch(r"\(more: --cursor (\S+)\)", more)
    assert cursor
    second = await kling_hooks(
        "tasks", "--limit", "1", "--cursor", cursor[1], "--json", env=env, cwd=tmp_path
    )
    page = json.loads(second.out)
    assert [t["external_task_id"] for t in page["tasks"]] == ["kh-1"]
    assert page["next_cursor"] is None


@pytest.mark.sqlite_only  # about --db and the SQLite file it names
async def test_config_and_db_options_work_on_every_command_that_takes_them(
    tmp_path: Path, sim: Simulator, sim_url: str
) -> None:
    # The receiver keeps a generated API token in its database: only --db leads to it.
    settings = make_settings(tmp_path, kling_hooks_api_token=None)
    async with start_receiver(settings) as r:
        await r.post_callback("kh-one", task_body("900000000000000001", "succeed", "kh-one"))
        config = tmp_path / "client.toml"
        config.write_text(
            f'kling_hooks_api_url = "{r.url}"\nkling_hooks_public_url = "{r.url}"\n'
            f'kling_api_base = "{sim_url}"\nkling_api_key = "any-key"\n'
        )
        env = cli_env(kling_hooks_secret=SECRET)  # no token, URL or database in the environment
        given = ["--config", str(config), "--db", str(settings.kling_hooks_db)]
        submit = ["submit", "images/generations", "--data", json.dumps(IMAGE_BODY)]
        runs = {}
        for args in [*STATUS_COMMANDS, ["token"], submit]:
            runs[args[0]] = await kling_hooks(*args, *given, env=env, cwd=tmp_path)
        await sim.wait_idle()
    for name, run in runs.items():
        assert run.code == 0, (name, run.err)
    token = runs["token"].out.strip()
    assert token and token != API_TOKEN
    assert "kh-one" in runs["tasks"].out
    assert re.search(r"^task_status\s+succeed$", runs["task"].out, re.MULTILINE)
    assert json.loads(runs["submit"].out)["registered"] is True  # with the database's token


async def test_a_status_command_against_another_program_exits_1_with_one_line(
    tmp_path: Path,
) -> None:
    async def other(scope: Any, receive: Any, send: Any) -> None:  # 200, but not our shape
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"tasks": "none here"}'})

    async with running(other) as url:
        env = cli_env(kling_hooks_api_url=url, kling_hooks_api_token=API_TOKEN)
        run = await kling_hooks("tasks", env=env, cwd=tmp_path)
    assert run.code == 1
    assert run.err.startswith(f"error: {url}/tasks: the answer is not a kling-hooks status API")
    assert len(run.err.splitlines()) == 1


@pytest.mark.parametrize("chosen_by", ["KLING_HOOKS_API_URL", "--url"])
async def test_an_unreachable_receiver_is_named_with_the_setting_that_chose_it(
    tmp_path: Path, chosen_by: str
) -> None:
    nowhere = closed_port_url()
    if chosen_by == "--url":
        env, args = cli_env(kling_hooks_api_token=API_TOKEN), ["--url", nowhere]
    else:
        env, args = cli_env(kling_hooks_api_url=nowhere, kling_hooks_api_token=API_TOKEN), []
    run = await kling_hooks("tasks", *args, env=env, cwd=tmp_path)
    assert run.code == 1
    assert run.err.startswith(
        f"error: cannot reach the status API at {nowhere} (set by {chosen_by}): "
    )
    assert len(run.err.splitlines()) == 1


@pytest.mark.sqlite_only  # about --db and the SQLite file it names
async def test_secret_prints_the_signing_callback_secret_of_the_environment(
    tmp_path: Path,
) -> None:
    from_env = await kling_hooks(
        "secret", env=cli_env(kling_hooks_secret=f"{SECRET},old-one"), cwd=tmp_path
    )
    nothing = cli_env(kling_hooks_db=str(tmp_path / "no.db"))
    missing = await kling_hooks("secret", env=nothing, cwd=tmp_path)
    assert (from_env.code, from_env.out) == (0, f"{SECRET}\n")  # the first one signs
    assert missing.code == 2 and "no database at" in missing.err


async def test_secret_reads_the_generated_secret_from_the_receivers_database(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_secret=None)
    async with start_receiver(settings) as r:
        signing = r.services.credentials.secrets[0]
        run = await kling_hooks(
            "secret", env=cli_env(kling_hooks_db=str(settings.kling_hooks_db)), cwd=tmp_path
        )
    assert (run.code, run.out) == (0, f"{signing}\n")
