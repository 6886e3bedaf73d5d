"""The built-in downloader: names and checksums, streaming and atomic saving, size and type
limits, redelivery without refetching, SSRF refusals and DNS pinning, HTTP error mapping; the
plugin called directly against real local servers, and once through a real receiver."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from receiver.models import DeliveryState
from receiver.plugins import Event, PermanentError, RetryAfter, SavedFile, retry_after_s
from receiver.plugins.downloader import (
    Downloader,
    DownloadError,
    DownloaderSettings,
    path_segment,
)
from receiver.plugins.safehttp import UnsafeURL
from receiver.serving import running
from receiver.store.deliveries import Job, Outcome
from submitter.media import mp4_bytes, png_bytes
from submitter.protocol import TaskStatus
from submitter.safehttp import Resolver
from tests.conftest import API_TOKEN, Outcomes, make_settings, start_receiver, task_body
from tests.conftest import rows as stored_rows
from tests.sinks import Answer, start_sink

pytestmark = pytest.mark.both_backends

PNG = png_bytes(seed=1)
MP4 = mp4_bytes(seed=2)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` (temporary ``.part`` files included), relative."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def write(path: str, content: bytes) -> None:
    Path(path).write_bytes(content)


def delete(path: str) -> None:
    Path(path).unlink()


def make_event(
    task_result: dict[str, Any],
    *,
    external_task_id: str = "kh-1",
    saved_files: Iterable[SavedFile] = (),
) -> Event:
    return Event(
        idempotency_key="100:succeed",
        delivery_id=1,
        attempt=1,
        task_id="100",
        external_task_id=external_task_id,
        route=None,
        task_status=TaskStatus.SUCCEED,
        task_status_msg="",
        task_result=task_result,
        final_unit_deduction="1",
        created_at=None,
        updated_at=None,
        received_at=0,
        request=None,
        saved_files=tuple(saved_files),
    )


def images(*urls: str) -> dict[str, Any]:
    return {"images": [{"index": i, "url": u} for i, u in enumerate(urls)]}


def videos(*urls: str) -> dict[str, Any]:
    return {"videos": [{"id": f"v{i}", "url": u, "duration": "5"} for i, u in enumerate(urls)]}


@contextlib.asynccontextmanager
async def started(
    directory: Path,
    *,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | bool = True,
    **values: Any,
) -> AsyncIterator[Downloader]:
    """A started downloader saving under ``directory``; private hosts allowed unless told."""
    settings = DownloaderSettings(directory=directory, **{"allow_private_hosts": True, **values})
    downloader = Downloader(settings, resolver=resolver, verify=verify)
    await downloader.start()
    try:
        yield downloader
    finally:
        await downloader.stop()


async def handle(downloader: Downloader, event: Event) -> list[SavedFile]:
    return list(await downloader.handle(event) or ())


class Streamer:
    """A file server that sends its body in chunks (no Content-Length unless given), then
    ends, drops the connection (``then="drop"``) or hangs until released (``then="hang"``).
    ``sent`` is set once the first chunk went out."""

    def __init__(
        self,
        chunks: list[bytes],
        *,
        then: str = "end",
        content_type: str = "video/mp4",
        content_length: int | None = None,
    ) -> None:
        self.chunks = chunks
        self.then = then
        self.content_type = content_type
        self.content_length = content_length
        self.sent = asyncio.Event()
        self.released = asyncio.Event()
        self.app = Starlette(routes=[Route("/{path:path}", self._file)])

    async def _file(self, request: Request) -> StreamingResponse:
        headers = {}
        if self.content_length is not None:
            headers["Content-Length"] = str(self.content_length)
        return StreamingResponse(self._body(), media_type=self.content_type, headers=headers)

    async def _body(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
            self.sent.set()
        if self.then == "drop":
            raise ConnectionAbortedError("the file server drops the connection mid-body")
        if self.then == "hang":
            await self.released.wait()


@contextlib.asynccontextmanager
async def serving(streamer: Streamer) -> AsyncIterator[str]:
    async with running(streamer.app) as url:
        try:
            yield url
        finally:
            streamer.released.set()


# --- Saving: names, content, streaming --------------------------------------------------------


async def test_every_result_url_is_saved_by_task_kind_and_index_with_its_checksum(
    tmp_path: Path,
) -> None:
    jpeg = b"\xff\xd8\xff" + os.urandom(3000)
    audio = os.urandom(2000)
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        png_url = sink.serve_file("/out/0.png", PNG, "image/png") + "?sig=abc&expires=1"
        mark_url = sink.serve_file("/out/0-wm.png", PNG[::-1], "image/png")
        jpeg_url = sink.serve_file("/blob/1", jpeg, "image/jpeg")
        video_url = sink.serve_file("/out/v.mp4", MP4, "video/mp4")
        video_mark_url = sink.serve_file("/out/v-wm", MP4 + b"wm", "video/mp4")
        audio_url = sink.serve_file("/out/a.mp3", audio, "audio/mpeg")
        result = {
            "images": [
                {"index": 0, "url": png_url, "watermark_url": mark_url},
                {"index": 1, "url": jpeg_url},
            ],
            "videos": [{"id": "v", "url": video_url, "watermark_url": video_mark_url}],
            "audios": [{"url": audio_url}],
        }
        saved = await handle(downloader, make_event(result, external_task_id="kh-01JD"))
    folder = (tmp_path / "files" / "kh-01JD").absolute()
    expected = [
        (png_url, "image-0.png", PNG, "image/png"),
        (mark_url, "image_watermark-0.png", PNG[::-1], "image/png"),
        (jpeg_url, "image-1.jpg", jpeg, "image/jpeg"),
        (video_url, "video-0.mp4", MP4, "video/mp4"),
        (video_mark_url, "video_watermark-0.mp4", MP4 + b"wm", "video/mp4"),
        (audio_url, "audio-0.mp3", audio, "audio/mpeg"),
    ]
    assert saved == [
        SavedFile(url, str(folder / name), len(data), sha256(data), kind)
        for url, name, data, kind in expected
    ]
    for _, name, data, _ in expected:
        assert (folder / name).read_bytes() == data
    assert files_under(tmp_path / "files") == sorted(f"kh-01JD/{n}" for _, n, _, _ in expected)


async def test_a_video_larger_than_a_chunk_is_streamed_into_an_identical_file(
    tmp_path: Path,
) -> None:
    chunks = [os.urandom(256 * 1024) for _ in range(12)]  # 3 MiB, sent in 12 pieces
    video = b"".join(chunks)
    streamer = Streamer(chunks)
    async with serving(streamer) as url, started(tmp_path / "files") as downloader:
        [saved] = await handle(downloader, make_event(videos(f"{url}/big.mp4")))
    assert read(saved.path) == video
    assert (saved.bytes, saved.sha256) == (len(video), sha256(video))
    assert files_under(tmp_path / "files") == ["kh-1/video-0.mp4"]


async def test_requests_ask_for_the_bytes_as_stored_without_content_encoding(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        await handle(downloader, make_event(images(sink.serve_file("/0.png", PNG, "image/png"))))
    assert sink.requests[0].headers["accept-encoding"] == "identity"


async def test_two_urls_with_the_same_kind_and_index_get_distinct_names(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        first = sink.serve_file("/a.png", PNG, "image/png")
        second = sink.serve_file("/b.png", PNG[::-1], "image/png")
        result = {"images": [{"index": 0, "url": first}, {"index": 0, "url": second}]}
        saved = await handle(downloader, make_event(result))
    assert [Path(f.path).name for f in saved] == ["image-0.png", "image-0-2.png"]
    assert [read(f.path) for f in saved] == [PNG, PNG[::-1]]


@pytest.mark.parametrize(
    "external_task_id", ["../x", "../../etc/passwd", "/abs", ".hidden", "..", "a/../../b"]
)
async def test_an_unsafe_external_task_id_becomes_one_segment_inside_the_directory(
    tmp_path: Path, external_task_id: str
) -> None:
    root = tmp_path / "files"
    async with start_sink() as sink, started(root) as downloader:
        url = sink.serve_file("/0.png", PNG, "image/png")
        [saved] = await handle(
            downloader, make_event(images(url), external_task_id=external_task_id)
        )
    path = Path(saved.path)
    assert path.parent.parent == root.absolute()
    assert path.parent.name == path_segment(external_task_id)
    assert not path.parent.name.startswith(".")
    assert "/" not in path.parent.name
    assert files_under(root) == [f"{path_segment(external_task_id)}/image-0.png"]


# --- Limits: size and content type ------------------------------------------------------------


async def test_a_content_length_over_max_bytes_is_refused_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, started(tmp_path / "files", max_bytes=1000) as downloader:
        url = sink.serve_file("/big.mp4", os.urandom(5000), "video/mp4")
        with pytest.raises(PermanentError, match="Content-Length 5000 is over max_bytes=1000"):
            await handle(downloader, make_event(videos(url)))
    assert files_under(tmp_path / "files") == []


async def test_a_chunked_body_over_max_bytes_is_refused_while_streaming_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    streamer = Streamer([os.urandom(600) for _ in range(3)])  # no Content-Length
    async with serving(streamer) as url, started(tmp_path / "files", max_bytes=1000) as d:
        with pytest.raises(PermanentError, match="body longer than max_bytes=1000"):
            await handle(d, make_event(videos(f"{url}/big.mp4")))
    assert files_under(tmp_path / "files") == []


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [
        ("image", "text/html; charset=utf-8"),
        ("image", "application/json"),
        ("image", "video/mp4"),
        ("video", "image/png"),
        ("video", "application/xml"),
    ],
)
async def test_a_content_type_not_of_the_expected_media_is_refused(
    tmp_path: Path, kind: str, content_type: str
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        url = sink.serve_file("/file", b"<html>sign in</html>", content_type)
        result = images(url) if kind == "image" else videos(url)
        with pytest.raises(PermanentError, match=r"Content-Type .* is not"):
            await handle(downloader, make_event(result))
    assert files_under(tmp_path / "files") == []


@pytest.mark.parametrize("content_type", ["application/octet-stream", "binary/octet-stream"])
async def test_an_octet_stream_answer_is_accepted_as_any_media(
    tmp_path: Path, content_type: str
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        url = sink.serve_file("/v.mp4", MP4, content_type)
        [saved] = await handle(downloader, make_event(videos(url)))
    assert read(saved.path) == MP4


# --- Atomicity ------------------------------------------------------------------------------


async def test_a_connection_dropped_mid_body_leaves_neither_a_file_nor_a_temporary_file(
    tmp_path: Path,
) -> None:
    streamer = Streamer([os.urandom(100_000)], then="drop", content_length=1_000_000)
    async with serving(streamer) as url, started(tmp_path / "files") as downloader:
        with pytest.raises(DownloadError) as caught:
            await handle(downloader, make_event(videos(f"{url}/v.mp4")))
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert files_under(tmp_path / "files") == []


async def test_a_server_hanging_mid_body_times_out_leaving_no_file(tmp_path: Path) -> None:
    streamer = Streamer([os.urandom(100_000)], then="hang")
    async with serving(streamer) as url, started(tmp_path / "files", timeout_s=0.3) as downloader:
        with pytest.raises(DownloadError) as caught:
            await handle(downloader, make_event(videos(f"{url}/v.mp4")))
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert files_under(tmp_path / "files") == []


async def test_a_download_cancelled_mid_body_leaves_no_file(tmp_path: Path) -> None:
    streamer = Streamer([os.urandom(100_000)], then="hang")
    async with serving(streamer) as url, started(tmp_path / "files") as downloader:
        task = asyncio.create_task(downloader.handle(make_event(videos(f"{url}/v.mp4"))))
        await streamer.sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert files_under(tmp_path / "files") == []


async def test_a_failed_second_file_keeps_the_complete_first_one(tmp_path: Path) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        good = sink.serve_file("/0.png", PNG, "image/png")
        gone = f"{sink.url}/1.png"
        sink.files["/1.png"] = Answer(404, b"gone")
        with pytest.raises(PermanentError, match="HTTP 404") as caught:
            await handle(downloader, make_event(images(good, gone)))
    assert files_under(tmp_path / "files") == ["kh-1/image-0.png"]
    # The error carries the file saved before it, so the store records it all the same.
    [kept] = caught.value.saved_files
    assert (kept.url, kept.bytes, kept.sha256) == (good, len(PNG), sha256(PNG))


async def test_files_saved_before_a_retried_failure_are_recorded_and_not_fetched_again(
    tmp_path: Path,
) -> None:
    downloads = tmp_path / "downloads"
    table = {"directory": str(downloads), "allow_private_hosts": True, "retry_schedule_s": [0.05]}
    async with start_sink() as sink:
        good = sink.serve_file("/0.png", PNG, "image/png")
        flaky = sink.serve_file("/1.png", PNG[::-1] + PNG, "image/png")
        sink.files["/1.png"] = Answer(500, b"try again")
        settings = make_settings(tmp_path, plugins={"downloader": table})
        async with start_receiver(settings) as r:
            outcomes = Outcomes(r)
            body = task_body("100", "succeed", "kh-1", task_result=images(good, flaky))
            await r.post_callback("kh-1", body)
            [(_, first)] = await outcomes.until(lambda seen: len(seen) == 1)
            assert first.state is DeliveryState.FAILED
            assert [f.url for f in first.files] == [good]  # recorded although it failed
            sink.files["/1.png"] = Answer(200, PNG[::-1] + PNG, content_type="image/png")
            await outcomes.states(("downloader", DeliveryState.DONE))
            task = (await r.get_task("kh-1")).json()
    assert sorted(f["url"] for f in task["files"]) == [good, flaky]
    assert [rq.path for rq in sink.requests].count("/0.png") == 1  # not fetched again


# --- Redelivery -------------------------------------------------------------------------------


async def test_a_redelivery_with_the_recorded_file_unchanged_makes_no_request(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        result = images(sink.serve_file("/0.png", PNG, "image/png"))
        first = await handle(downloader, make_event(result))
        again = await handle(downloader, make_event(result, saved_files=first))
    assert again == first
    assert len(sink.requests) == 1


async def test_a_temporary_file_left_by_a_killed_process_is_removed_on_redelivery(
    tmp_path: Path,
) -> None:
    leftover = tmp_path / "files" / "kh-1" / ".image-0.png.k1ll3d00.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(PNG[:10])  # what SIGKILL mid-download leaves behind
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        [saved] = await handle(
            downloader, make_event(images(sink.serve_file("/0.png", PNG, "image/png")))
        )
    assert files_under(tmp_path / "files") == ["kh-1/image-0.png"]
    assert read(saved.path) == PNG


async def test_a_redelivery_fetches_again_a_file_changed_on_disk(tmp_path: Path) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        result = images(sink.serve_file("/0.png", PNG, "image/png"))
        [first] = await handle(downloader, make_event(result))
        write(first.path, b"x" * len(PNG))  # same size, other content
        again = await handle(downloader, make_event(result, saved_files=[first]))
    assert again == [first]
    assert read(first.path) == PNG
    assert len(sink.requests) == 2


async def test_a_redelivery_fetches_again_a_file_deleted_from_disk(tmp_path: Path) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        result = images(sink.serve_file("/0.png", PNG, "image/png"))
        [first] = await handle(downloader, make_event(result))
        delete(first.path)
        await handle(downloader, make_event(result, saved_files=[first]))
    assert read(first.path) == PNG
    assert len(sink.requests) == 2


# --- SSRF -------------------------------------------------------------------------------------


async def test_a_loopback_url_is_refused_when_private_hosts_are_not_allowed(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink:
        url = sink.serve_file("/0.png", PNG, "image/png")
        async with started(tmp_path / "files", allow_private_hosts=False) as downloader:
            with pytest.raises(
                UnsafeURL,
                match=r"refused host '127\.0\.0\.1': it is a loopback address"
                r" \(allow_private_hosts = true allows it\)",
            ):
                await handle(downloader, make_event(images(url)))
    assert sink.requests == []
    assert files_under(tmp_path / "files") == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/0.png", "gopher://a/b"])
async def test_a_url_that_is_not_http_is_refused(tmp_path: Path, url: str) -> None:
    async with started(tmp_path / "files") as downloader:  # even with private hosts allowed
        with pytest.raises(PermanentError, match="only http and https URLs are fetched"):
            await handle(downloader, make_event(images(url)))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.1.2.3/0.png", "private"),
        ("http://192.168.0.10/0.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:8080/0.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/0.png", "loopback"),
        ("http://0.0.0.0/0.png", "unspecified"),
        ("http://224.0.0.1/0.png", "multicast"),
        ("https://100.64.0.1/0.png", "non-global"),
    ],
)
async def test_a_private_ip_literal_is_refused(tmp_path: Path, url: str, reason: str) -> None:
    async with started(tmp_path / "files", allow_private_hosts=False) as downloader:
        with pytest.raises(UnsafeURL, match=f"it is a {reason} address"):
            await handle(downloader, make_event(images(url)))


async def test_a_host_name_resolving_to_loopback_is_refused(tmp_path: Path) -> None:
    async with start_sink() as sink:
        port = sink.url.rsplit(":", 1)[1]
        url = f"http://localhost:{port}/0.png"
        async with started(tmp_path / "files", allow_private_hosts=False) as downloader:
            with pytest.raises(UnsafeURL, match=r"refused host 'localhost': it resolves to"):
                await handle(downloader, make_event(images(url)))
    assert sink.requests == []


class FakeDNS:
    """A resolver answering from a list of answers, one per call; records the calls."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_a_host_with_any_private_address_among_public_ones_is_refused(
    tmp_path: Path,
) -> None:
    dns = FakeDNS(["93.184.216.34", "10.0.0.7"])
    async with started(tmp_path / "files", allow_private_hosts=False, resolver=dns) as d:
        with pytest.raises(
            UnsafeURL, match=r"'cdn\.example\.com': it resolves to 10\.0\.0\.7, a priv"
        ):
            await handle(d, make_event(images("https://cdn.example.com/0.png")))
    assert dns.calls == ["cdn.example.com"]


async def test_each_redirect_hop_is_followed_and_saved_under_the_first_url(
    tmp_path: Path,
) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        sink.serve_file("/real/0.png", PNG, "image/png")
        sink.answer(Answer(302, b"", headers={"Location": "/real/0.png"}))
        url = f"{sink.url}/signed?sig=abc"
        [saved] = await handle(downloader, make_event(images(url)))
    assert [r.path for r in sink.requests] == ["/signed", "/real/0.png"]
    assert saved.url == url
    assert Path(saved.path).name == "image-0.png"
    assert read(saved.path) == PNG


async def test_a_redirect_to_a_non_http_url_is_refused(tmp_path: Path) -> None:
    async with start_sink() as sink, started(tmp_path / "files") as downloader:
        sink.answer(Answer(302, b"", headers={"Location": "file:///etc/passwd"}))
        with pytest.raises(UnsafeURL, match="'file' URL"):
            await handle(downloader, make_event(images(f"{sink.url}/0.png")))
    assert len(sink.requests) == 1


async def test_more_than_five_redirects_are_refused(tmp_path: Path) -> None:
    loop = Answer(302, b"", headers={"Location": "/again"})
    async with start_sink(loop) as sink, started(tmp_path / "files") as downloader:
        with pytest.raises(UnsafeURL, match="more than 5 redirects"):
            await handle(downloader, make_event(images(f"{sink.url}/0.png")))
    assert len(sink.requests) == 6


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``files.example`` (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=files.example"),
            *("-addext", "subjectAltName=DNS:files.example"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_the_connection_goes_to_the_address_resolved_once_with_the_name_in_host_and_sni(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    seen: dict[str, Any] = {}

    def on_sni(_sock: Any, name: str | None, _ctx: Any) -> None:
        seen["sni"] = name

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["head"] = (await reader.readuntil(b"\r\n\r\n")).decode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(PNG)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + PNG)
        await writer.drain()
        writer.close()

    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server_tls.sni_callback = on_sni
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    # A rebinding DNS: a second look-up would answer an unreachable address.
    dns = FakeDNS(["127.0.0.1"], ["192.0.2.1"])
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with started(tmp_path / "files", resolver=dns, verify=trust) as downloader:
            url = f"https://files.example:{port}/0.png?sig=abc"
            [saved] = await handle(downloader, make_event(images(url)))
    finally:
        server.close()
        await server.wait_closed()
    assert dns.calls == ["files.example"]
    assert seen["sni"] == "files.example"
    assert f"\r\nhost: files.example:{port}\r\n" in seen["head"].lower()
    assert seen["head"].startswith("GET /0.png?sig=abc HTTP/1.1\r\n")
    assert read(saved.path) == PNG


# --- HTTP answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 410])
async def test_a_deleted_file_is_a_permanent_error(tmp_path: Path, status: int) -> None:
    async with start_sink(Answer(status, b"no such key")) as sink:
        async with started(tmp_path / "files") as downloader:
            with pytest.raises(PermanentError, match=f"HTTP {status} for http://.*/0.png: the"):
                await handle(downloader, make_event(images(f"{sink.url}/0.png?sig=secret")))
    assert files_under(tmp_path / "files") == []


@pytest.mark.parametrize("status", [429, 503])
async def test_a_busy_answer_with_retry_after_asks_for_that_delay(
    tmp_path: Path, status: int
) -> None:
    busy = Answer(status, b"slow down", headers={"Retry-After": "7"})
    async with start_sink(busy) as sink, started(tmp_path / "files") as downloader:
        with pytest.raises(RetryAfter) as raised:
            await handle(downloader, make_event(images(f"{sink.url}/0.png")))
    assert raised.value.seconds == 7


@pytest.mark.parametrize(
    "answer", [Answer(500, b"oops"), Answer(502, b"bad gateway"), Answer(429, b"no header")]
)
async def test_other_failures_are_ordinary_errors_retried_on_the_schedule(
    tmp_path: Path, answer: Answer
) -> None:
    async with start_sink(answer) as sink, started(tmp_path / "files") as downloader:
        with pytest.raises(DownloadError, match=f"HTTP {answer.status} for") as raised:
            await handle(downloader, make_event(images(f"{sink.url}/0.png?sig=secret")))
    assert not isinstance(raised.value, PermanentError)
    assert "secret" not in str(raised.value)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("120", now=now) == 120
    assert retry_after_s("Sun, 01 Mar 2026 12:00:30 GMT", now=now) == 30
    assert retry_after_s("Sun, 01 Mar 2026 11:00:00 GMT", now=now) == 0
    assert retry_after_s("soon", now=now) is None
    assert retry_after_s(None, now=now) is None


# --- Start-up and configuration ---------------------------------------------------------------


async def test_start_creates_the_directory(tmp_path: Path) -> None:
    async with started(tmp_path / "a" / "b"):
        assert (tmp_path / "a" / "b").is_dir()


async def test_start_fails_when_the_directory_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    downloader = Downloader(DownloaderSettings(directory=tmp_path / "file" / "sub"))
    with pytest.raises(OSError):
        await downloader.start()


def test_settings_default_to_succeeded_tasks_a_long_timeout_and_no_private_hosts(
    tmp_path: Path,
) -> None:
    settings = DownloaderSettings(directory=tmp_path)
    downloader = Downloader(settings)
    assert downloader.statuses == frozenset({TaskStatus.SUCCEED})
    assert (settings.timeout_s, settings.max_bytes) == (900, 2 * 1024**3)
    assert settings.allow_private_hosts is False


# --- Through a real receiver ------------------------------------------------------------------


async def test_a_succeeded_task_files_are_saved_listed_and_not_fetched_again_on_replay(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "files"
    plugins = {
        "downloader": {
            "directory": str(directory),
            "allow_private_hosts": True,
            "retry_schedule_s": [0.05],
        }
    }
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with start_sink() as sink:
        png_url = sink.serve_file("/out/0.png", PNG, "image/png") + "?sig=abc"
        mp4_url = sink.serve_file("/out/v.mp4", MP4, "video/mp4")
        result = {
            "images": [{"index": 0, "url": png_url}],
            "videos": [{"id": "v1", "url": mp4_url, "duration": "5"}],
        }
        async with start_receiver(make_settings(tmp_path, plugins=plugins)) as r:
            done = Finished(r.services.dispatcher)
            await r.post_callback("kh-9", task_body("900", "processing", "kh-9"))
            body = task_body("900", "succeed", "kh-9", task_result=result)
            assert (await r.post_callback("kh-9", body)).status_code == 200
            await done.wait(1)
            task = (await r.get_task("900")).json()
            [delivery] = [d for d in task["deliveries"] if d["plugin"] == "downloader"]
            replay = await r.http.post(
                f"{r.url}/deliveries/{delivery['id']}/redeliver", headers=auth
            )
            assert replay.status_code == 200
            await done.wait(2)
    folder = directory.absolute() / "kh-9"
    expected = [
        {
            "url": png_url,
            "path": str(folder / "image-0.png"),
            "bytes": len(PNG),
            "sha256": sha256(PNG),
            "content_type": "image/png",
        },
        {
            "url": mp4_url,
            "path": str(folder / "video-0.mp4"),
            "bytes": len(MP4),
            "sha256": sha256(MP4),
            "content_type": "video/mp4",
        },
    ]
    assert task["files"] == expected
    assert delivery["task_status"] == "succeed"
    assert (folder / "image-0.png").read_bytes() == PNG
    assert (folder / "video-0.mp4").read_bytes() == MP4
    assert [req.path for req in sink.requests] == ["/out/0.png", "/out/v.mp4"]  # none on replay
    names = ("url", "path", "bytes", "sha256", "content_type")
    saved = stored_rows(
        tmp_path / "kling-hooks.db", f"SELECT {', '.join(names)} FROM files ORDER BY id"
    )
    assert [dict(zip(names, row, strict=True)) for row in saved] == expected


class Finished:
    """A dispatcher listener counting the downloader's deliveries that ended ``done``."""

    def __init__(self, dispatcher: Any) -> None:
        self.count = 0
        self._changed = asyncio.Condition()
        dispatcher.add_listener(self._on)

    def _on(self, job: Job, outcome: Outcome) -> None:
        if job.plugin == "downloader" and outcome.state is DeliveryState.DONE:
            self.count += 1
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, count: int, timeout_s: float = 15.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.count >= count), timeout_s)
