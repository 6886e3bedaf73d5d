"""Crash under load (issue 10, suite 1) at its reduced size: 1,500 callbacks at concurrency 32
with three plugins against local sinks, ``kling-hooks serve`` SIGKILLed three times at random
moments and restarted on the same database; nothing acknowledged is lost and every delivery
ends ``done`` (``bench/suites/crash.py``)."""

from __future__ import annotations

from pathlib import Path

from bench.suites import crash


async def test_crash_suite_reduced_size_loses_nothing_and_finishes_every_delivery(
    tmp_path: Path,
) -> None:
    report = await crash.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.format()
