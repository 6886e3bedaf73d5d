"""The simulator's result files: PNG and MP4 bytes, ``GET /files/{name}``, and a loopback run.

One test runs the simulator under uvicorn on 127.0.0.1 and downloads a result over TCP.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import httpx
import uvicorn

from submitter.media import mp4_bytes, png_bytes
from submitter.simulator import Simulator
from tests import simulator_support as support
from tests.simulator_support import (
    AUTH,
    CREATE,
    FAST,
    api,
    create,
    decode_png,
    mp4_boxes,
)

# The shared fixtures, bound by name so that pytest finds them in this module.
sink = support.sink
sim = support.sim


# -- result files ----------------------------------------------------------------------------


def test_png_bytes_is_a_valid_png_with_the_requested_size() -> None:
    width, height, raw = decode_png(png_bytes(200, 100, seed=4))

    assert (width, height) == (200, 100)
    assert len(raw) == height * (1 + 3 * width)
    assert png_bytes(200, 100, seed=4) == png_bytes(200, 100, seed=4)
    assert png_bytes(200, 100, seed=4) != png_bytes(200, 100, seed=5)


def test_mp4_bytes_is_an_iso_media_file() -> None:
    data = mp4_bytes(seed=1, duration_s=10)

    assert data[4:8] == b"ftyp" and data[8:12] == b"isom"
    assert mp4_boxes(data) == [b"ftyp", b"moov", b"mdat"]
    mvhd = data.index(b"mvhd")
    timescale, duration = struct.unpack(">II", data[mvhd + 16 : mvhd + 24])
    assert (timescale, duration) == (1000, 10_000)


async def test_result_files_are_served_with_type_and_length(sim: Simulator) -> None:
    image_id = (await create(sim, {"prompt": "a", "aspect_ratio": "16:9"})).json()["data"]
    video_id = (await create(sim, {"prompt": "a"}, route="/v1/videos/text2video")).json()["data"]
    await sim.wait_idle()
    async with api(sim) as client:
        image = await client.get(f"/files/{image_id['task_id']}-0.png")
        video = await client.get(f"/files/{video_id['task_id']}.mp4")
        beyond_n = await client.get(f"/files/{image_id['task_id']}-1.png")
        unknown = await client.get("/files/nothing.png")

    assert image.headers["content-type"] == "image/png"
    assert int(image.headers["content-length"]) == len(image.content)
    assert decode_png(image.content)[:2] == (568, 320)
    assert video.headers["content-type"] == "video/mp4"
    assert int(video.headers["content-length"]) == len(video.content)
    assert mp4_boxes(video.content)[0] == b"ftyp"
    assert beyond_n.status_code == 404 and unknown.status_code == 404


# -- end to end over loopback ----------------------------------------------------------------


async def test_simulator_under_uvicorn_serves_a_task_and_its_png_over_loopback() -> None:
    simulator = Simulator(delay_s=FAST, seed=2, prefix="/kling")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections queue until uvicorn accepts them: no start-up polling
    port = listener.getsockname()[1]
    config = uvicorn.Config(simulator.app, log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            created = await client.post("/kling" + CREATE, json={"prompt": "a"}, headers=AUTH)
            task_id = created.json()["data"]["task_id"]
            await simulator.wait_idle()
            query = await client.get(f"/kling{CREATE}/{task_id}", headers=AUTH)
            url = query.json()["data"]["task_result"]["images"][0]["url"]
            image = await client.get(url)
    finally:
        server.should_exit = True
        await serving
        listener.close()

    assert isinstance(task_id, str)
    assert url == f"{base}/files/{task_id}-0.png"
    assert decode_png(image.content)[:2] == (320, 320)
