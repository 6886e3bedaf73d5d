"""The issue's targets: each judged on the median over rounds of one figure of the table
(a ratio to the ceiling, a latency, a rate, a size), printed as PASS or MISS with the measured
value (``n/a`` when the figure was not measured)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.perf.table import TIMES, Rounds, Row, Spread, number, ratios, values


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: the median of ``field`` of row ``key`` (``ratio``: its
    ratio to the ceiling) compared with ``limit`` (``>=`` or ``<``)."""

    text: str
    key: str
    field: str
    op: str
    limit: float
    unit: str = ""

    def measured(self, table_rows: Sequence[Row], rounds: Rounds) -> float:
        """The median the target is judged on (NaN when not measured)."""
        if self.field == "ratio":
            row = next(r for r in table_rows if r.key == self.key)
            return Spread.of(ratios(rounds, row)).median
        return Spread.of(values(rounds, self.key, self.field)).median

    def verdict(self, measured: float) -> str:
        """``PASS``, ``MISS``, or ``n/a`` when not measured."""
        if math.isnan(measured):
            return "n/a"
        ok = measured >= self.limit if self.op == ">=" else measured < self.limit
        return "PASS" if ok else "MISS"


#: MiB in 150 MB (10^6 bytes): the connections target is in MB.
MB150_IN_MIB = 150e6 / 1024**2
#: What "flat RSS during a 1 GB download" is taken to mean: RSS grows by less than this, MiB.
FLAT_MIB = 32.0

TARGETS = (
    Target(
        f"ingest, no plugins, 64 conns: ≥ 0.55{TIMES} ceiling",
        "ingest.none.c64",
        "ratio",
        ">=",
        0.55,
        TIMES,
    ),
    Target("ingest, no plugins, 64 conns: p99 < 20 ms", "ingest.none.c64", "p99", "<", 20, "ms"),
    Target(
        f"ingest, 3 plugins, 64 conns: ≥ 0.45{TIMES} ceiling",
        "ingest.plugins.c64",
        "ratio",
        ">=",
        0.45,
        TIMES,
    ),
    Target(f"duplicate storm: ≥ 0.75{TIMES} ceiling", "duplicates.c64", "ratio", ">=", 0.75, TIMES),
    Target(
        "fan-out to a no-op plugin (backlog): ≥ 5,000 events/s",
        "fanout.backlog1",
        "value",
        ">=",
        5000,
        "events/s",
    ),
    Target("fan-out: p99 2xx → handler start < 50 ms", "fanout.latency", "p99", "<", 50, "ms"),
    Target(
        f"status, 16 conns: GET /tasks/{{id}} ≥ 0.5{TIMES} ceiling",
        "status.get_task.c16",
        "ratio",
        ">=",
        0.5,
        TIMES,
    ),
    Target(
        "status, 16 conns: GET /tasks/{id} p99 < 10 ms", "status.get_task.c16", "p99", "<", 10, "ms"
    ),
    Target(
        "status, 16 conns: filtered page of 50 p99 < 30 ms", "status.list.c16", "p99", "<", 30, "ms"
    ),
    Target(
        "receiver RSS at 1,000 connections < 150 MB (143.1 MiB)",
        "footprint.rss_conns",
        "value",
        "<",
        MB150_IN_MIB,
        "MiB",
    ),
    Target(
        f"flat RSS during a 1 GB download (growth < {FLAT_MIB:g} MiB)",
        "footprint.download_flat",
        "value",
        "<",
        FLAT_MIB,
        "MiB",
    ),
)


def target_lines(table_rows: Sequence[Row], rounds: Rounds) -> list[str]:
    """One ``PASS|MISS|n/a  text: measured`` line per target whose row is in the table."""
    keys = {r.key for r in table_rows}
    lines = []
    for target in TARGETS:
        if target.key not in keys:
            continue
        measured = target.measured(table_rows, rounds)
        shown = number(measured, "ratio" if target.unit == TIMES else target.unit)
        lines.append(f"- {target.verdict(measured)}  {target.text}: measured {shown} {target.unit}")
    return lines
