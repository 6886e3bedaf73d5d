"""The README's "Write a plugin" example, taken from README.md as written, works both ways the
README describes: dropped into ``--plugins-dir``, and installed with pip as a distribution that
advertises an entry point (built offline, no index), under a real ``kling-hooks serve``."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx

from submitter.tokens import CallbackTokens
from tests.conftest import (
    API_TOKEN,
    DEBUG,
    SECRET,
    make_settings,
    serve,
    start_receiver,
    task_body,
)

README = Path(__file__).parent.parent / "README.md"
RESULT = {"images": [{"index": 0, "url": "https://cdn.example.com/out-0.png"}]}


def example(name: str) -> str:
    """The code block that follows ``<!-- plugin-example: NAME -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- plugin-example: {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert match, f"README has no plugin example {name}"
    return match.group(1)


def plugin_table(directory: Path) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(example("kling-hooks.toml"))["plugins"]["archive"]
    return {**table, "directory": str(directory)}


def archived(directory: Path) -> dict[str, Any]:
    [path] = directory.glob("*.json")
    assert path.name == "42-succeed.json"
    event: dict[str, Any] = json.loads(path.read_text())
    return event


async def test_readme_plugin_runs_from_a_plugins_dir(tmp_path: Path) -> None:
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    (plugins_dir / "kh_archive.py").write_text(example("kh_archive.py"))
    archive = tmp_path / "archive"
    settings = make_settings(
        tmp_path, kling_hooks_plugins_dir=plugins_dir, plugins={"archive": plugin_table(archive)}
    )
    async with start_receiver(settings) as r:
        done = asyncio.Event()
        r.services.dispatcher.add_listener(lambda job, outcome: done.set())
        await r.post_callback("kh-42", task_body("42", "processing", "kh-42"))
        await r.post_callback("kh-42", task_body("42", "succeed", "kh-42", task_result=RESULT))
        await asyncio.wait_for(done.wait(), 15)
    event = archived(archive)  # "processing" is not wanted: only the succeed event is kept
    assert (event["task_id"], event["task_status"], event["task_result"]) == (
        "42",
        "succeed",
        RESULT,
    )


async def test_readme_plugin_installs_with_pip_and_runs_under_serve(tmp_path: Path) -> None:
    package = tmp_path / "kh-archive"
    package.mkdir()
    (package / "kh_archive.py").write_text(example("kh_archive.py"))
    (package / "pyproject.toml").write_text(example("pyproject.toml"))
    site = tmp_path / "site"
    pip = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",  # offline: the build backend is already installed (test extra)
        "--no-build-isolation",
        "--no-deps",
        "--target",
        str(site),
        str(package),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await pip.communicate()
    assert pip.returncode == 0, (out + err).decode()

    archive = tmp_path / "archive"
    config = tmp_path / "kling-hooks.toml"
    config.write_text(
        f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n\n'
        + example("kling-hooks.toml").replace("/var/lib/kling-hooks/archive", str(archive))
    )
    async with (
        serve(config, tmp_path, env={"PYTHONPATH": str(site), **DEBUG}) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        [started] = [e for e in server.events if e.get("event") == "receiver_started"]
        assert started["plugins"] == ["archive"]
        answer = await http.get("/plugins", headers={"Authorization": f"Bearer {API_TOKEN}"})
        [described] = answer.json()["plugins"]
        assert (described["name"], described["version"]) == ("archive", "1.0.0")
        assert described["origin"] == "entry point (kh-archive 1.0.0)"
        url = CallbackTokens([SECRET]).callback_url(server.url, "kh-42")
        body = task_body("42", "succeed", "kh-42", task_result=RESULT)
        assert (await http.post(url, json=body)).json() == {"ok": True, "verdict": "new"}
        done = await server.until(lambda e: e.get("event") == "delivery_done")
        assert (done["plugin"], done["task_id"]) == ("archive", "42")
    assert archived(archive)["idempotency_key"] == "42:succeed"
