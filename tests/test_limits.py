"""Backpressure and slow clients (receiver/limits.py): the in-flight limit answers 503 with
Retry-After, a body or headers that do not arrive in time get 408, and the server goes on
serving. Raw sockets play the slow clients, against a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import API_TOKEN, Receiver, make_settings, rows, start_receiver, task_body

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
    url = urlsplit(r.callback_url(ext))
    reader, writer = await connect(opened, r.url)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body[:send])
    await writer.drain()
    return reader, writer


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


async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_body_timeout_s=0.3)
    async with start_receiver(settings) as r, connections(r.url) as opened:
        body = json.dumps(task_body("1", "processing", "kh-1")).encode()
        slow, _ = await open_request(opened, r, "kh-1", body, 20)
        status, _, answer = await answer_of(slow)
        after = await r.post_callback("kh-2", task_body("2", "processing", "kh-2"))
    assert (status, json.loads(answer)) == (
        408,
        {"ok": False, "error": "body not received within 0.3 s"},
    )
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
