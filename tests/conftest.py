"""Shared fixtures: a real receiver under uvicorn on 127.0.0.1 with a temporary SQLite file."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from receiver.app import create_app
from receiver.config import Settings
from receiver.runtime import Runtime
from receiver.serving import running
from receiver.tokens import CallbackTokens

SECRET = "test-secret-one"
API_TOKEN = "test-api-token"


@dataclass
class Receiver:
    """A running receiver: its base URL, runtime, and an httpx client for it."""

    url: str
    runtime: Runtime
    http: httpx.AsyncClient

    def callback_url(self, external_task_id: str, secret: str = SECRET) -> str:
        return CallbackTokens([secret]).callback_url(self.url, external_task_id)

    async def post_callback(self, external_task_id: str, body: Any, **kw: Any) -> httpx.Response:
        return await self.http.post(self.callback_url(external_task_id), json=body, **kw)

    async def get_task(self, id_: str) -> httpx.Response:
        return await self.http.get(
            f"{self.url}/tasks/{id_}", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )


def make_settings(tmp_path: Path, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "kling_hooks_db": tmp_path / "kling-hooks.db",
        "kling_hooks_secret": SecretStr(SECRET),
        "kling_hooks_api_token": SecretStr(API_TOKEN),
        "kling_hooks_log_level": "warning",
    }
    return Settings(**{**base, **values})


@contextlib.asynccontextmanager
async def start_receiver(settings: Settings) -> AsyncIterator[Receiver]:
    """Run the receiver under uvicorn on a free loopback port until the block ends."""
    runtime = Runtime(settings=settings)
    async with (
        running(create_app(settings, runtime)) as url,
        httpx.AsyncClient(timeout=30.0) as http,
    ):
        await runtime.ready.wait()
        yield Receiver(url, runtime, http)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with start_receiver(make_settings(tmp_path)) as r:
        yield r


def task_body(
    task_id: str, status: str, external_task_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A bare Kling callback body (PROTOCOL.md section 4)."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1774805076166,
        "updated_at": 1774805090000,
    }
    if external_task_id is not None:
        body["task_info"] = {"external_task_id": external_task_id}
    return {**body, **extra}
