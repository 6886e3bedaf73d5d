"""The retry policy (pure): what follows an attempt, and the ``Retry-After`` rules."""

from __future__ import annotations

import random

import pytest

from receiver.models import DeliveryState
from receiver.plugins import MAX_RETRY_AFTER_S, PluginSettings, RetryAfter, retry_after_s
from receiver.retry import outcome_of


def test_retry_waits_follow_the_schedule_within_twenty_percent_jitter() -> None:
    schedule = [5, 300, 1800]
    rng = random.Random(7)
    for attempt, base_s in enumerate(schedule, start=1):
        waits = [
            outcome_of(
                RuntimeError("x"), attempts=attempt, schedule_s=schedule, now_ms=0, rng=rng
            ).next_attempt_at
            for _ in range(500)
        ]
        assert all(w is not None and 0.8 * base_s * 1000 <= w <= 1.2 * base_s * 1000 for w in waits)
        assert len(set(waits)) > 100  # jittered, not one fixed value
    last = outcome_of(RuntimeError("x"), attempts=4, schedule_s=schedule, now_ms=0, rng=rng)
    assert (last.state, last.next_attempt_at) == (DeliveryState.DEAD, None)


def test_default_schedule_gives_eight_attempts_over_about_28_hours() -> None:
    schedule = PluginSettings().retry_schedule_s
    assert schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert sum(schedule) / 3600 == pytest.approx(27.6, abs=0.1)


def test_retry_after_is_clamped_to_a_day() -> None:
    assert RetryAfter(float("inf")).seconds == MAX_RETRY_AFTER_S == 86_400
    assert RetryAfter(1e20).seconds == 86_400
    assert RetryAfter(-5).seconds == 0
    assert retry_after_s("9" * 400) == float("inf")  # parsed as given; RetryAfter clamps it
