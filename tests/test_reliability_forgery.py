"""Suite 3 of issue 10 at its reduced size: 1,000 forged and mutated callback tokens against
a real ``kling-hooks serve`` whose secret was rotated: none accepted, none a 5xx."""

from __future__ import annotations

from pathlib import Path

from bench.suites import forgery


async def test_forged_callback_suite_accepts_no_forgery(tmp_path: Path) -> None:
    report = await forgery.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.format()
