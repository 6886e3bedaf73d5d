"""Suite 5, slow and broken clients (issue 10): while a real ``kling-hooks serve`` is attacked
by slow and broken connections, normal callbacks are still served, every attack connection is
closed by its documented deadline, and header blocks over the size limit are refused.

The attack, all at once, each on its own connection to 127.0.0.1:

- idle: connects and sends nothing (closed by ``KLING_HOOKS_HEADER_TIMEOUT_S``);
- slowloris: a request line and headers a byte at a time, never ending (the header deadline
  runs from the connection's start, so the drip does not extend it);
- stalled headers: a request line and two headers, then nothing (the header deadline);
- half-sent body: whole headers, half of the ``Content-Length`` (``KLING_HOOKS_BODY_TIMEOUT_S``);
- oversized header block: headers of ``oversized_bytes`` sent as fast as they go, never ending
  (431 past ``KLING_HOOKS_MAX_HEADER_BYTES``, well before the header deadline).

Normal callbacks (each a distinct task, a signed callback URL, a new connection each as Kling
sends them, ``concurrency`` at a time) are sent before the attack (the baseline) and all
through it. Printed: the p99 of both and their ratio, the normal callbacks that failed, the
acknowledged callbacks missing from the database, the attack connections still open past their
deadline (plus :data:`GRACE_S`), the oversized blocks not refused, and the server's RSS before,
during (the peak of samples every 0.25 s) and after the attack.

Run alone from the repository root: ``python -m bench.suites.slow_clients`` (full size, about
40 s; ``--reduced``: the test suite's size).

The server runs with its soft ``RLIMIT_NOFILE`` raised to its hard limit, as the systemd unit's
``LimitNOFILE=65536`` does. Client and server share the machine: the client's own event loop
(the attack's writes) is in every latency figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import httpx

from bench.processes import free_port, memory_kib, server_command, stop_server, wait_ready
from bench.suites import Report
from bench.workload import API_TOKEN, SECRET
from submitter.tokens import CallbackTokens

NAME = "slow and broken clients"
#: Past its deadline, how long an attack connection may take to be seen closed, seconds.
GRACE_S = 2.0
#: The largest header block the server accepts (``KLING_HOOKS_MAX_HEADER_BYTES``'s default).
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Size:
    """How big one run is: attack connections by kind, the deadlines the server is given
    (seconds), and the normal callbacks."""

    idle: int
    slowloris: int
    stalled: int
    half_body: int
    oversized: int
    oversized_bytes: int
    drip_s: float  # slowloris: seconds between bytes
    header_timeout_s: float
    body_timeout_s: float
    baseline: int  # normal callbacks without the attack
    concurrency: int


REDUCED = Size(
    idle=300,
    slowloris=60,
    stalled=10,
    half_body=40,
    oversized=5,
    oversized_bytes=2 * 1024 * 1024,
    drip_s=0.25,
    header_timeout_s=3.0,
    body_timeout_s=3.0,
    baseline=300,
    concurrency=4,
)
FULL = Size(  # the finding's sizes, 2,000 idle; the deadlines are the defaults
    idle=2000,
    slowloris=500,
    stalled=20,
    half_body=200,
    oversized=20,
    oversized_bytes=20 * 1024 * 1024,
    drip_s=1.0,
    header_timeout_s=10.0,
    body_timeout_s=30.0,
    baseline=2000,
    concurrency=8,
)


@dataclass
class Attacker:
    """One attack connection's outcome: whether it connected, whether the server closed it
    within its deadline (+ :data:`GRACE_S`), and the status it was answered with (0: none)."""

    kind: str
    connected: bool = False
    closed_in_time: bool = False
    status: int = 0


class Target:
    """The server under attack: its URL, and a signed callback for task number ``i``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self._tokens = CallbackTokens([SECRET])

    def callback(self, i: int) -> tuple[str, bytes]:
        """The callback URL and JSON body of the ``i``-th distinct task (a ``succeed``)."""
        ext = f"slow-{i}"
        body = (
            f'{{"task_id":"t-{i}","task_status":"succeed","task_status_msg":"",'
            f'"created_at":1774805076166,"updated_at":1774805090000,'
            f'"task_info":{{"external_task_id":"{ext}"}},'
            f'"task_result":{{"images":[{{"index":0,"url":"https://cdn.example/{i}.png"}}]}}}}'
        )
        return self._tokens.callback_url(self.url, ext), body.encode()


async def run(full: bool, workdir: Path) -> Report:
    """Run the suite at full size (:data:`FULL`) or reduced (:data:`REDUCED`, about 20 s),
    with the server's files under ``workdir``; returns its report."""
    size = FULL if full else REDUCED
    _raise_fd_limit()
    port = free_port()
    proc = _start(size, workdir, port)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, workdir / "server.log")
        report, acknowledged = await _measure(size, Target(f"http://127.0.0.1:{port}"), proc.pid)
    finally:
        stop_server(proc)
    stored = _stored(workdir / "kling-hooks.db")
    report.figures["acknowledged callbacks not stored"] = acknowledged - stored
    warnings = (workdir / "server.log").read_text().count('"level": "warning"')
    report.notes.append(f"server log: {warnings} lines at warning")
    return report


async def _measure(size: Size, target: Target, pid: int) -> tuple[Report, int]:
    """Baseline, then attack with normal callbacks alongside; the report without the database
    check, and how many callbacks were acknowledged (200)."""
    numbers = count(1)
    async with httpx.AsyncClient(
        timeout=60.0, limits=httpx.Limits(max_keepalive_connections=0)
    ) as http:
        baseline = await _send_normal(http, target, numbers, size.concurrency, size.baseline)
        rss_before = _rss_mib(pid)
        attack_done = asyncio.Event()
        peak = asyncio.create_task(_peak_rss(pid, attack_done))
        normal = asyncio.create_task(
            _send_normal(http, target, numbers, size.concurrency, until=attack_done)
        )
        attackers = await _attack(size, target)
        attack_done.set()
        under_attack, rss_peak = await normal, await peak
        await asyncio.sleep(1.0)
        rss_after = _rss_mib(pid)
    failed = baseline.failed + under_attack.failed
    kinds = Counter(a.kind for a in attackers)
    oversized = [a for a in attackers if a.kind == "oversized"]
    report = Report(
        NAME,
        must_be_zero=(
            "normal callbacks failed",
            "acknowledged callbacks not stored",
            "attack connections open past their deadline",
            "oversized header blocks not refused",
        ),
    )
    report.figures.update(
        {
            "normal callbacks, no attack": len(baseline.latencies_ms),
            "normal callbacks, under attack": len(under_attack.latencies_ms),
            "p99 without attack, ms": _p99(baseline.latencies_ms),
            "p99 under attack, ms": _p99(under_attack.latencies_ms),
            "p99 ratio, under attack / without": _p99(under_attack.latencies_ms)
            / max(_p99(baseline.latencies_ms), 0.001),
            "normal callbacks failed": failed,
            "attack connections": len(attackers),
            "attack connections that could not connect": sum(not a.connected for a in attackers),
            "attack connections open past their deadline": sum(
                a.connected and not a.closed_in_time for a in attackers
            ),
            "oversized header blocks not refused": sum(a.status != 431 for a in oversized),
            "server RSS before attack, MiB": rss_before,
            "server RSS during attack (peak), MiB": rss_peak,
            "server RSS after attack, MiB": rss_after,
        }
    )
    report.notes += [
        "attack: " + ", ".join(f"{n} {k}" for k, n in kinds.items()),
        f"deadlines: headers {size.header_timeout_s:g} s, body {size.body_timeout_s:g} s,"
        f" + {GRACE_S:g} s grace; oversized blocks of {size.oversized_bytes:,} bytes;"
        f" normal callbacks {size.concurrency} at a time, a new connection each",
        f"failed answers: {dict(baseline.errors + under_attack.errors) or 'none'}",
    ]
    return report, len(baseline.latencies_ms) + len(under_attack.latencies_ms) - failed


@dataclass
class Sent:
    """Normal callbacks sent: each one's latency (ms), the failures, and what they were."""

    latencies_ms: list[float]
    failed: int
    errors: Counter[str]


async def _send_normal(
    http: httpx.AsyncClient,
    target: Target,
    numbers: Iterator[int],
    concurrency: int,
    total: int | None = None,
    until: asyncio.Event | None = None,
) -> Sent:
    """Send callbacks ``concurrency`` at a time: ``total`` of them, or until ``until`` is set;
    task numbers come from ``numbers``."""
    sent = Sent([], 0, Counter())
    remaining = [total if total is not None else -1]

    async def sender() -> None:
        while remaining[0] != 0 and not (until is not None and until.is_set()):
            remaining[0] -= 1
            url, body = target.callback(next(numbers))
            started = time.perf_counter()
            try:
                answer = await http.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                status = str(answer.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            sent.latencies_ms.append((time.perf_counter() - started) * 1000)
            if status != "200":
                sent.failed += 1
                sent.errors[status] += 1

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return sent


async def _attack(size: Size, target: Target) -> list[Attacker]:
    """Open every attack connection (in batches, so that the listen queue keeps up) and wait
    until each is closed by the server or has outlived its deadline."""
    header_deadline = size.header_timeout_s + GRACE_S
    plans: list[tuple[str, float, Callable[[asyncio.StreamWriter], Awaitable[None]]]] = []
    plans += [("idle", header_deadline, _send_nothing)] * size.idle
    plans += [("slowloris", header_deadline, _drip(size.drip_s))] * size.slowloris
    plans += [("stalled", header_deadline, _stall)] * size.stalled
    half = _half_body(target)
    plans += [("half body", size.body_timeout_s + GRACE_S, half)] * size.half_body
    oversized = _oversized(size.oversized_bytes)
    plans += [("oversized", header_deadline, oversized)] * size.oversized
    tasks: list[asyncio.Task[Attacker]] = []
    for start in range(0, len(plans), 200):
        batch = [
            asyncio.create_task(_attacker(target, kind, deadline_s, behave))
            for kind, deadline_s, behave in plans[start : start + 200]
        ]
        tasks += batch
        await asyncio.sleep(0.05)
    return list(await asyncio.gather(*tasks))


async def _attacker(
    target: Target,
    kind: str,
    deadline_s: float,
    behave: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> Attacker:
    """Connect, ``behave``, and read until the server closes the connection or ``deadline_s``
    (from the connect) passes; the status line's code is kept."""
    outcome = Attacker(kind)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", target.port), 10
        )
    except (OSError, TimeoutError):
        return outcome
    outcome.connected = True
    sending = asyncio.create_task(_quietly(behave(writer)))
    try:
        async with asyncio.timeout(deadline_s):
            answer = await _read_all(reader)
        outcome.closed_in_time = True
        if answer.startswith(b"HTTP/1.1 "):
            outcome.status = int(answer[9:12])
    except TimeoutError:
        pass
    finally:
        sending.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return outcome


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the end of the stream (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def _quietly(sending: Awaitable[None]) -> None:
    with contextlib.suppress(OSError):
        await sending


async def _send_nothing(writer: asyncio.StreamWriter) -> None:
    return None


def _drip(drip_s: float) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def drip(writer: asyncio.StreamWriter) -> None:
        head = b"POST /callbacks/slow-0/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
        for i in range(10**6):
            writer.write(head[i : i + 1] if i < len(head) else b"a")
            await writer.drain()
            await asyncio.sleep(drip_s)

    return drip


async def _stall(writer: asyncio.StreamWriter) -> None:
    writer.write(b"POST /callbacks/slow-0/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: s\r\n")
    await writer.drain()


def _half_body(target: Target) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    url, body = target.callback(0)
    path = url.removeprefix(target.url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def half(writer: asyncio.StreamWriter) -> None:
        writer.write(head + body[: len(body) // 2])
        await writer.drain()

    return half


def _oversized(total_bytes: int) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    chunk = b"X-Padding: " + b"a" * 65500 + b"\r\n"

    async def oversized(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(total_bytes // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    return oversized


async def _peak_rss(pid: int, done: asyncio.Event) -> float:
    peak = 0.0
    while not done.is_set():
        peak = max(peak, _rss_mib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.25)
    return peak


def _rss_mib(pid: int) -> float:
    return memory_kib(pid).get("VmRSS", 0) / 1024


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def _raise_fd_limit() -> None:
    """This process's soft ``RLIMIT_NOFILE`` up to its hard limit (the attack's connections);
    the server inherits it (as ``LimitNOFILE=`` would set it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start(size: Size, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")},
        "KLING_HOOKS_SECRET": SECRET,
        "KLING_HOOKS_API_TOKEN": API_TOKEN,
        "KLING_HOOKS_LOG_LEVEL": "warning",
        "KLING_HOOKS_LOG_FORMAT": "json",
        "KLING_HOOKS_HEADER_TIMEOUT_S": str(size.header_timeout_s),
        "KLING_HOOKS_BODY_TIMEOUT_S": str(size.body_timeout_s),
        "KLING_HOOKS_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    }
    command = [*server_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--db", str(workdir / "kling-hooks.db")]
    with (workdir / "server.log").open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stored(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM callbacks").fetchone()[0])


def main() -> int:
    """``python -m bench.suites.slow_clients [--reduced]``: one run, its report printed; exit
    status 1 when it fails."""
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        report = asyncio.run(run(full="--reduced" not in sys.argv, workdir=Path(workdir)))
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
