"""Shared parts of the simulator tests: a callback sink, a simulator factory, request helpers.

A module of the test suite (its ``test_`` name gets pytest's assertion rewriting for the
helpers below) that holds no tests. The fixtures ``sink`` and ``sim`` are defined here once;
each simulator test module binds them by name.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from submitter.media import PNG_SIGNATURE
from submitter.simulator import Simulator

FAST = (0.0, 0.01)
AUTH = {"Authorization": "Bearer test-key"}
CREATE = "/v1/images/generations"
CALLBACK_URL = "http://sink/hook"
ACCESS_KEY = "ak-0123456789"
SECRET_KEY = "sk-0123456789abcdef0123456789abcdef"  # 32+ bytes: PyJWT warns about shorter ones


class Sink:
    """A callback receiver: records every JSON body, answers 503 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.app = Starlette(routes=[routing.Route("/hook", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> JSONResponse:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.fail_first:
            return JSONResponse({"ok": False}, status_code=503)
        return JSONResponse({"ok": True})

    def statuses(self) -> list[str]:
        """``task_status`` of every body received, unwrapping an envelope's ``data``."""
        return [body.get("data", body)["task_status"] for body in self.bodies]


def make_sim(sink: Sink | None = None, **kwargs: Any) -> Simulator:
    transport = httpx.ASGITransport(app=sink.app) if sink else None
    kwargs.setdefault("delay_s", FAST)
    kwargs.setdefault("seed", 7)
    return Simulator(callback_transport=transport, **kwargs)


@pytest.fixture
async def sink() -> Sink:
    return Sink()


@pytest.fixture
async def sim(sink: Sink) -> AsyncIterator[Simulator]:
    simulator = make_sim(sink)
    yield simulator
    await simulator.aclose()


def api(simulator: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator.app), base_url="http://sim"
    )


async def create(
    simulator: Simulator, body: dict[str, Any] | None = None, route: str = CREATE
) -> httpx.Response:
    async with api(simulator) as client:
        return await client.post(route, json=body or {"prompt": "a cat"}, headers=AUTH)


def assert_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """Kling's error shape: exactly code, message and request_id."""
    assert response.status_code == status
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed IDAT) of a PNG, checking signature and chunk CRCs."""
    assert data.startswith(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    chunks: dict[bytes, bytes] = {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    kinds = list(chunks)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    return width, height, zlib.decompress(chunks[b"IDAT"])


def mp4_boxes(data: bytes) -> list[bytes]:
    """Top-level ISO-BMFF box types; the sizes must tile the file exactly."""
    pos, kinds = 0, []
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8
        kinds.append(kind)
        pos += size
    assert pos == len(data)
    return kinds
