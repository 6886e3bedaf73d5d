"""The misbehaviour the simulator injects, and the per-task draw of it.

:class:`Faults` holds the rates. :func:`draw_plan` makes every random choice about one task
when the task is created: whether it fails and why, the delay before each step, the id of its
video, and what happens to each of its three callbacks. Drawing everything at create time from
the simulator's one ``random.Random`` keeps runs reproducible: one seed and one sequence of
requests always give the same tasks, whatever the timing of the callbacks.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

FAILURE_REASONS = (
    "content safety check failed",
    "image recognition failed, please check the input image",
    "internal error, please retry later",
)

_RATES = (
    "failure_rate",
    "duplicate_rate",
    "reorder_rate",
    "envelope_rate",
    "old_schema_rate",
    "drop_nonterminal_rate",
)


@dataclass(frozen=True)
class Faults:
    """Misbehaviour to inject; the defaults inject none. Rates are shares in [0, 1].

    Attributes:
        failure_rate: Share of tasks that end ``failed``; ``task_status_msg`` gives a reason,
            ``task_info`` and ``task_result`` are ``{}``, ``final_unit_deduction`` is ``"0"``.
        duplicate_rate: Share of callbacks sent twice in a row.
        reorder_rate: Share of tasks whose callbacks are all sent after the task ends,
            newest first (terminal, processing, submitted).
        envelope_rate: Share of callbacks wrapped as ``{"code": 0, "message": "SUCCEED",
            "request_id": ..., "data": <task>}``.
        old_schema_rate: Share of callbacks without ``task_info`` and ``final_unit_deduction``.
        drop_nonterminal_rate: Share of ``submitted``/``processing`` callbacks never sent.
        lose_create_answers: The first N creates make their task but answer HTTP 500, code 5000.
        busy_creates: The first N creates are refused with HTTP 429, code 1303; nothing is made.
            Counted before ``lose_create_answers``.

    Raises:
        ValueError: a rate is outside [0, 1] or a count is negative.
    """

    failure_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    envelope_rate: float = 0.0
    old_schema_rate: float = 0.0
    drop_nonterminal_rate: float = 0.0
    lose_create_answers: int = 0
    busy_creates: int = 0

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is outside [0, 1]")
        for name in ("lose_create_answers", "busy_creates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")


@dataclass(frozen=True)
class CallbackPlan:
    """What happens to one status's callback.

    Attributes:
        send: False when the callback is dropped (never for the terminal one).
        copies: 1, or 2 when it is duplicated.
        envelope_request_id: The ``request_id`` of the envelope it is wrapped in, or None
            for Kling's bare task object.
        old_schema: True to leave out ``task_info`` and ``final_unit_deduction``.
    """

    send: bool
    copies: int
    envelope_request_id: str | None
    old_schema: bool


@dataclass(frozen=True)
class Plan:
    """Every random choice about one task, drawn when it is created.

    Attributes:
        fails: True when the task ends ``failed``.
        reorder: True when all callbacks are held until the end and sent newest first.
        reason: The ``task_status_msg`` of a failed task.
        delays_s: Seconds before each step (submitted, processing, terminal).
        video_id: ``task_result.videos[0].id`` of a succeeded video task.
        callbacks: The plan of each step's callback, in step order.
    """

    fails: bool
    reorder: bool
    reason: str
    delays_s: tuple[float, float, float]
    video_id: str
    callbacks: tuple[CallbackPlan, CallbackPlan, CallbackPlan]


def new_request_id(rng: random.Random) -> str:
    """A UUID4 string drawn from ``rng``: the ``request_id`` of an envelope."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def draw_plan(rng: random.Random, faults: Faults, delay_s: tuple[float, float]) -> Plan:
    """Draw one task's :class:`Plan`.

    Args:
        rng: The simulator's one random source; the order of draws is part of the seed's
            meaning, so it never changes.
        faults: The rates to draw against.
        delay_s: (min, max) seconds of each step's delay, drawn uniformly.
    """
    fails = rng.random() < faults.failure_rate
    reason = rng.choice(FAILURE_REASONS)
    delays = (rng.uniform(*delay_s), rng.uniform(*delay_s), rng.uniform(*delay_s))
    video_id = str(rng.randrange(10**17, 10**19))
    reorder = rng.random() < faults.reorder_rate
    callbacks = (
        _draw_callback(rng, faults, terminal=False),
        _draw_callback(rng, faults, terminal=False),
        _draw_callback(rng, faults, terminal=True),
    )
    return Plan(fails, reorder, reason, delays, video_id, callbacks)


def _draw_callback(rng: random.Random, faults: Faults, *, terminal: bool) -> CallbackPlan:
    dropped = rng.random() < faults.drop_nonterminal_rate
    copies = 2 if rng.random() < faults.duplicate_rate else 1
    envelope = rng.random() < faults.envelope_rate
    request_id = new_request_id(rng)
    old_schema = rng.random() < faults.old_schema_rate
    return CallbackPlan(
        terminal or not dropped, copies, request_id if envelope else None, old_schema
    )
