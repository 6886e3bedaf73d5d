"""Local validation: a body that breaks a documented Kling rule is refused before any request.

Every rule of :mod:`submitter.bodies` is exercised through :meth:`KlingClient.submit`, so each
case also checks that nothing reached Kling or the receiver.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from submitter import InvalidRequest
from tests.submitter_support import (
    GEN,
    I2V,
    M2I,
    M2V,
    PNG_B64,
    T2V,
    URL,
    VALID_BODIES,
    FakeKling,
    FakeReceiver,
    body,
    make_client,
)

DATA_URI = f"data:image/png;base64,{PNG_B64}"
TXT_B64 = base64.b64encode(b"hello, not an image").decode()
LONG_PROMPT = "p" * 2501

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
