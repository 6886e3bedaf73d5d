"""The submitter client: local validation, create, retries, idempotent create, registration.

Kling and the receiver's registration endpoint are ``httpx.MockTransport`` handlers that record
every request. Backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from submitter.tokens import CallbackTokens
from submitter import (
    BearerAuth,
    InvalidRequest,
    KlingAPIError,
    KlingClient,
    KlingUnreachable,
    Registrar,
    Submission,
    new_external_task_id,
    redact,
)

API_KEY = "reseller-key-0123456789"
RECEIVER_TOKEN = "receiver-api-token-0123"
PUBLIC_URL = "https://hooks.example.com"
API_BASE = "http://127.0.0.1:9000"
CREATED_AT_MS = 1_774_805_076_166
TOKENS = CallbackTokens(["callback-secret-new", "callback-secret-old"])

URL = "https://cdn.example.com/in.png"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(2000)).decode()  # > 1 KB inline image
DATA_URI = f"data:image/png;base64,{PNG_B64}"
TXT_B64 = base64.b64encode(b"hello, not an image").decode()
LONG_PROMPT = "p" * 2501


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
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "max_attempts": 5,
    }
    options.update(kwargs)
    return KlingClient(
        auth=BearerAuth(API_KEY),
        tokens=TOKENS,
        public_url=PUBLIC_URL,
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


# --- local validation: nothing is sent ------------------------------------------------------

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


INVALID = [
    # enums
    ("gen model_name", GEN, body(GEN, model_name="kling-v9"), "model_name"),
    ("m2i model_name", M2I, body(M2I, model_name="kling-v1"), "model_name"),
    ("m2v model_name", M2V, body(M2V, model_name="kling-v2"), "model_name"),
    ("gen aspect_ratio", GEN, body(GEN, aspect_ratio="5:4"), "aspect_ratio"),
    ("m2i aspect_ratio", M2I, body(M2I, aspect_ratio="5:4"), "aspect_ratio"),
    ("m2v aspect_ratio 4:3", M2V, body(M2V, aspect_ratio="4:3"), "aspect_ratio"),
    ("t2v aspect_ratio 21:9", T2V, body(T2V, aspect_ratio="21:9"), "aspect_ratio"),
    ("i2v aspect_ratio", I2V, body(I2V, aspect_ratio="3:2"), "aspect_ratio"),
    ("m2v mode", M2V, body(M2V, mode="fast"), "mode"),
    ("t2v mode", T2V, body(T2V, mode="turbo"), "mode"),
    ("i2v mode", I2V, body(I2V, mode="max"), "mode"),
    ("t2v duration int 5", T2V, body(T2V, duration=5), "duration"),
    ("i2v duration int 10", I2V, body(I2V, duration=10), "duration"),
    ("m2v duration 7", M2V, body(M2V, duration="7"), "duration"),
    ("gen resolution", GEN, body(GEN, resolution="4k"), "resolution"),
    (
        "gen image_reference value",
        GEN,
        body(GEN, model_name="kling-v1-5", image=URL, image_reference="body"),
        "image_reference",
    ),
    (
        "gen watermark_info",
        GEN,
        body(GEN, watermark_info={"enabled": "yes"}),
        "watermark_info.enabled",
    ),
    # ranges and types
    ("gen n 0", GEN, body(GEN, n=0), "n"),
    ("gen n 10", GEN, body(GEN, n=10), "n"),
    ("gen n string", GEN, body(GEN, n="3"), "n"),
    ("m2i n 10", M2I, body(M2I, n=10), "n"),
    ("image_fidelity 1.5", GEN, body(GEN, image_fidelity=1.5), "image_fidelity"),
    ("image_fidelity -0.1", GEN, body(GEN, image_fidelity=-0.1), "image_fidelity"),
    ("human_fidelity 1.5", GEN, body(GEN, human_fidelity=1.5), "human_fidelity"),
    ("human_fidelity -0.1", GEN, body(GEN, human_fidelity=-0.1), "human_fidelity"),
    ("t2v cfg_scale 1.5", T2V, body(T2V, cfg_scale=1.5), "cfg_scale"),
    ("t2v cfg_scale -0.1", T2V, body(T2V, cfg_scale=-0.1), "cfg_scale"),
    ("i2v cfg_scale 1.5", I2V, body(I2V, cfg_scale=1.5), "cfg_scale"),
    ("i2v cfg_scale -0.1", I2V, body(I2V, cfg_scale=-0.1), "cfg_scale"),
    # list sizes
    ("subject_image_list 0", M2I, body(M2I, subject_image_list=[]), "subject_image_list"),
    (
        "subject_image_list 5",
        M2I,
        body(M2I, subject_image_list=[{"subject_image": URL}] * 5),
        "subject_image_list",
    ),
    ("image_list 0", M2V, body(M2V, image_list=[]), "image_list"),
    ("image_list 5", M2V, body(M2V, image_list=[{"image": URL}] * 5), "image_list"),
    # prompt length
    ("gen prompt 2501", GEN, body(GEN, prompt=LONG_PROMPT), "prompt"),
    ("m2i prompt 2501", M2I, body(M2I, prompt=LONG_PROMPT), "prompt"),
    ("m2v prompt 2501", M2V, body(M2V, prompt=LONG_PROMPT), "prompt"),
    ("t2v prompt 2501", T2V, body(T2V, prompt=LONG_PROMPT), "prompt"),
    ("i2v prompt 2501", I2V, body(I2V, prompt=LONG_PROMPT), "prompt"),
    ("t2v negative_prompt 2501", T2V, body(T2V, negative_prompt=LONG_PROMPT), "negative_prompt"),
    # cross-field rules of images/generations
    (
        "negative_prompt with image",
        GEN,
        body(GEN, image=URL, negative_prompt="blurry"),
        "negative_prompt",
    ),
    (
        "image_reference with kling-v1",
        GEN,
        body(GEN, model_name="kling-v1", image=URL, image_reference="face"),
        "image_reference",
    ),
    (
        "image_reference with kling-v2 and no image",
        GEN,
        body(GEN, model_name="kling-v2", image_reference="subject"),
        "image_reference",
    ),
    (
        "kling-v1-5 image without image_reference",
        GEN,
        body(GEN, model_name="kling-v1-5", image=URL),
        "image_reference",
    ),
    # required fields
    ("gen prompt missing", GEN, body(GEN, prompt=...), "prompt"),
    ("t2v prompt missing", T2V, body(T2V, prompt=...), "prompt"),
    ("m2v prompt missing", M2V, body(M2V, prompt=...), "prompt"),
    ("subject_image_list missing", M2I, body(M2I, subject_image_list=...), "subject_image_list"),
    ("image_list missing", M2V, body(M2V, image_list=...), "image_list"),
    ("i2v image and image_tail missing", I2V, body(I2V, image=..., prompt="p"), "image"),
    # image values
    ("gen image data: prefix", GEN, body(GEN, image=DATA_URI), "image"),
    (
        "subject_image data: prefix",
        M2I,
        body(M2I, subject_image_list=[{"subject_image": DATA_URI}]),
        "subject_image_list.0.subject_image",
    ),
    (
        "image_list image data: prefix",
        M2V,
        body(M2V, image_list=[{"image": DATA_URI}]),
        "image_list.0.image",
    ),
    ("scene_image data: prefix", M2I, body(M2I, scene_image=DATA_URI), "scene_image"),
    ("style_image data: prefix", M2I, body(M2I, style_image=DATA_URI), "style_image"),
    ("image_tail data: prefix", I2V, body(I2V, image=..., image_tail=DATA_URI), "image_tail"),
    ("static_mask data: prefix", I2V, body(I2V, static_mask=DATA_URI), "static_mask"),
    (
        "dynamic mask data: prefix",
        I2V,
        body(I2V, dynamic_masks=[{"mask": DATA_URI, "trajectories": []}]),
        "dynamic_masks.0.mask",
    ),
    ("image not base64", GEN, body(GEN, image="not base64 !"), "image"),
    ("image base64 of text", GEN, body(GEN, image=TXT_B64), "image"),
    (
        "scence_image and scene_image both",
        M2I,
        body(M2I, scence_image=URL, scene_image=URL),
        "scence_image",
    ),
    # ids, route, callback_url
    ("external_task_id empty", GEN, body(GEN, external_task_id=""), "external_task_id"),
    ("unknown route", "videos/lip-sync", {"prompt": "x"}, "route"),
    (
        "caller callback_url",
        GEN,
        body(GEN, callback_url="https://evil.example.com/cb"),
        "callback_url",
    ),
]


@pytest.mark.parametrize(
    ("route", "bad_body", "field"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
async def test_invalid_body_is_refused_before_any_request(
    route: str, bad_body: dict[str, Any], field: str
) -> None:
    kling, receiver = FakeKling(), FakeReceiver()
    async with make_client(kling, registrar=receiver.registrar()) as client:
        with pytest.raises(InvalidRequest) as info:
            await client.submit(route, bad_body)
    assert field in [p.field for p in info.value.problems]
    assert field in str(info.value)
    assert kling.requests == []
    assert receiver.requests == []


async def test_caller_callback_url_is_reported_together_with_other_problems() -> None:
    async with make_client(FakeKling()) as client:
        with pytest.raises(InvalidRequest) as info:
            await client.submit(GEN, {"callback_url": "https://x.example.com", "n": 0})
    fields = [p.field for p in info.value.problems]
    assert fields[0] == "callback_url"
    assert {"prompt", "n"} <= set(fields)
    assert "is set by kling-hooks; leave it out" in str(info.value)


async def test_invalid_explicit_external_task_id_is_refused_before_any_request() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(InvalidRequest, match="external_task_id"):
            await client.submit(GEN, VALID_BODIES[GEN], external_task_id="x" * 257)
    assert kling.requests == []


@pytest.mark.parametrize("route", list(VALID_BODIES))
async def test_valid_body_of_every_route_is_sent_once_to_its_route(route: str) -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(route, VALID_BODIES[route])
    (request,) = kling.requests
    assert (request.method, request.url.path) == ("POST", f"/v1/{route}")
    sent = json.loads(request.content)
    assert {k: sent[k] for k in VALID_BODIES[route]} == VALID_BODIES[route]
    assert submission.route == route


async def test_valid_body_with_inline_base64_images_passes() -> None:
    kling = FakeKling()
    good = {
        "model_name": "kling-v1-5",
        "prompt": "portrait",
        "image": PNG_B64,
        "image_reference": "face",
        "human_fidelity": 1,
        "image_fidelity": 0.0,
        "n": 9,
        "resolution": "2k",
        "aspect_ratio": "21:9",
        "watermark_info": {"enabled": False},
    }
    async with make_client(kling) as client:
        await client.submit(GEN, good)
    assert kling.sent_bodies()[0]["image"] == PNG_B64


async def test_unknown_fields_pass_through_to_the_wire() -> None:
    kling = FakeKling()
    extra = body(T2V, future_option={"level": 3}, camera_control={"type": "simple"})
    async with make_client(kling) as client:
        await client.submit(T2V, extra)
    sent = kling.sent_bodies()[0]
    assert sent["future_option"] == {"level": 3}
    assert sent["camera_control"] == {"type": "simple"}


async def test_scence_image_alias_is_sent_as_scene_image() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        await client.submit(M2I, body(M2I, scence_image=URL))
    sent = kling.sent_bodies()[0]
    assert sent["scene_image"] == URL
    assert "scence_image" not in sent


async def test_caller_body_is_not_modified() -> None:
    original = body(GEN, n=2)
    snapshot = json.loads(json.dumps(original))
    async with make_client(FakeKling()) as client:
        await client.submit(GEN, original)
    assert original == snapshot


# --- successful create ----------------------------------------------------------------------


async def test_submit_returns_the_task_from_klings_envelope() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    task = kling.tasks[submission.external_task_id]
    assert submission.task_id == task["task_id"] == "867283741759111202"
    assert submission.task_status == "submitted"
    assert submission.created_at == CREATED_AT_MS
    assert submission.registered is False
    assert submission.warning is None


async def test_callback_url_carries_a_token_the_receiver_verifies() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    sent = kling.sent_bodies()[0]
    assert sent["callback_url"] == submission.callback_url
    assert sent["external_task_id"] == submission.external_task_id
    parts = urlsplit(submission.callback_url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    _, prefix, ext, token = parts.path.split("/")
    assert (prefix, unquote(ext)) == ("callbacks", submission.external_task_id)
    assert TOKENS.verify(submission.external_task_id, token)
    assert not TOKENS.verify(submission.external_task_id + "x", token)


async def test_generated_external_task_ids_are_prefixed_unique_and_sort_by_time() -> None:
    ticks = counter_clock(step_ms=7)
    kling = FakeKling()
    async with make_client(kling, clock_ms=lambda: next(ticks)) as client:
        ids = [(await client.submit(T2V, VALID_BODIES[T2V])).external_task_id for _ in range(20)]
    assert all(i.startswith("kh-") and len(i) == 3 + 26 for i in ids)
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


def test_new_external_task_id_is_unique_within_one_millisecond() -> None:
    ids = {new_external_task_id(CREATED_AT_MS) for _ in range(1000)}
    assert len(ids) == 1000
    assert new_external_task_id(CREATED_AT_MS) < new_external_task_id(CREATED_AT_MS + 1)
    assert new_external_task_id().startswith("kh-")


async def test_explicit_external_task_id_is_used() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN], external_task_id="order-42")
    assert submission.external_task_id == "order-42"
    assert kling.sent_bodies()[0]["external_task_id"] == "order-42"
    assert "/callbacks/order-42/" in submission.callback_url


async def test_explicit_external_task_id_wins_over_the_bodys() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(
            GEN, body(GEN, external_task_id="from-body"), external_task_id="from-arg"
        )
    assert submission.external_task_id == "from-arg"
    assert kling.sent_bodies()[0]["external_task_id"] == "from-arg"


async def test_external_task_id_in_the_body_is_used_when_no_argument_is_given() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, body(GEN, external_task_id="from-body"))
    assert submission.external_task_id == "from-body"
    assert TOKENS.verify("from-body", submission.callback_url.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    "api_base", ["http://127.0.0.1:9000/kling", "http://127.0.0.1:9000/kling/"]
)
async def test_api_base_path_prefix_goes_before_v1(api_base: str) -> None:
    kling = FakeKling()
    async with make_client(kling, api_base=api_base) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        await client.query(GEN, submission.task_id)
    assert [r.url.path for r in kling.requests] == [
        "/kling/v1/images/generations",
        f"/kling/v1/images/generations/{submission.task_id}",
    ]


async def test_requests_to_kling_carry_the_bearer_key() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_submission_to_json_has_every_field_and_repr_hides_the_callback_url() -> None:
    submission = Submission(
        task_id="867283741759111202",
        external_task_id="kh-1",
        callback_url="https://hooks.example.com/callbacks/kh-1/secret-token",
        task_status="submitted",
        created_at=CREATED_AT_MS,
        route=GEN,
    )
    assert submission.to_json() == {
        "task_id": "867283741759111202",
        "external_task_id": "kh-1",
        "callback_url": "https://hooks.example.com/callbacks/kh-1/secret-token",
        "task_status": "submitted",
        "created_at": CREATED_AT_MS,
        "route": GEN,
        "registered": False,
        "warning": None,
    }
    assert "secret-token" not in repr(submission)
    with pytest.raises(FrozenInstanceError):
        submission.task_id = "other"  # type: ignore[misc]


# --- Kling errors and retries ---------------------------------------------------------------


async def test_final_error_raises_kling_api_error_at_once() -> None:
    kling = FakeKling(posts=[envelope(400, 1201, "prompt is invalid", request_id="req-77")])
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    error = info.value
    assert (error.http_status, error.code, error.message, error.request_id) == (
        400,
        1201,
        "prompt is invalid",
        "req-77",
    )
    assert kling.methods == ["POST"]
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, 1004), (429, 1101), (403, 1103), (404, 1203), (400, 1301), (429, 1304)],
)
async def test_other_final_codes_are_not_retried(status: int, code: int) -> None:
    kling = FakeKling(posts=[envelope(status, code, "no")])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert (info.value.http_status, info.value.code) == (status, code)
    assert kling.methods == ["POST"]


async def test_non_json_error_body_gives_code_none_and_the_first_200_characters() -> None:
    kling = FakeKling(posts=[httpx.Response(400, text="<html>" + "x" * 500)])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert info.value.code is None
    assert info.value.message == ("<html>" + "x" * 500)[:200]
    assert info.value.request_id is None


async def test_success_envelope_without_a_task_raises_kling_api_error() -> None:
    kling = FakeKling(posts=[envelope(data={"task_id": 867283741759111202})])
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError, match="not a task object"):
            await client.submit(GEN, VALID_BODIES[GEN])


@pytest.mark.parametrize("code", [1302, 1303])
async def test_rate_limit_is_retried_after_backoff_then_succeeds(code: int) -> None:
    kling = FakeKling(posts=[envelope(429, code, "slow down"), "create"])
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps, backoff_base_s=1.0, backoff_max_s=30) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]  # nothing was created: no look-up needed
    assert submission.task_id in {t["task_id"] for t in kling.tasks.values()}
    assert sleeps.delays == [1.0]  # Kling advises backing off from 1 s


async def test_rate_limit_every_time_raises_after_max_attempts() -> None:
    kling = FakeKling(posts=[envelope(429, 1303, "too many tasks")] * 3)
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps, max_attempts=3) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert (info.value.http_status, info.value.code) == (429, 1303)
    assert kling.methods == ["POST"] * 3
    assert len(sleeps.delays) == 2


async def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    kling = FakeKling(posts=[httpx.ConnectError("refused")] * 6)
    sleeps = Sleeps()
    async with make_client(
        kling, sleep=sleeps, max_attempts=6, backoff_base_s=1.0, backoff_max_s=5.0
    ) as client:
        with pytest.raises(KlingUnreachable):
            await client.submit(GEN, VALID_BODIES[GEN])
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(sleeps.delays) == len(ceilings)
    for delay, ceiling in zip(sleeps.delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


async def test_lost_answer_of_a_created_task_is_recovered_by_one_query() -> None:
    kling = FakeKling(posts=["create_then_lose"])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET"]
    assert kling.requests[1].url.path == f"/v1/{GEN}/{submission.external_task_id}"
    (task,) = kling.tasks.values()
    assert submission.task_id == task["task_id"]
    assert submission.created_at == CREATED_AT_MS


@pytest.mark.parametrize(
    "not_found",
    [
        envelope(400, 1201, "task not found"),
        envelope(404, 1203, "resource does not exist"),
        httpx.Response(404, text="Not Found"),
    ],
    ids=["400-1201", "404-1203", "404-plain"],
)
async def test_lost_answer_without_a_task_creates_again(not_found: httpx.Response) -> None:
    lost = httpx.ReadTimeout("timed out")
    kling = FakeKling(posts=[lost, "create"], not_found=not_found)
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]
    assert len(kling.tasks) == 1
    first, second = kling.sent_bodies()
    assert first == second  # same external_task_id and callback_url
    assert submission.external_task_id == first["external_task_id"]


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.WriteError("broken pipe"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_every_kind_of_lost_answer_is_looked_up_before_creating_again(
    lost: Exception,
) -> None:
    kling = FakeKling(posts=[lost, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]


async def test_500_answer_is_followed_by_a_query_that_finds_the_task() -> None:
    kling = FakeKling(posts=["create_then_500"])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET"]
    assert len(kling.tasks) == 1
    assert submission.task_id == next(iter(kling.tasks.values()))["task_id"]


@pytest.mark.parametrize(
    "answer",
    [envelope(503, 5001, "maintenance"), envelope(504, 5002, "backlog"), httpx.Response(502)],
    ids=["503-5001", "504-5002", "502-plain"],
)
async def test_5xx_answer_without_a_task_is_queried_then_created_again(
    answer: httpx.Response,
) -> None:
    kling = FakeKling(posts=[answer, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "POST"]
    assert len(kling.tasks) == 1


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
)
async def test_connect_error_retries_the_create_without_a_query(error: Exception) -> None:
    kling = FakeKling(posts=[error, "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]


async def test_failed_look_up_is_repeated_and_never_followed_by_a_blind_create() -> None:
    kling = FakeKling(
        posts=["create_then_lose"],
        gets=[httpx.ReadTimeout("slow"), envelope(503, 5001, "maintenance"), "lookup"],
    )
    sleeps = Sleeps()
    async with make_client(kling, sleep=sleeps) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "GET", "GET", "GET"]
    assert len(sleeps.delays) == 3
    assert submission.task_id == next(iter(kling.tasks.values()))["task_id"]


async def test_lost_answer_and_failing_look_ups_give_up_with_outcome_unknown() -> None:
    kling = FakeKling(posts=["create_then_lose"], gets=[httpx.ConnectError("down")] * 4)
    async with make_client(kling, max_attempts=5) as client:
        with pytest.raises(KlingUnreachable, match="may exist") as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST"] + ["GET"] * 4
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_unreachable_kling_raises_kling_unreachable_after_max_attempts() -> None:
    kling = FakeKling(posts=[httpx.ConnectError("refused")] * 3)
    async with make_client(kling, max_attempts=3) as client:
        with pytest.raises(KlingUnreachable, match="3 attempts") as info:
            await client.submit(GEN, VALID_BODIES[GEN])
    assert "may exist" not in str(info.value)
    assert kling.methods == ["POST"] * 3


async def test_retry_logs_name_the_error_but_no_credential_or_callback_token() -> None:
    kling = FakeKling(posts=[envelope(429, 1303, "busy"), "create_then_lose"])
    with capture_logs() as logs:
        async with make_client(kling) as client:
            submission = await client.submit(GEN, VALID_BODIES[GEN])
    events = [entry["event"] for entry in logs]
    assert events.count("kling.create_attempt_failed") == 2
    assert "kling.create_recovered" in events
    failed = [e for e in logs if e["event"] == "kling.create_attempt_failed"]
    assert (failed[0]["code"], failed[0]["http_status"]) == (1303, 429)
    assert failed[1]["error"] == "ReadTimeout"
    text = repr(logs)
    token = submission.callback_url.rsplit("/", 1)[1]
    assert API_KEY not in text
    assert token not in text


# --- query ----------------------------------------------------------------------------------


async def test_query_by_task_id_or_external_task_id_returns_the_task_object() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        by_task_id = await client.query(GEN, submission.task_id)
        by_external = await client.query(GEN, submission.external_task_id)
    assert by_task_id == by_external
    assert by_task_id.task_id == submission.task_id
    assert by_task_id.external_task_id == submission.external_task_id


async def test_query_retries_transient_failures() -> None:
    kling = FakeKling(gets=[envelope(503, 5001, "maintenance"), httpx.ReadError("reset")])
    async with make_client(kling) as client:
        submission = await client.submit(GEN, VALID_BODIES[GEN])
        task = await client.query(GEN, submission.task_id)
    assert kling.methods == ["POST", "GET", "GET", "GET"]
    assert task.task_id == submission.task_id


async def test_query_of_an_unknown_task_raises_at_once() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError) as info:
            await client.query(GEN, "no-such-task")
    assert info.value.code == 1201
    assert kling.methods == ["GET"]


async def test_query_quotes_the_id_into_one_path_segment() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(KlingAPIError):
            await client.query(GEN, "a/b c")
    assert kling.requests[0].url.raw_path == b"/v1/images/generations/a%2Fb%20c"


async def test_query_refuses_an_empty_id_without_a_request() -> None:
    kling = FakeKling()
    async with make_client(kling) as client:
        with pytest.raises(InvalidRequest, match="id"):
            await client.query(GEN, "")
    assert kling.requests == []


# --- registration ---------------------------------------------------------------------------


async def test_registration_posts_the_task_and_redacted_request_with_bearer_token() -> None:
    kling, receiver = FakeKling(), FakeReceiver()
    long_prompt = "a" * 2000
    sent_body = body(M2V, image_list=[{"image": PNG_B64}, {"image": URL}], prompt=long_prompt)
    async with make_client(kling, registrar=receiver.registrar()) as client:
        submission = await client.submit(M2V, sent_body)

    assert submission.registered is True
    assert submission.warning is None
    (request,) = receiver.requests
    assert (request.method, str(request.url)) == ("POST", "http://127.0.0.1:8000/api/tasks")
    assert request.headers["Authorization"] == f"Bearer {RECEIVER_TOKEN}"
    payload = json.loads(request.content)
    assert payload == {
        "route": M2V,
        "task_id": submission.task_id,
        "external_task_id": submission.external_task_id,
        "task_status": "submitted",
        "created_at": CREATED_AT_MS,
        "request": {
            "image_list": [
                {
                    "image": {
                        "redacted": True,
                        "bytes": len(PNG_B64),
                        "sha256": hashlib.sha256(PNG_B64.encode()).hexdigest(),
                    }
                },
                {"image": URL},
            ],
            "prompt": long_prompt,
            "external_task_id": submission.external_task_id,
        },
    }
    assert kling.sent_bodies()[0]["image_list"][0]["image"] == PNG_B64  # Kling gets it whole


@pytest.mark.parametrize(
    "receiver",
    [
        FakeReceiver(error=httpx.ConnectError("connection refused")),
        FakeReceiver(error=httpx.ReadTimeout("slow")),
        FakeReceiver(status=500),
        FakeReceiver(status=401),
    ],
    ids=["refused", "timeout", "500", "401"],
)
async def test_failed_registration_still_returns_the_submission_with_a_warning(
    receiver: FakeReceiver,
) -> None:
    kling = FakeKling()
    with capture_logs() as logs:
        async with make_client(kling, registrar=receiver.registrar()) as client:
            submission = await client.submit(GEN, VALID_BODIES[GEN])
    assert submission.registered is False
    assert submission.warning is not None
    assert submission.warning.startswith("could not register the task with the receiver (")
    assert submission.warning.endswith(
        "); Kling has it, and the receiver records it with its first accepted callback"
    )
    assert submission.task_id == next(iter(kling.tasks.values()))["task_id"]
    assert kling.methods == ["POST"]
    assert "receiver.registration_failed" in [entry["event"] for entry in logs]
    assert RECEIVER_TOKEN not in repr(logs)


async def test_registrar_repr_hides_its_token() -> None:
    registrar = FakeReceiver().registrar()
    assert RECEIVER_TOKEN not in repr(registrar)
    await registrar.aclose()


# --- redaction ------------------------------------------------------------------------------


def fingerprint(value: str) -> dict[str, Any]:
    raw = value.encode()
    return {"redacted": True, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def test_redact_replaces_large_inline_images_at_any_depth() -> None:
    big = PNG_B64
    original = {
        "image": big,
        "image_tail": big,
        "static_mask": big,
        "scene_image": big,
        "style_image": big,
        "subject_image_list": [{"subject_image": big}, {"subject_image": URL}],
        "dynamic_masks": [{"mask": big, "trajectories": [{"x": 1, "y": 2}]}],
        "prompt": "q" * 2000,
        "negative_prompt": "n" * 1500,
        "n": 2,
    }
    out = redact(original)
    for key in ("image", "image_tail", "static_mask", "scene_image", "style_image"):
        assert out[key] == fingerprint(big)
    assert out["subject_image_list"] == [
        {"subject_image": fingerprint(big)},
        {"subject_image": URL},
    ]
    assert out["dynamic_masks"] == [{"mask": fingerprint(big), "trajectories": [{"x": 1, "y": 2}]}]
    assert out["prompt"] == "q" * 2000
    assert out["negative_prompt"] == "n" * 1500
    assert out["n"] == 2
    assert original["image"] == big  # the input is untouched


def test_redact_counts_utf8_bytes_and_keeps_values_up_to_1024_bytes() -> None:
    assert redact({"image": "a" * 1024}) == {"image": "a" * 1024}
    assert redact({"image": "é" * 513}) == {"image": fingerprint("é" * 513)}  # 1026 bytes


def test_redact_returns_a_deep_copy() -> None:
    original = {"camera_control": {"config": {"zoom": 1}}, "image_list": [{"image": URL}]}
    out = redact(original)
    assert out == original
    out["camera_control"]["config"]["zoom"] = 5
    out["image_list"][0]["image"] = "changed"
    assert original == {"camera_control": {"config": {"zoom": 1}}, "image_list": [{"image": URL}]}


async def test_registrar_closes_as_an_async_context_manager() -> None:
    receiver = FakeReceiver()
    async with receiver.registrar() as registrar:
        submission = Submission(
            "1", "kh-1", f"{PUBLIC_URL}/callbacks/kh-1/t", "submitted", None, GEN
        )
        await registrar.register(route=GEN, submission=submission, body={"prompt": "x"})
    assert json.loads(receiver.requests[0].content)["request"] == {"prompt": "x"}


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_base": "127.0.0.1:9000"}, "api_base"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_client_refuses_a_bad_base_url_or_attempt_count(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_client(FakeKling(), **kwargs)


async def test_plain_429_without_klings_envelope_is_retried() -> None:
    kling = FakeKling(posts=[httpx.Response(429, text="Too Many Requests"), "create"])
    async with make_client(kling) as client:
        await client.submit(GEN, VALID_BODIES[GEN])
    assert kling.methods == ["POST", "POST"]
