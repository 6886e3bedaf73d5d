"""Suite 2 of issue 10 at its reduced size: hypothesis and schemathesis against a real
``kling-hooks serve`` find no 5xx, no refused input that changed the database, no accepted
input that cannot be read back, and no drift between /openapi.json and the answers."""

from __future__ import annotations

from pathlib import Path

from bench.suites import hostile


async def test_hostile_input_suite_finds_no_5xx_no_change_and_no_schema_drift(
    tmp_path: Path,
) -> None:
    report = await hostile.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.format()
