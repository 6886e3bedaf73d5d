"""Shared parts of the submitter tests: stand-ins for Kling and the receiver, a client factory.

Kling and the receiver's registration endpoint are ``httpx.MockTransport`` handlers that record
every request. Backoff sleeps are recorded, never slept. A module of the test suite (its
``test_`` name gets pytest's assertion rewriting) that holds no tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx

from submitter import BearerAuth, KlingClient, Registrar
from submitter.tokens import CallbackTokens

API_KEY = "reseller-key-0123456789"
RECEIVER_TOKEN = "receiver-api-token-0123"
PUBLIC_URL = "https://hooks.example.com"
API_BASE = "http://127.0.0.1:9000"
CREATED_AT_MS = 1_774_805_076_166
TOKENS = CallbackTokens(["callback-secret-new", "callback-secret-old"])

URL = "https://cdn.example.com/in.png"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(2000)).decode()  # > 1 KB inline image

# --- stand-ins for Kling and the receiver ---------------------------------------------------


def envelope(
    status: int = 200,
    code: int = 0,
    message: str = "SUCCEED",
    data: Any = None,
    request_id: str = "req-1",
) -> httpx.Response:
    """A Kling answer: ``{code, message, request_id, data}``."""
    body = {"code": code, "message": message, "request_id": request_id, "data": data}
    return httpx.Response(status, json=body)


class FakeKling:
    """Kling's create and query routes, with a script of what each POST and GET does.

    POST actions: ``"create"`` (create, answer), ``"create_then_lose"`` (create, then the
    answer is lost: ``httpx.ReadTimeout``), ``"create_then_500"`` (create, answer 500/5000),
    an ``httpx.Response`` to answer without creating, or an exception to raise without
    creating. GET actions: ``"lookup"`` (the task by task_id or external_task_id, else
    ``not_found``), an ``httpx.Response`` or an exception. Unscripted calls are ``"create"`` and
    ``"lookup"``.
    """

    def __init__(
        self,
        posts: list[Any] | None = None,
        gets: list[Any] | None = None,
        not_found: httpx.Response | None = None,
    ) -> None:
        self.posts = list(posts or [])
        self.gets = list(gets or [])
        self.not_found = not_found or envelope(400, 1201, "task not found")
        self.requests: list[httpx.Request] = []
        self.tasks: dict[str, dict[str, Any]] = {}

    @property
    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def sent_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            action = self.posts.pop(0) if self.posts else "create"
            return self._post(request, action)
        action = self.gets.pop(0) if self.gets else "lookup"
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, httpx.Response):
            return action
        task_or_ext = unquote(request.url.path.rsplit("/", 1)[1])
        for task in self.tasks.values():
            if task_or_ext in (task["task_id"], task["task_info"]["external_task_id"]):
                return envelope(data=task)
        return self.not_found

    def _post(self, request: httpx.Request, action: Any) -> httpx.Response:
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, httpx.Response):
            return action
        body = json.loads(request.content)
        task = {
            "task_id": str(867283741759111202 + len(self.tasks)),
            "task_status": "submitted",
            "task_info": {"external_task_id": body["external_task_id"]},
            "created_at": CREATED_AT_MS,
            "updated_at": CREATED_AT_MS,
        }
        self.tasks[body["external_task_id"]] = task
        if action == "create_then_lose":
            raise httpx.ReadTimeout("timed out reading the answer", request=request)
        if action == "create_then_500":
            return envelope(500, 5000, "internal server error")
        assert action == "create", action
        return envelope(data=task)


class FakeReceiver:
    """The receiver's ``POST /tasks``: records requests, answers ``status`` or raises ``error``."""

    def __init__(self, status: int = 201, error: Exception | None = None) -> None:
        self.status = status
        self.error = error
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, json={"ok": self.status < 300})

    def registrar(self) -> Registrar:
        return Registrar(
            "http://127.0.0.1:8000/api/",
            RECEIVER_TOKEN,
            transport=httpx.MockTransport(self.handle),
        )


class Sleeps:
    """An injected ``sleep`` that records each delay, in seconds."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def make_client(
    kling: FakeKling,
    *,
    registrar: Registrar | None = None,
    sleep: Sleeps | None = None,
    **kwargs: Any,
) -> KlingClient:
    options: dict[str, Any] = {
        "api_base": API_BASE,
        "public_url": PUBLIC_URL,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "max_attempts": 5,
    }
    options.update(kwargs)
    return KlingClient(
        auth=BearerAuth(API_KEY),
        tokens=TOKENS,
        registrar=registrar,
        transport=kling.transport(),
        sleep=sleep or Sleeps(),
        **options,
    )


def counter_clock(start_ms: int = CREATED_AT_MS, step_ms: int = 1) -> Iterator[int]:
    now = start_ms
    while True:
        yield now
        now += step_ms


# --- valid bodies, one per route ----------------------------------------------------------

VALID_BODIES: dict[str, dict[str, Any]] = {
    "images/generations": {"prompt": "a red fox in snow"},
    "images/multi-image2image": {"subject_image_list": [{"subject_image": URL}]},
    "videos/multi-image2video": {"image_list": [{"image": URL}], "prompt": "they dance"},
    "videos/text2video": {"prompt": "waves at dusk"},
    "videos/image2video": {"image": URL},
}
GEN = "images/generations"
M2I = "images/multi-image2image"
M2V = "videos/multi-image2video"
T2V = "videos/text2video"
I2V = "videos/image2video"


def body(route: str, **fields: Any) -> dict[str, Any]:
    """A valid body of ``route`` with ``fields`` set; a value of ``...`` removes the field."""
    out = {**VALID_BODIES[route], **fields}
    return {k: v for k, v in out.items() if v is not ...}
