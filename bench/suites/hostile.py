"""Suite 2, hostile input (issue 10): hypothesis-generated junk against the callback endpoint
and the status API of a real ``kling-hooks serve``, then schemathesis against its
``/openapi.json`` on every route.

(a) hypothesis, one request at a time over real HTTP: random bytes; random JSON; valid task
objects with one value anywhere (``task_result``, ``task_info``, each item) replaced by a wrong
type, a huge number (``1e400``, ``10**400``), a float where an integer belongs, ``NaN``, a NUL,
a lone surrogate or deep nesting; odd, missing and repeated ``Content-Type``\\ s, huge and
repeated headers; chunked bodies. Truncated bodies (a ``Content-Length`` longer than what is
sent, then the client half-closes) go over raw sockets. The status API gets random query
strings, ids and bodies on each route. Around every request the suite counts the database's
rows: a refused request (any status but 200) must change none. Every accepted callback's task
must read back (``GET /tasks/{id}``), and every page of ``GET /tasks`` at the end.

(b) schemathesis' CLI (``st run``) with the bearer token and every check (``--checks all``:
server errors, status codes, content types, response schemas and headers, negative data
rejected, positive data accepted, ``Allow`` on 405...), so the document cannot drift from the
answers.

Figures that must be 0: 5xx answers, server not alive at the end, rows changed by a refused
request, accepted but unreadable, errors in the server's log, schemathesis failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.suites import Report
from bench.suites.server import Serve, serve
from submitter.tokens import CallbackTokens

NAME = "hostile input"
SECRET = "hostile-suite-secret"
TOKENS = CallbackTokens([SECRET])

# Markers replaced in the JSON text after json.dumps: values json cannot write by itself.
_RAW = {
    '"@@1e400@@"': "1e400",
    '"@@-1e400@@"': "-1e400",
    '"@@10**400@@"': "1" + "0" * 400,
    '"@@deep@@"': "[" * 5000 + "]" * 5000,
    '"@@deeper@@"': "[" * 100_000 + "]" * 100_000,
    '"@@surrogate@@"': '"\\ud800"',
    '"@@nul@@"': '"a\\u0000b"',
}

_text = st.text(
    st.characters() | st.characters(categories=["Cs"]) | st.sampled_from('\x00\n\t"\\/'),
    max_size=12,
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and Infinity too: json.dumps writes them, JSON forbids them
    | _text
    | st.sampled_from(list(_RAW)).map(lambda marker: marker.strip('"'))
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
#: Values for fields that want a whole number: floats, huge, negative, strings, booleans.
_not_whole: st.SearchStrategy[object] = st.sampled_from(
    [0.5, 5.0, -1, 2**63, 10**20, "1", True, None, [], {}, "@@1e400@@", "@@10**400@@"]
)


def valid_task(task_id: str, ext: str) -> dict[str, Any]:
    """A valid ``succeed`` task with every documented result kind."""
    return {
        "task_id": task_id,
        "task_status": "succeed",
        "task_status_msg": "",
        "created_at": 1774805076166,
        "updated_at": 1774805090000,
        "final_unit_deduction": "0.2",
        "task_info": {"external_task_id": ext},
        "task_result": {
            "images": [{"index": 0, "url": "https://cdn.example/a.png"}],
            "videos": [{"id": "v", "url": "https://cdn.example/v.mp4", "duration": "5.1"}],
            "audios": [{"id": "a", "url": "https://cdn.example/a.mp3", "duration": "2"}],
        },
    }


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (the root excluded)."""
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


_PATHS = list(_paths(valid_task("1", "x")))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


def dumps_raw(doc: Any) -> bytes:
    text = json.dumps(doc)  # ensure_ascii: lone surrogates become \\ud800 escapes
    for marker, raw in _RAW.items():
        text = text.replace(marker, raw)
    return text.encode()


@st.composite
def _mutated_task(draw: st.DrawFn) -> Callable[[str, str], bytes]:
    """A task body with one value replaced (or one key added), as ``(task_id, ext) -> bytes``."""
    path = draw(st.sampled_from(_PATHS))
    leaf = path[-1]
    whole = leaf in ("created_at", "updated_at", "index")
    value = draw(_not_whole | _json) if whole else draw(_json)
    extra = draw(st.none() | st.tuples(_text, _json))

    def build(task_id: str, ext: str) -> bytes:
        doc = _replace(valid_task(task_id, ext), path, value)
        if extra is not None and isinstance(doc, dict):
            doc = {**doc, extra[0]: extra[1]}
        return dumps_raw(doc)

    return build


_CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "*/*",
        "garbage/;;;",
        "",
    ]
)
_HEADER_NAMES = st.sampled_from(["X-Junk", "Content-Type", "Accept", "X-Request-ID", "Cookie"])
_HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_extra_headers = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6) | st.builds(
    lambda n, size: [("X-Huge", "a" * size)] * n,
    st.integers(1, 4),
    st.integers(1000, 16000),
)


@dataclass
class Tally:
    """What the fuzzing saw."""

    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    changed_by_refused: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    no_answer: int = 0


class Fuzzer:
    """Sends one request at a time and checks the database around it (sync: hypothesis runs
    it in a thread)."""

    def __init__(self, server: Serve, tally: Tally) -> None:
        self.server = server
        self.tally = tally
        self.http = httpx.Client(timeout=30.0)
        self._next = 0

    def fresh_ids(self) -> tuple[str, str]:
        self._next += 1
        return f"9{self._next:011d}", f"kh-hostile-{self._next}"

    def send(
        self,
        method: str,
        path: str,
        content: bytes | Iterator[bytes] | None,
        headers: list[tuple[str, str]],
        what: str,
    ) -> httpx.Response | None:
        """Send, count, and check that a refusal left every table as it was."""
        before = self.server.counts()
        self.tally.cases += 1
        try:
            answer = self.http.request(
                method, self.server.url + path, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            self.tally.no_answer += 1
            self.tally.statuses[type(exc).__name__] += 1
            return None
        self.tally.statuses[str(answer.status_code)] += 1
        if answer.status_code >= 500:
            self.tally.server_errors.append(f"{answer.status_code} {what}: {answer.text[:120]}")
        if answer.status_code != 200 and self.server.counts() != before:
            self.tally.changed_by_refused.append(f"{answer.status_code} {what}")
        return answer

    def callback(
        self,
        body: bytes | Callable[[str, str], bytes],
        content_type: str | None,
        extra: list[tuple[str, str]],
        chunked: bool,
    ) -> None:
        """POST ``body`` (or what it builds from a fresh task_id and external_task_id) with a
        valid token; an accepted one must read back."""
        task_id, ext = self.fresh_ids()
        if callable(body):
            body = body(task_id, ext)
        headers = [("Content-Type", content_type)] if content_type is not None else []
        content: bytes | Iterator[bytes] = iter([body[:7], body[7:]]) if chunked else body
        what = f"callback {body[:80]!r}"
        answer = self.send("POST", TOKENS.callback_url("", ext), content, headers + extra, what)
        if answer is not None and answer.status_code == 200:
            read = self.http.get(f"{self.server.url}/tasks/{quote(ext)}", headers=self.auth)
            if read.status_code != 200:
                self.tally.unreadable.append(f"{read.status_code} {what}")

    @property
    def auth(self) -> dict[str, str]:
        return self.server.auth


_API_PATHS = [
    "/tasks",
    "/deliveries",
    "/plugins",
    "/metrics",
    "/tasks/{id}",
    "/tasks/{id}/reconcile",
    "/prune",
    "/deliveries/redeliver",
    "/deliveries/{id}/redeliver",
]
_QUERY_NAMES = st.sampled_from(
    ["limit", "cursor", "task_status", "route", "transition_before", "state", "plugin", "x"]
)
_QUERY_VALUES = st.sampled_from(["", "1", "0", "-1", "5_0", "1.0", "succeed", "dead", "1e400"]) | (
    _text
)
_ids = _text | st.sampled_from(["%00", "%FF", "..%2F..", "a/b", "9" * 40, "1" * 19])


def _quoted(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@dataclass(frozen=True)
class Sizes:
    callbacks: int
    api: int
    truncated: int
    schemathesis: int


REDUCED = Sizes(callbacks=1500, api=1000, truncated=30, schemathesis=30)
FULL = Sizes(callbacks=4000, api=2000, truncated=200, schemathesis=300)


def _fuzz(fuzzer: Fuzzer, sizes: Sizes, full: bool) -> None:
    """Run the hypothesis parts (blocking)."""

    def common(max_examples: int) -> settings:
        return settings(
            max_examples=max_examples,
            database=None,
            deadline=None,
            derandomize=not full,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )

    @common(sizes.callbacks)
    @given(
        body=st.one_of(
            st.binary(max_size=200),
            _json.map(dumps_raw),
            _mutated_task(),
        ),
        content_type=_CONTENT_TYPES,
        extra=_extra_headers,
        chunked=st.booleans(),
    )
    def callbacks(
        body: bytes | Callable[[str, str], bytes],
        content_type: str | None,
        extra: list[tuple[str, str]],
        chunked: bool,
    ) -> None:
        fuzzer.callback(body, content_type, extra, chunked)

    @common(sizes.api)
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
        path=st.sampled_from(_API_PATHS),
        id_=_ids,
        query=st.lists(st.tuples(_QUERY_NAMES, _QUERY_VALUES), max_size=4),
        body=st.none() | st.binary(max_size=60) | _json.map(dumps_raw) | _mutated_task(),
        content_type=_CONTENT_TYPES,
    )
    def api(
        method: str,
        path: str,
        id_: str,
        query: list[tuple[str, str]],
        body: bytes | Callable[[str, str], bytes] | None,
        content_type: str | None,
    ) -> None:
        if callable(body):
            body = body("1", "kh-seed")
        target = path.replace("{id}", _quoted(id_) or "x")
        if query:
            target += "?" + "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in query)
        headers = [*fuzzer.auth.items()]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        fuzzer.send(method, target, body, headers, f"{method} {target[:100]} {body!r:.60}")

    callbacks()
    api()


def _truncated(server: Serve, tally: Tally, count: int) -> None:
    """Bodies cut short: ``Content-Length`` says more than is sent, then the client
    half-closes (raw sockets; httpx cannot send this)."""
    host, port = server.url.removeprefix("http://").split(":")
    rng = random.Random(10)
    for i in range(count):
        ext = f"kh-truncated-{i}"
        body = dumps_raw(valid_task(f"8{i:011d}", ext))
        cut = rng.randrange(len(body))
        head = (
            f"POST {TOKENS.callback_url('', ext)} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        before = server.counts()
        tally.cases += 1
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head + body[:cut])
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "none"
        tally.statuses[status] += 1
        if status.startswith("5"):
            tally.server_errors.append(f"{status} truncated body at {cut}/{len(body)}")
        if server.counts() != before:
            tally.changed_by_refused.append(f"{status} truncated body at {cut}/{len(body)}")


def _pages_readable(server: Serve, http: httpx.Client) -> int:
    """Read every page of ``GET /tasks``; returns how many pages did not answer 200."""
    bad, cursor = 0, None
    while True:
        query = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        page = http.get(f"{server.url}/tasks", params=query, headers=server.auth)
        if page.status_code != 200:
            return bad + 1
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return bad


def _schemathesis(server: Serve, workdir: Path, max_examples: int, full: bool) -> dict[str, Any]:
    """Run ``st run`` against ``/openapi.json``; returns its JSON report."""
    report = workdir / "schemathesis.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {next(iter(server.auth.values())).split()[1]}",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        "--workers",
        "1",
        *(
            ["--generation-database", "none"]
            if full
            else ["--seed", "1", "--generation-deterministic"]
        ),
    ]
    out = workdir / "schemathesis.txt"
    with out.open("wb") as sink:
        subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, cwd=workdir, check=False)
    return json.loads(report.read_text()) if report.exists() else {"failures": [{"count": -1}]}


def _logged_errors(lines: list[str]) -> list[str]:
    """The server's log lines at level error or above."""
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("level") in ("error", "critical"):
                found.append(str(event.get("event"))[:200])
    return found


async def run(full: bool, workdir: Path) -> Report:
    """Run the suite (``full``: thousands of cases; else about 30 s); see the module
    docstring."""
    sizes = FULL if full else REDUCED
    tally = Tally()
    started = time.monotonic()
    async with serve(workdir / "hostile", SECRET) as server:
        fuzzer = Fuzzer(server, tally)
        try:
            await asyncio.to_thread(_fuzz, fuzzer, sizes, full)
            await asyncio.to_thread(_truncated, server, tally, sizes.truncated)
            unreadable_pages = await asyncio.to_thread(_pages_readable, server, fuzzer.http)
            fuzz_s = time.monotonic() - started
            st_report = await asyncio.to_thread(
                _schemathesis, server, workdir, sizes.schemathesis, full
            )
            alive = server.alive() and (await _healthz(server))
        finally:
            fuzzer.http.close()
    errors = _logged_errors(server.lines)
    st_failures = sum(f.get("count", 1) for f in st_report.get("failures", []))
    st_failures += len(st_report.get("errors", []))
    report = Report(
        NAME,
        figures={
            "hypothesis cases": tally.cases,
            "answers by status": " ".join(f"{k}:{v}" for k, v in sorted(tally.statuses.items())),
            "5xx answers": len(tally.server_errors),
            "server not alive at the end": 0 if alive else 1,
            "rows changed by refused inputs": len(tally.changed_by_refused),
            "accepted but unreadable": len(tally.unreadable) + unreadable_pages,
            "errors in the server log": len(errors),
            "schemathesis cases": st_report.get("test_cases", {}).get("generated", 0),
            "schemathesis failures": st_failures,
            "fuzzing seconds": round(fuzz_s, 1),
            "total seconds": round(time.monotonic() - started, 1),
        },
        must_be_zero=(
            "5xx answers",
            "server not alive at the end",
            "rows changed by refused inputs",
            "accepted but unreadable",
            "errors in the server log",
            "schemathesis failures",
        ),
    )
    report.notes += [f"5xx: {s}" for s in tally.server_errors[:5]]
    report.notes += [f"changed: {s}" for s in tally.changed_by_refused[:5]]
    report.notes += [f"unreadable: {s}" for s in tally.unreadable[:5]]
    report.notes += [f"logged: {s}" for s in errors[:5]]
    report.notes += [
        f"schemathesis {f.get('code')} {f.get('title')}: {', '.join(f.get('operations', []))}"
        for f in st_report.get("failures", [])
    ]
    if st_failures:
        report.notes.append(f"schemathesis output: {workdir / 'schemathesis.txt'}")
    return report


async def _healthz(server: Serve) -> bool:
    async with httpx.AsyncClient(timeout=5.0) as http:
        with contextlib.suppress(httpx.HTTPError):
            return (await http.get(f"{server.url}/healthz")).status_code == 200
    return False
