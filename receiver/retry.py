"""The retry policy: what follows a plugin's attempt (pure; no I/O).

Rules (the plugin interface, ``receiver.plugins``):

* the handler returned: ``done``;
* it raised :class:`~receiver.plugins.PermanentError`, or this was the last attempt: ``dead``;
* it raised :class:`~receiver.plugins.RetryAfter`: ``failed``, due after the given delay;
* anything else (a timeout too): ``failed``, due after the schedule's next wait, with
  +/-:data:`JITTER` (standard practice for webhook senders: a failing target is not hit by
  every delivery at the same moment).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from receiver.models import DeliveryState, SavedFile
from receiver.plugins import PermanentError, RetryAfter
from receiver.store.deliveries import Outcome

#: Each scheduled wait is multiplied by a uniform factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: ``last_error`` is cut to this many characters.
MAX_ERROR_CHARS = 1000


def outcome_of(
    error: BaseException | None,
    *,
    attempts: int,
    schedule_s: Sequence[float],
    now_ms: int,
    rng: random.Random,
    files: Iterable[SavedFile] = (),
) -> Outcome:
    """Decide what follows an attempt.

    Args:
        error: What the handler raised (a ``TimeoutError`` for a timeout), or None.
        attempts: Attempts made so far, this one included (1 after the first).
        schedule_s: The waits before attempts 2, 3, ...; ``len(schedule_s) + 1`` attempts
            in all.
        now_ms: The time the attempt ended, Unix ms.
        rng: Source of the jitter.
        files: Files the attempt saved (kept whatever the outcome).

    Returns:
        ``done``; ``failed`` with the next attempt's time (Unix ms); or ``dead``.
    """
    kept = tuple(files)
    if error is None:
        return Outcome(DeliveryState.DONE, files=kept)
    message = describe_error(error)
    if isinstance(error, PermanentError) or attempts > len(schedule_s):
        return Outcome(DeliveryState.DEAD, last_error=message, files=kept)
    if isinstance(error, RetryAfter):
        wait_s = error.seconds
    else:
        wait_s = schedule_s[attempts - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    return Outcome(DeliveryState.FAILED, now_ms + round(wait_s * 1000), message, kept)


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, at most :data:`MAX_ERROR_CHARS` (kept as ``last_error``)."""
    if isinstance(error, TimeoutError):
        return "timeout: the handler did not finish within timeout_s"
    detail = str(error)
    text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return text[:MAX_ERROR_CHARS]


def check_files(files: tuple[object, ...]) -> None:
    """Check what a plugin's ``handle()`` returned (or its ``PluginError`` carried).

    Raises:
        TypeError: an item is not a :class:`SavedFile` that the store can keep.
    """
    for f in files:
        if not (
            isinstance(f, SavedFile)
            and isinstance(f.url, str)
            and isinstance(f.path, str)
            and isinstance(f.sha256, str)
            and isinstance(f.bytes, int)
            and 0 <= f.bytes < 2**63
        ):
            raise TypeError(
                "handle() must return None or SavedFile(url: str, path: str, bytes: int, "
                f"sha256: str) items, got {f!r}"[:300]
            )
