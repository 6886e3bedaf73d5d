"""Kling's image rules (seed 002): JPEG or PNG, at most 10 MB, at least 300 px on a side, aspect
ratio within 1:2.5 to 2.5:1. Base64 images are always checked; URL images only with
``check_images=True`` (``--check-images``), fetched from a real server on 127.0.0.1.

The images are real: PNGs from :func:`submitter.media.png_bytes`, a JPEG header and a GIF
header built here byte by byte. Kling is the recording ``FakeKling`` (or the simulator, for the
command line), so "nothing sent" is checked on what it received.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from receiver.serving import running
from submitter import InvalidRequest, validate_body
from submitter.bodies import MAX_IMAGE_BYTES
from submitter.images import HEAD_BYTES
from submitter.media import png_bytes
from submitter.safehttp import Guard
from submitter.simulator import Simulator
from tests.conftest import Receiver
from tests.sinks import Answer, Sink, start_sink
from tests.submitter_support import GEN, M2I, M2V, FakeKling, body, make_client
from tests.test_cli import kling_hooks, submit_env

RULED = "subject_image_list.0.subject_image"
LOOPBACK_ALLOWED = Guard(allow_private_hosts=True)  # the test server is on 127.0.0.1


def jpeg_bytes(width: int, height: int) -> bytes:
    """A baseline JPEG header: SOI, a JFIF APP0 segment, an SOF0 frame header holding the
    size (3 components), EOI. No scan data: enough for a reader of headers."""
    app0 = b"JFIF\x00" + bytes([1, 1, 0]) + struct.pack(">HH", 1, 1) + bytes([0, 0])
    sof0 = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 2 + len(app0))
        + app0
        + b"\xff\xc0"
        + struct.pack(">H", 2 + len(sof0))
        + sof0
        + b"\xff\xd9"
    )


def gif_bytes(width: int, height: int) -> bytes:
    """A GIF89a header with the logical screen size, no colour table, then the trailer."""
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multi(image: str, **fields: Any) -> dict[str, Any]:
    """A multi-image2image body with ``image`` as its one subject image."""
    return body(M2I, subject_image_list=[{"subject_image": image}], **fields)


async def refused(kling: FakeKling, route: str, sent: dict[str, Any], **kw: Any) -> list[str]:
    """Submit ``sent``, expect :class:`InvalidRequest`; the problems as ``"field: rule"``."""
    guard = kw.pop("image_guard", None)
    async with make_client(kling, image_guard=guard) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.submit(route, sent, **kw)
    assert kling.requests == []  # nothing reached Kling
    return [str(p) for p in caught.value.problems]


# --- Base64 images: always checked ----------------------------------------------------------


async def test_a_1x1_base64_png_is_refused_naming_field_value_rule_and_seed() -> None:
    kling = FakeKling()
    problems = await refused(kling, M2I, multi(b64(png_bytes(1, 1))))
    assert problems == [f"{RULED}: a 1x1 PNG is under 300 px on a side (seed 002: ≥300px)"]


async def test_the_message_ends_with_the_route_as_every_invalid_request_does() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_body(M2I, multi(b64(png_bytes(299, 300))))
    assert str(caught.value) == (
        f"{RULED}: a 299x300 PNG is under 300 px on a side (seed 002: ≥300px)"
        " (images/multi-image2image)"
    )


async def test_an_image_wider_than_2_5_to_1_is_refused_with_its_ratio() -> None:
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(b64(png_bytes(300, 300)), scene_image=b64(png_bytes(800, 300)))
    )
    assert problems == [
        "scene_image: a 800x300 PNG has an aspect ratio of 2.67:1, outside 1:2.5 to 2.5:1"
        " (seed 002)"
    ]


async def test_a_jpeg_taller_than_1_to_2_5_is_refused_with_its_ratio() -> None:
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(b64(png_bytes(300, 300)), style_image=b64(jpeg_bytes(400, 1200)))
    )
    assert problems == [
        "style_image: a 400x1200 JPEG has an aspect ratio of 1:3.00, outside 1:2.5 to 2.5:1"
        " (seed 002)"
    ]


async def test_an_image_breaking_two_rules_gets_both_and_every_image_is_reported() -> None:
    kling = FakeKling()
    images = [{"subject_image": b64(png_bytes(100, 1000))}, {"subject_image": b64(png_bytes(1, 1))}]
    problems = await refused(kling, M2I, body(M2I, subject_image_list=images))
    assert problems == [
        f"{RULED}: a 100x1000 PNG is under 300 px on a side (seed 002: ≥300px)",
        f"{RULED}: a 100x1000 PNG has an aspect ratio of 1:10.00, outside 1:2.5 to 2.5:1"
        " (seed 002)",
        "subject_image_list.1.subject_image: a 1x1 PNG is under 300 px on a side"
        " (seed 002: ≥300px)",
    ]


async def test_a_png_whose_header_holds_no_size_is_refused() -> None:
    kling = FakeKling()
    problems = await refused(kling, M2I, multi(b64(b"\x89PNG\r\n\x1a\n" + bytes(100))))
    assert problems == [
        f"{RULED}: a PNG has no pixel size in its first 108 bytes"
        " (seed 002: ≥300px, aspect 1:2.5 to 2.5:1)"
    ]


async def test_the_scence_image_spelling_is_checked_too() -> None:
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(b64(png_bytes(300, 300)), scence_image=b64(png_bytes(1, 1)))
    )
    [problem] = problems
    assert problem.endswith(": a 1x1 PNG is under 300 px on a side (seed 002: ≥300px)")
    assert problem.split(":")[0] in ("scene_image", "scence_image")


async def test_a_base64_gif_and_an_image_over_10_mb_are_refused_before_sizes_are_read() -> None:
    # bodies.py's own checks of every inline image come first, with their own messages.
    kling = FakeKling()
    [gif] = await refused(kling, M2I, multi(b64(gif_bytes(400, 400))))
    assert gif.startswith(f"{RULED}: must be a JPEG or PNG image")
    big = png_bytes(400, 400) + bytes(MAX_IMAGE_BYTES)
    [large] = await refused(kling, M2I, multi(b64(big)))
    assert large.startswith(f"{RULED}: decodes to {len(big)} bytes, over the 10 MB limit")


@pytest.mark.parametrize(
    ("width", "height"), [(300, 300), (300, 750), (750, 300), (1024, 768)], ids=str
)
async def test_images_within_every_rule_are_sent_whole(width: int, height: int) -> None:
    kling = FakeKling()
    good = b64(png_bytes(width, height))
    sent = multi(good, scene_image=b64(jpeg_bytes(height, width)), style_image=good)
    async with make_client(kling) as client:
        await client.submit(M2I, sent)
    [wire] = kling.sent_bodies()
    assert wire["subject_image_list"] == [{"subject_image": good}]
    assert wire["style_image"] == good


async def test_fields_whose_seed_page_states_no_image_rule_are_not_checked() -> None:
    # Seeds 003 (images/generations "image") and 001 (image_list[].image) give no pixel rule.
    tiny = b64(png_bytes(1, 1))
    assert validate_body(GEN, body(GEN, image=tiny))["image"] == tiny
    assert validate_body(M2V, body(M2V, image_list=[{"image": tiny}]))["image_list"] == [
        {"image": tiny}
    ]


# --- URL images: only with check_images -----------------------------------------------------


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with start_sink() as server:
        yield server


async def test_url_images_are_not_fetched_without_check_images(sink: Sink) -> None:
    url = sink.serve_file("/tiny.png", png_bytes(1, 1), "image/png")
    kling = FakeKling()
    async with make_client(kling, image_guard=LOOPBACK_ALLOWED) as client:
        await client.submit(M2I, multi(url))
    assert sink.requests == []
    assert kling.sent_bodies()[0]["subject_image_list"] == [{"subject_image": url}]


async def test_a_small_url_image_is_refused_after_a_ranged_get_and_nothing_is_sent(
    sink: Sink,
) -> None:
    url = sink.serve_file("/tiny.png", png_bytes(1, 1), "image/png")
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(url), check_images=True, image_guard=LOOPBACK_ALLOWED
    )
    assert problems == [f"{RULED}: {url} (a 1x1 PNG) is under 300 px on a side (seed 002: ≥300px)"]
    [request] = sink.requests
    assert (request.method, request.headers["range"]) == ("GET", f"bytes=0-{HEAD_BYTES - 1}")


async def test_url_images_within_every_rule_are_sent_with_check_images(sink: Sink) -> None:
    png = sink.serve_file("/ok.png", png_bytes(300, 300), "image/png")
    jpeg = sink.serve_file("/ok.jpg", jpeg_bytes(640, 480), "image/jpeg")
    kling = FakeKling()
    async with make_client(kling, image_guard=LOOPBACK_ALLOWED) as client:
        await client.submit(M2I, multi(png, style_image=jpeg), check_images=True)
    assert len(sink.requests) == 2
    assert kling.sent_bodies()[0]["style_image"] == jpeg


async def test_a_url_gif_and_a_url_jpeg_of_the_wrong_shape_are_refused(sink: Sink) -> None:
    gif = sink.serve_file("/a.gif", gif_bytes(400, 400), "image/gif")
    wide = sink.serve_file("/wide.jpg", jpeg_bytes(1000, 300), "image/jpeg")
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(gif, scene_image=wide), check_images=True, image_guard=LOOPBACK_ALLOWED
    )
    assert problems == [
        f"{RULED}: {gif} ({len(gif_bytes(400, 400))} bytes starting b'GIF89a\\x90\\x01')"
        " is not a JPEG or PNG image (seed 002: .jpg/.jpeg/.png)",
        f"scene_image: {wide} (a 1000x300 JPEG) has an aspect ratio of 3.33:1, outside 1:2.5"
        " to 2.5:1 (seed 002)",
    ]


async def test_a_url_image_over_10_mb_is_refused_by_its_content_range_total(sink: Sink) -> None:
    head = png_bytes(400, 400)
    total = MAX_IMAGE_BYTES + 1
    range_ = f"bytes 0-{len(head) - 1}/{total}"
    sink.answer(Answer(206, head, headers={"Content-Range": range_}, content_type="image/png"))
    kling = FakeKling()
    url = f"{sink.url}/big.png"
    problems = await refused(
        kling, M2I, multi(url), check_images=True, image_guard=LOOPBACK_ALLOWED
    )
    assert problems == [
        f"{RULED}: {url} (a 400x400 PNG) is {total} bytes, over 10 MB (seed 002: ≤10MB)"
    ]


async def test_a_server_ignoring_range_is_read_only_as_far_as_needed(sink: Sink) -> None:
    big = png_bytes(400, 400) + bytes(MAX_IMAGE_BYTES)  # sent whole, with Content-Length
    url = sink.serve_file("/big.png", big, "image/png")
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(url), check_images=True, image_guard=LOOPBACK_ALLOWED
    )
    assert problems == [
        f"{RULED}: {url} (a 400x400 PNG) is {len(big)} bytes, over 10 MB (seed 002: ≤10MB)"
    ]


async def test_a_url_that_cannot_be_fetched_is_refused_with_the_status(sink: Sink) -> None:
    url = f"{sink.url}/missing.png"
    sink.answer(Answer(404, b"not found"))
    kling = FakeKling()
    problems = await refused(
        kling, M2I, multi(url), check_images=True, image_guard=LOOPBACK_ALLOWED
    )
    assert problems == [f"{RULED}: {url} could not be checked: HTTP 404"]


async def test_a_loopback_url_is_refused_unfetched_unless_loopback_is_allowed(sink: Sink) -> None:
    url = sink.serve_file("/ok.png", png_bytes(300, 300), "image/png")
    kling = FakeKling()
    [problem] = await refused(kling, M2I, multi(url), check_images=True)  # the default Guard()
    assert problem.startswith(
        f"{RULED}: {url} could not be checked: refused host '127.0.0.1': it is a loopback address"
    )
    assert "allow_private_hosts" not in problem  # no such setting for a submit
    assert sink.requests == []


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(delay_s=(0.0, 0.01), seed=1)
    yield simulator
    await simulator.aclose()


@pytest.fixture
async def sim_url(sim: Simulator) -> AsyncIterator[str]:
    async with running(sim.app) as url:
        yield url


async def test_submit_refuses_a_tiny_base64_image_with_exit_2_and_sends_nothing(
    receiver: Receiver, sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    data = json.dumps(multi(b64(png_bytes(1, 1))))
    run = await kling_hooks(
        "submit", M2I, "--data", data, env=submit_env(receiver, sim_url), cwd=tmp_path
    )
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f"invalid request, nothing sent: {RULED}: a 1x1 PNG is under 300 px on a side"
        " (seed 002: ≥300px) (images/multi-image2image)\n"
    )
    assert sim.requests == []


async def test_submit_check_images_fetches_url_images_with_the_ssrf_guard(
    receiver: Receiver, sim: Simulator, sim_url: str, sink: Sink, tmp_path: Path
) -> None:
    url = sink.serve_file("/ok.png", png_bytes(300, 300), "image/png")
    data = json.dumps(multi(url))
    env = submit_env(receiver, sim_url)
    checked = await kling_hooks(
        "submit", M2I, "--data", data, "--check-images", env=env, cwd=tmp_path
    )
    assert checked.code == 2, checked.err
    assert "nothing sent" in checked.err
    assert "could not be checked: refused host '127.0.0.1': it is a loopback address" in checked.err
    assert sink.requests == []  # the guard refused before connecting
    assert sim.requests == []
    unchecked = await kling_hooks("submit", M2I, "--data", data, env=env, cwd=tmp_path)
    assert unchecked.code == 0, unchecked.err
    assert json.loads(unchecked.out)["route"] == M2I
    assert sink.requests == []
