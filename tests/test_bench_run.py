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


def test_quick_harness_run_on_postgres_measures_every_postgres_row_without_loss(
    tmp_path: Path, pg_server: str
) -> None:
    """``--quick --postgres`` on the test server (``--postgres-url``: CI's, or the worker's
    throwaway cluster): ingest on 1 and 2 replicas, the backlog drained by 1 and 2, the
    status API; exit 0 means no lossy receiver, every delivery done and started once."""
    figures = tmp_path / "figures.json"
    command = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--postgres"]
    command += ["--postgres-url", pg_server, "--only", "ingest,fanout,status"]
    done = subprocess.run(
        [*command, "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    for row in table.pg_rows(QUICK.tasks, QUICK.burst):
        found = [x for x in lines if x.startswith(f"| {row.figure} | {row.conns} | ")]
        assert len(found) == 1, f"row {row.key!r} missing:\n{done.stdout}"
        cells = found[0].split(" | ")
        assert cells[2] != table.DASH, f"row {row.key!r} not measured: {found[0]}"
        assert cells[-1].strip(" |") not in ("", table.DASH), f"no ratio: {found[0]}"
    rounds = json.loads(figures.read_text())["rounds"]
    assert rounds[0]["pg.backlog1.r2"]["deliveries"] == QUICK.burst
