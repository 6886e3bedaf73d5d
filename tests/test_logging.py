"""Tracebacks in the logs (receiver/logging.py): rendered as text in JSON lines, uvicorn's too,
and never with local variables, even with rich installed (whose console tracebacks print
every frame's locals: the callback secret, tokens, a Slack URL)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
