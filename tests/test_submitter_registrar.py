"""Registering a created task with the receiver (``POST /tasks``), and the redaction of its body.

The receiver's endpoint is an ``httpx.MockTransport`` handler that records every request.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from submitter import Submission, redact
from tests.submitter_support import (
    CREATED_AT_MS,
    GEN,
    M2V,
    PNG_B64,
    PUBLIC_URL,
    RECEIVER_TOKEN,
    URL,
    VALID_BODIES,
    FakeKling,
    FakeReceiver,
    body,
    make_client,
)

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
        "); Kling has it: the receiver records it with its first accepted callback, but if no"
        " callback reaches a running receiver nothing here knows of it: keep its task_id"
        f" ({submission.task_id}) and ask Kling (kling-hooks kling get {GEN}"
        f" {submission.task_id})"
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
