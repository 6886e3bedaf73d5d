"""Suite 5 of issue 10 at its reduced size: slow and broken clients (slowloris, half-sent
bodies, stalled and oversized header blocks, idle connections) against a real ``kling-hooks
serve`` do not stop normal callbacks, and each is closed by its documented deadline."""

from __future__ import annotations

from pathlib import Path

from bench.suites import slow_clients


async def test_slow_and_broken_clients_do_not_stop_normal_callbacks(tmp_path: Path) -> None:
    report = await slow_clients.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.failures
