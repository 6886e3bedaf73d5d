"""The trusted-proxy setting: ``KLING_HOOKS_FORWARDED_ALLOW_IPS`` names the reverse proxies
whose ``X-Forwarded-For`` ``kling-hooks serve`` believes (uvicorn's ``forwarded_allow_ips``).

From a trusted address, the caller's address is taken from the header, so log lines name the
caller, not the proxy; from any other address the header is ignored, so a caller cannot
choose the address it is logged under. A real ``serve`` subprocess answers real requests from
127.0.0.1; its ``callback_rejected`` line shows what it took the client to be.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from submitter.tokens import CallbackTokens
from tests.conftest import serve, task_body

CALLER = "203.0.113.7"  # TEST-NET-3: the address Kling calls from, as the proxy saw it


@pytest.mark.parametrize(
    ("trusted", "logged"),
    [("127.0.0.1", CALLER), ("192.0.2.1", "127.0.0.1")],
    ids=["from-the-trusted-proxy", "from-an-untrusted-address"],
)
async def test_rejected_callback_logs_the_forwarded_client_only_from_a_trusted_proxy(
    tmp_path: Path, trusted: str, logged: str
) -> None:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n')
    env = {"KLING_HOOKS_FORWARDED_ALLOW_IPS": trusted}
    async with serve(config, tmp_path, env=env) as server, httpx.AsyncClient() as http:
        forged = CallbackTokens(["not-the-receivers-secret"]).callback_url(server.url, "kh-1")
        headers = {"X-Forwarded-For": CALLER, "X-Forwarded-Proto": "https"}
        answer = await http.post(forged, json=task_body("1", "succeed", "kh-1"), headers=headers)
        assert answer.status_code == 401, answer.text
        rejected = await server.until(lambda e: e.get("event") == "callback_rejected")
    assert rejected["client"] == logged
