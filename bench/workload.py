"""The callbacks the benchmarks send: valid, distinct ``succeed`` callbacks of about 1 KB.

Every callback is its own task (its own ``task_id`` and ``external_task_id``) with a valid
callback URL token signed with :data:`SECRET`, and a body as Kling sends it: a ``succeed``
task object with five result images. ``bench/callbacks.py``, ``bench/compare.py``,
``bench/run.py`` and the reliability suites build their bodies here.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from submitter.tokens import CallbackTokens

#: The callback secret every benchmark receiver runs with (``KLING_HOOKS_SECRET``).
SECRET = "bench-secret-not-for-production-0123456789abcdef"
#: The status API token every benchmark receiver runs with (``KLING_HOOKS_API_TOKEN``).
API_TOKEN = "bench-api-token"
#: Where result images live unless a benchmark serves them itself (never fetched then).
CDN_IMAGE_BASE = "https://cdn.klingai.com/bs2/upload-kling-api/7283581940/image/"
#: Result images per callback body.
IMAGES_PER_BODY = 5

#: One callback: ``(path, body)``; the path is ``/callbacks/{external_task_id}/{token}``.
Callback = tuple[str, bytes]


@dataclass(frozen=True)
class Workload:
    """Pre-built callbacks: ``(path, body)`` pairs in sending order."""

    warmup: list[Callback]
    timed: list[Callback]
    distinct_timed: int


def image_urls(task_id: str, image_base: str = CDN_IMAGE_BASE) -> list[str]:
    """The :data:`IMAGES_PER_BODY` result image URLs of ``task_id``'s body, under
    ``image_base`` (which ends with ``/``)."""
    return [
        f"{image_base}{task_id}/3f2b9c1e-8d47-4a6b-b0c5-{i:012d}.png"
        for i in range(IMAGES_PER_BODY)
    ]


def succeed_body(
    task_id: str, external_task_id: str, now_ms: int, image_base: str = CDN_IMAGE_BASE
) -> bytes:
    """A ``succeed`` callback body of about 1 KB: five images, as Kling sends them.

    Args:
        task_id: Kling's task id.
        external_task_id: Ours, bound to the callback URL.
        now_ms: ``updated_at``, Unix ms (``created_at`` is 42 s earlier).
        image_base: Where the result images are (:func:`image_urls`).
    """
    images = [{"index": i, "url": url} for i, url in enumerate(image_urls(task_id, image_base))]
    doc = {
        "task_id": task_id,
        "task_status": "succeed",
        "task_status_msg": "",
        "created_at": now_ms - 42_000,
        "updated_at": now_ms,
        "final_unit_deduction": "0.8",
        "task_info": {"external_task_id": external_task_id},
        "task_result": {"images": images},
        "watermark_info": {"enabled": False},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def distinct_callbacks(
    count: int, *, prefix: str, start: int = 0, image_base: str = CDN_IMAGE_BASE
) -> list[Callback]:
    """``count`` distinct valid callbacks, numbered from ``start``.

    Args:
        prefix: Makes the ids unique to one use; letters and digits (the
            external_task_ids are ``{prefix}-{i:07d}``, the task_ids ``{prefix}{i:09d}``).
        image_base: Where their result images are (:func:`image_urls`).
    """
    tokens = CallbackTokens([SECRET])
    now_ms = time.time_ns() // 1_000_000
    found = []
    for i in range(start, start + count):
        ext = f"{prefix}-{i:07d}"
        body = succeed_body(f"{prefix}{i:09d}", ext, now_ms, image_base)
        found.append((tokens.callback_url("", ext), body))
    return found


def build_workload(requests: int, warmup: int, duplicates: float, seed: int) -> Workload:
    """Distinct callbacks (warm-up first), plus ``duplicates * requests`` re-sends, each
    placed at a random later position than its original in the timed stream."""
    run = f"bench{int(time.time()) % 10**8:08d}"
    all_items = distinct_callbacks(warmup + requests, prefix=run)
    timed = all_items[warmup:]
    rng = random.Random(seed)
    for _ in range(round(duplicates * requests)):
        original = rng.randrange(len(timed))
        timed.insert(rng.randint(original + 1, len(timed)), timed[original])
    return Workload(all_items[:warmup], timed, requests)
