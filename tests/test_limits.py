"""Backpressure and slow clients (receiver/limits.py): the in-flight limit answers 503 with
Retry-After, a body or headers that do not arrive in time get 408, and the server goes on
serving. Raw sockets play the slow clients, against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import (
    API_TOKEN,
    Receiver,
    make_settings,
    rows,
    serve,
    start_receiver,
    task_body,
)

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connections(base_url: str) -> AsyncIterator[list[Connection]]:
    """Raw TCP connections to ``base_url``'s host and port: each one appended to the list
    by :func:`connect`, all closed when the block ends."""
    opened: list[Connection] = []
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def connect(opened: list[Connection], base_url: str) -> Connection:
    url = urlsplit(base_url)
    conn = await asyncio.open_connection(url.hostname, url.port)
    opened.append(conn)
    return conn


async def open_request(
    opened: list[Connection], r: Receiver, ext: str, body: bytes, send: int
) -> Connection:
    """Start a callback POST whose ``Content-Length`` is the whole ``body`` but send only its
    first ``send`` bytes; the connection stays open."""
    reader, writer = await connect(opened, r.url)
    whole = callback_request(r, ext, body)
    writer.write(whole[: len(whole) - len(body) + send])  # the head, and send bytes of body
    await writer.drain()
    return reader, writer


def callback_request(r: Receiver, ext: str, body: bytes) -> bytes:
    """A whole callback POST for ``ext`` with ``body``, as bytes on the wire."""
    url = urlsplit(r.callback_url(ext))
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one HTTP/1.1 answer."""
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_past_the_in_flight_limit_the_answer_is_503_with_retry_after(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_max_in_flight=2, kling_hooks_retry_after_s=3)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        bodies = [json.dumps(task_body(str(i), "processing", f"kh-{i}")).encode() for i in (1, 2)]
        slow = [
            await open_request(opened, r, f"kh-{i}", b, 10)
            for i, b in zip((1, 2), bodies, strict=True)
        ]
        # both reach the app, then wait there for their bodies: from then on, all is refused
        async with asyncio.timeout(5):
            # probed from outside, as a client sees it: there is no event to wait on
            while (await r.http.get(f"{r.url}/healthz")).status_code != 503:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        refused = await r.post_callback("kh-3", task_body("3", "processing", "kh-3"))
        api_refused = await r.get_task("kh-1")
        # the two slow ones finish; the limit frees up
        for (_, writer), body in zip(slow, bodies, strict=True):
            writer.write(body[10:])
        answers = [await answer_of(reader) for reader, _ in slow]
        accepted = await r.post_callback("kh-3", task_body("3", "processing", "kh-3"))
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "3")
    assert refused.json() == {
        "ok": False,
        "error": "too many requests in flight (over 2), retry later",
    }
    assert api_refused.status_code == 503  # the limit covers every route
    assert [a[0] for a in answers] == [200, 200]
    assert accepted.status_code == 200
    db = tmp_path / "kling-hooks.db"
    assert sorted(x[0] for x in rows(db, "SELECT task_id FROM tasks")) == ["1", "2", "3"]
    assert len(rows(db, "SELECT id FROM callbacks")) == 3  # the refused one stored nothing


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    # The connection stayed open after the 408 (keep-alive), for ever if the rest of the body
    # kept dripping in.
    settings = make_settings(tmp_path, kling_hooks_body_timeout_s=0.3, kling_hooks_keep_alive_s=60)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        body = json.dumps(task_body("1", "processing", "kh-1")).encode()
        slow, _ = await open_request(opened, r, "kh-1", body, 20)
        status, headers, answer = await answer_of(slow)
        closed = await asyncio.wait_for(slow.read(), 10)
        after = await r.post_callback("kh-2", task_body("2", "processing", "kh-2"))
    assert (status, json.loads(answer)) == (
        408,
        {"ok": False, "error": "body not received within 0.3 s"},
    )
    assert (headers["connection"], closed) == ("close", b"")
    assert after.status_code == 200
    assert [x[0] for x in rows(tmp_path / "kling-hooks.db", "SELECT task_id FROM tasks")] == ["2"]


async def test_headers_that_do_not_arrive_in_time_get_408_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_header_timeout_s=0.3)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        silent_reader, _ = await connect(opened, r.url)
        slow_reader, slow_writer = await connect(opened, r.url)
        slow_writer.write(b"POST /callbacks/kh-1/x HTTP/1.1\r\nHost: a\r\n")  # no end of headers
        silent = await answer_of(silent_reader)
        slow = await answer_of(slow_reader)
        closed = await asyncio.wait_for(slow_reader.read(), 5)
        healthy = await r.http.get(f"{r.url}/healthz")
        scraped = await r.http.get(f"{r.url}/metrics", headers=AUTH)
    for status, headers, body in (silent, slow):
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body) == {"ok": False, "error": "request headers not received in time"}
    assert closed == b""  # the server closed the connection
    assert healthy.status_code == 200
    assert "kling_hooks_header_timeouts_total 2.0" in scraped.text.splitlines()


async def test_a_keep_alive_connection_gets_the_header_deadline_for_each_request(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, kling_hooks_header_timeout_s=0.3)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        reader, writer = await connect(opened, r.url)
        await asyncio.sleep(0.1)  # well within the deadline
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await answer_of(reader)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the second request stalls in its headers
        second = await answer_of(reader)
    assert first[0] == 200
    assert second[0] == 408


async def test_a_header_block_over_max_header_bytes_gets_431_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    # httptools and uvicorn have no header size limit: a 20 MB header cost 22 MB of memory
    settings = make_settings(tmp_path, kling_hooks_max_header_bytes=4096)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        reader, writer = await connect(opened, r.url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 8192)  # no end
        status, headers, body = await answer_of(reader)
        closed = await asyncio.wait_for(reader.read(), 5)
        healthy = await r.http.get(f"{r.url}/healthz")
        scraped = await r.http.get(f"{r.url}/metrics", headers=AUTH)
    assert (status, headers["connection"]) == (431, "close")
    assert json.loads(body) == {
        "ok": False,
        "error": "request line and headers are over 4096 bytes",
    }
    assert closed == b""
    assert healthy.status_code == 200
    assert "kling_hooks_headers_too_large_total 1.0" in scraped.text.splitlines()


async def test_the_header_size_limit_does_not_count_the_body(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_max_header_bytes=1024)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        padded = task_body("1", "processing", "kh-1", task_status_msg="y" * 200_000)
        body = json.dumps(padded).encode()
        reader, _ = await open_request(opened, r, "kh-1", body, len(body))  # in one write
        status, _, _ = await answer_of(reader)
    assert status == 200


async def test_a_connection_answered_before_its_body_ends_is_closed(tmp_path: Path) -> None:
    # A 413 (or a 401) answers before the body has all arrived. The rest of it had been
    # counted as the next request's header bytes (a false 431); and one more byte after the
    # answer stopped the keep-alive timer with no deadline left: open for ever. Now the
    # connection closes after such an answer, the rest of the body dropped.
    settings = make_settings(
        tmp_path,
        kling_hooks_max_body_bytes=1024,
        kling_hooks_max_header_bytes=1024,
        kling_hooks_keep_alive_s=60,
        kling_hooks_header_timeout_s=60,
    )
    async with start_receiver(settings) as r, connections(r.url) as opened:
        body = json.dumps(task_body("1", "processing", "kh-1", task_status_msg="y" * 50_000))
        reader, writer = await open_request(opened, r, "kh-1", body.encode(), 10)
        too_large = await answer_of(reader)
        for start in range(10, len(body), 4096):  # the rest, in several reads
            writer.write(body.encode()[start : start + 4096])
            await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # well before any deadline (60 s)
        healthy = await r.http.get(f"{r.url}/healthz")
    assert too_large[0] == 413
    # It says so: a client does not send its next request into the closing connection.
    assert too_large[1]["connection"] == "close"
    assert rest == b""  # closed, and no 431 was written
    assert healthy.status_code == 200


async def test_a_callback_answered_after_its_whole_body_keeps_the_connection(
    tmp_path: Path,
) -> None:
    async with start_receiver(make_settings(tmp_path)) as r, connections(r.url) as opened:
        body = json.dumps(task_body("1", "processing", "kh-1")).encode()
        reader, writer = await open_request(opened, r, "kh-1", body, len(body))
        first = await answer_of(reader)
        again = json.dumps(task_body("1", "succeed", "kh-1")).encode()
        writer.write(callback_request(r, "kh-1", again))
        second = await answer_of(reader)
    assert (first[0], second[0]) == (200, 200)
    assert "connection" not in first[1]  # kept alive: the second went on the same connection
    assert json.loads(second[2]) == {"ok": True, "verdict": "new"}


async def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_s(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, kling_hooks_keep_alive_s=0.3, kling_hooks_header_timeout_s=60
    )
    async with start_receiver(settings) as r, connections(r.url) as opened:
        reader, writer = await connect(opened, r.url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await answer_of(reader)
        closed = await asyncio.wait_for(reader.read(), 10)  # far less than the header deadline
    assert first[0] == 200
    assert closed == b""  # closed without an answer, as HTTP allows for an idle connection


async def test_a_stray_crlf_on_a_keep_alive_connection_does_not_hold_it_open(
    tmp_path: Path,
) -> None:
    # A CRLF stopped uvicorn's keep-alive timer but began no request, so no header deadline
    # either: the connection stayed open for ever.
    settings = make_settings(
        tmp_path, kling_hooks_keep_alive_s=60, kling_hooks_header_timeout_s=0.3
    )
    async with start_receiver(settings) as r, connections(r.url) as opened:
        reader, writer = await connect(opened, r.url)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await answer_of(reader)
        writer.write(b"\r\n")
        second = await asyncio.wait_for(answer_of(reader), 10)
        closed = await asyncio.wait_for(reader.read(), 5)
    assert first[0] == 200
    assert second[0] == 408
    assert closed == b""


#: Runs the rest of its command line with RLIMIT_NOFILE set to its first argument.
WITH_FD_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]);"
    " resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


async def test_connections_near_the_fd_limit_are_logged_at_warning_and_counted(
    tmp_path: Path,
) -> None:
    # At a 1,024 soft limit, 1,100 idle connections meant 0 of 386 callbacks answered, and
    # nothing logged: libuv accepts and at once closes each connection past the limit.
    config = tmp_path / "kling-hooks.toml"
    config.write_text("kling_hooks_header_timeout_s = 60\n")
    launcher = (sys.executable, "-c", WITH_FD_LIMIT, "320")  # a budget of 320 * 7/8 = 280
    async with (
        serve(config, tmp_path, launcher=launcher) as server,
        connections(server.url) as opened,
    ):
        for _ in range(290):  # past the budget, before the limit: the warning comes first
            await connect(opened, server.url)
        warned = await server.until(lambda e: e.get("event") == "connections_near_fd_limit")
        for _, writer in opened:
            writer.close()
        opened.clear()
        async with httpx.AsyncClient(timeout=10) as http:
            scraped = await http.get(f"{server.url}/metrics", headers=AUTH)
    assert warned["level"] == "warning"
    assert warned["max_connections"] == 280
    assert warned["fd_soft_limit"] == 320
    counted = [x for x in scraped.text.splitlines() if x.startswith("kling_hooks_connections_near")]
    assert len(counted) == 1
    assert float(counted[0].split()[1]) >= 1
