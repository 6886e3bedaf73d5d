"""Suite 3, forged callbacks (issue 10): random and mutated callback URL tokens against a real
``kling-hooks serve``, each with a valid callback body for its task.

The server runs with ``KLING_HOOKS_SECRET=new``: the rotation that retired ``old`` has ended.
Each forgery starts from a real token (signed with ``new``, for another task or this one) or
from the retired secret's, and is one of: a bit flip, truncation, an extension, another
task's token, a case change, a character double-encoded or as overlong UTF-8, a non-ASCII
character, a trailing or double slash, the ``external_task_id`` changed or percent-encoded
oddly, a token signed with ``old``, or random text. Before and after, a genuine callback must
be accepted (so a refusal is the token's fault). Figures that must be 0: accepted forgeries,
5xx answers, callbacks stored by forgeries, the genuine callbacks refused.
"""

from __future__ import annotations

import asyncio
import base64
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.suites import Report
from bench.suites.hostile import dumps_raw, valid_task
from bench.suites.server import Serve, serve
from submitter.tokens import CALLBACK_PATH, CallbackTokens

NAME = "forged callbacks"
OLD, NEW = "old", "new"
CONCURRENCY = 16

Forgery = Callable[[random.Random, str, str, str], tuple[str, str]]


def _flip(rng: random.Random, token: str) -> str:
    """One bit of one character flipped (it stays ASCII; percent-encoded when it is not
    allowed in a path segment as it is)."""
    i = rng.randrange(len(token))
    flipped = chr(ord(token[i]) ^ (1 << rng.randrange(7)))
    return token[:i] + quote(flipped, safe="-_.~") + token[i + 1 :]


def _case(rng: random.Random, token: str) -> str:
    letters = [i for i, c in enumerate(token) if c.isalpha()]
    i = rng.choice(letters)
    return token[:i] + token[i].swapcase() + token[i + 1 :]


def _percent_one(rng: random.Random, token: str) -> str:
    """One character double-encoded (``%2541``: the server sees ``%41``, not ``A``).
    Encoding a character once is the same URL (RFC 3986 section 2.3), not a forgery."""
    i = rng.randrange(len(token))
    return token[:i] + f"%25{ord(token[i]):02X}" + token[i + 1 :]


def _overlong(rng: random.Random, token: str) -> str:
    """One character as an overlong UTF-8 sequence (``%C1%81`` for ``A``), as in ``%C0%AF``."""
    i = rng.randrange(len(token))
    code = ord(token[i])
    return token[:i] + f"%{0xC0 | code >> 6:02X}%{0x80 | code & 0x3F:02X}" + token[i + 1 :]


#: name -> (rng, ext, good token for ext, another task's token) -> (ext as sent, token as sent)
FORGERIES: dict[str, Forgery] = {
    "bit flip": lambda rng, ext, good, other: (quote(ext), _flip(rng, good)),
    "truncated": lambda rng, ext, good, other: (quote(ext), good[: rng.randrange(len(good))]),
    "extended": lambda rng, ext, good, other: (quote(ext), good + rng.choice("A0-_=")),
    "another task's token": lambda rng, ext, good, other: (quote(ext), other),
    "case change": lambda rng, ext, good, other: (quote(ext), _case(rng, good)),
    "percent-encoded": lambda rng, ext, good, other: (quote(ext), _percent_one(rng, good)),
    "overlong UTF-8": lambda rng, ext, good, other: (quote(ext), _overlong(rng, good)),
    "non-ASCII": lambda rng, ext, good, other: (quote(ext), quote(good[:-1] + "\u00e9")),
    "trailing slash": lambda rng, ext, good, other: (quote(ext), good + "/"),
    "double slash": lambda rng, ext, good, other: (quote(ext) + "/", good),
    "ext case change": lambda rng, ext, good, other: (quote(ext).upper(), good),
    "ext with a slash": lambda rng, ext, good, other: (quote(ext) + "/x", good),
    "ext double-encoded": lambda rng, ext, good, other: (quote(quote(ext, safe=""), safe=""), good),
    "retired secret": lambda rng, ext, good, other: (quote(ext), CallbackTokens([OLD]).sign(ext)),
    "random text": lambda rng, ext, good, other: (
        quote(ext),
        "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=rng.randint(1, 64))),
    ),
    "random bytes": lambda rng, ext, good, other: (
        quote(ext),
        quote(rng.randbytes(rng.randint(1, 48)), safe=""),
    ),
    "base64 of junk": lambda rng, ext, good, other: (
        quote(ext),
        base64.urlsafe_b64encode(rng.randbytes(len(good) * 3 // 4)).decode().rstrip("="),
    ),
}


def _forged(count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``(kind, path, body)`` for ``count`` forgeries, every kind in turn."""
    rng, tokens = random.Random(seed), CallbackTokens([NEW])
    kinds = list(FORGERIES)
    out = []
    for i in range(count):
        ext, other_ext = f"kh-forged-{i}", f"kh-forged-{i}-other"
        good, other = tokens.sign(ext), tokens.sign(other_ext)
        kind = kinds[i % len(kinds)]
        sent_ext, token = FORGERIES[kind](rng, ext, good, other)
        if token == good and sent_ext == quote(ext):  # a mutation that changed nothing
            token = _flip(rng, good)
        body = dumps_raw(valid_task(f"7{i:011d}", ext))
        out.append((kind, f"{CALLBACK_PATH}/{sent_ext}/{token}", body))
    return out


async def _genuine(server: Serve, http: httpx.AsyncClient, name: str) -> int:
    ext = f"kh-genuine-{name}"
    url = CallbackTokens([NEW]).callback_url(server.url, ext)
    return (
        await http.post(url, content=dumps_raw(valid_task(f"6{len(name):011d}", ext)))
    ).status_code


async def run(full: bool, workdir: Path) -> Report:
    """Send 10,000 forgeries (``full``) or 1,000, 16 at a time; see the module docstring."""
    count = 10_000 if full else 1_000
    forgeries = _forged(count, seed=3)
    accepted: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    server_errors: list[str] = []
    started = time.monotonic()
    headers = {"Content-Type": "application/json"}
    async with (
        serve(workdir / "forgery", NEW) as server,
        httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=CONCURRENCY)) as http,
    ):
        genuine_before = await _genuine(server, http, "before")
        stored_before = server.counts()["callbacks"]
        queue = iter(forgeries)

        async def worker() -> None:
            for kind, path, body in queue:
                answer = await http.post(server.url + path, content=body, headers=headers)
                statuses[str(answer.status_code)] += 1
                if answer.is_success:
                    accepted[kind] += 1
                if answer.status_code >= 500:
                    server_errors.append(f"{answer.status_code} {kind}: {path}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        stored_by_forgeries = server.counts()["callbacks"] - stored_before
        genuine_after = await _genuine(server, http, "after")
    kinds = Counter(kind for kind, _, _ in forgeries)
    report = Report(
        NAME,
        figures={
            "forged tokens sent": len(forgeries),
            "kinds": len(kinds),
            "answers by status": " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
            "accepted": sum(accepted.values()),
            "5xx answers": len(server_errors),
            "callbacks stored by forgeries": stored_by_forgeries,
            "genuine callbacks refused": (genuine_before != 200) + (genuine_after != 200),
            "seconds": round(time.monotonic() - started, 1),
        },
        must_be_zero=(
            "accepted",
            "5xx answers",
            "callbacks stored by forgeries",
            "genuine callbacks refused",
        ),
    )
    report.notes.append("per kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    report.notes += [f"accepted: {k} x{n}" for k, n in accepted.items()]
    report.notes += [f"5xx: {s}" for s in server_errors[:5]]
    return report
