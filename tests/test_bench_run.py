"""``python bench/run.py --quick`` (issue 11's harness): every figure group at tiny sizes, one
round, as a subprocess. It must exit 0 (no lossy receiver, no failed check) and print a table
with every row measured, and the targets. It needs wrk and webhook (``.ci/run`` installs
them); its figures are not judged here (timing belongs in ``bench/``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.perf import table, targets
from bench.perf.sizes import QUICK

REPO = Path(__file__).resolve().parent.parent


def test_quick_harness_run_exits_0_with_every_row_of_the_table_measured(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    rows = table.rows(QUICK.connections, QUICK.download_bytes, QUICK.tasks, QUICK.burst)
    for row in rows:
        found = [x for x in lines if x.startswith(f"| {row.figure} | {row.conns} | ")]
        assert len(found) == 1, f"row {row.key!r} missing:\n{done.stdout}"
        value = found[0].split(" | ")[2]
        assert value != table.DASH, f"row {row.key!r} not measured: {found[0]}"
    assert "Targets (medians):" in lines
    assert sum(x.startswith(("- PASS", "- MISS")) for x in lines) == len(targets.TARGETS)
    rounds = json.loads(figures.read_text())["rounds"]
    assert len(rounds) == 1
    assert {row.key for row in rows} <= set(rounds[0])
