"""Tracebacks in the logs (receiver/logging.py): rendered as text in JSON lines, uvicorn's too,
and never with local variables, even with rich installed (whose console tracebacks print
every frame's locals: the callback secret, tokens, a Slack URL)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from submitter.tokens import CallbackTokens
from tests.conftest import SECRET, Server, serve, task_body

SCRIPT = """
import logging, sys
import structlog
from receiver.logging import configure_logging
configure_logging(sys.argv[1], "info")
def handler():
    callback_secret = "LOCAL-SECRET-VALUE"
    raise RuntimeError("boom")
try:
    handler()
except RuntimeError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    structlog.get_logger().exception("ours")
"""


def run(log_format: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, log_format], capture_output=True, text=True, check=True
    )
    return done.stderr


def test_json_lines_carry_uvicorns_traceback_as_text() -> None:
    lines = [json.loads(line) for line in run("json").splitlines()]
    assert [line["event"] for line in lines] == ["Exception in ASGI application", "ours"]
    for line in lines:
        assert line["exception"].startswith("Traceback (most recent call last):")
        assert "RuntimeError: boom" in line["exception"]
        assert "LOCAL-SECRET-VALUE" not in json.dumps(line)


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_no_traceback_prints_local_variables_even_with_rich(log_format: str) -> None:
    import rich  # noqa: F401  (installed with the test extras: the case that printed locals)

    out = run(log_format)
    assert "RuntimeError: boom" in out
    assert "LOCAL-SECRET-VALUE" not in out


# --- the access log (KLING_HOOKS_ACCESS_LOG) -----------------------------------------------


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n')
    return config


async def _send_one_callback(server: Server) -> str:
    """POST one valid callback; returns its URL's token."""
    url = CallbackTokens([SECRET]).callback_url(server.url, "kh-access")
    async with httpx.AsyncClient() as http:
        answer = await http.post(url, json=task_body("1", "succeed", "kh-access"))
        assert answer.json() == {"ok": True, "verdict": "new"}
        assert (await http.get(f"{server.url}/healthz")).status_code == 200
    return url.rsplit("/", 1)[1]


async def test_the_access_log_is_off_by_default(tmp_path: Path) -> None:
    async with serve(_config(tmp_path), tmp_path) as server:
        await _send_one_callback(server)
        server.proc.send_signal(signal.SIGTERM)
        await server.until(lambda e: e.get("event") == "receiver_stopped")
    assert not [e for e in server.events if e.get("logger") == "uvicorn.access"]


async def test_the_access_log_masks_the_callback_token(tmp_path: Path) -> None:
    env = {"KLING_HOOKS_ACCESS_LOG": "true"}
    async with serve(_config(tmp_path), tmp_path, env=env) as server:
        token = await _send_one_callback(server)
        health = await server.until(
            lambda e: e.get("logger") == "uvicorn.access" and "/healthz" in e["event"]
        )
    access = [e["event"] for e in server.events if e.get("logger") == "uvicorn.access"]
    assert any('"POST /callbacks/kh-access/*** HTTP/1.1" 200' in line for line in access), access
    assert '"GET /healthz HTTP/1.1" 200' in health["event"]
    assert token not in json.dumps(server.events)
