"""The harness's table: one markdown row per figure, the median over rounds with its spread
(min-max), each ratio taken against the ceiling of the same round (the targets are judged
in :mod:`bench.perf.targets`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.perf.sizes import Sample

#: Per round: ``{row key: sample}``.
Rounds = Sequence[dict[str, Sample]]
LATENCY = ("p50", "p99", "p999")
#: Typography of the table (escaped here: ruff flags look-alike characters in source).
DASH, TIMES, MINUS = "\u2013", "\u00d7", "\u2212"


@dataclass(frozen=True)
class Row:
    """One row of the table.

    Attributes:
        key: The samples' key (``ingest.none.c64``).
        group: Its figure group (``--only``).
        figure: What it is, with the figure's number.
        conns: Connections, as shown.
        unit: The value's unit.
        value: The sample field shown as the value.
        latency: The latency fields shown (ms), of ``p50``, ``p99``, ``p999``.
        ceiling: The row key whose ``ceiling_field`` of the same round is the ratio's
            denominator (for the Postgres fan-out rows: SQLite's backlog figure, ``value``).
    """

    key: str
    group: str
    figure: str
    conns: str
    unit: str
    value: str = "rps"
    latency: tuple[str, ...] = LATENCY
    ceiling: str | None = None
    ceiling_field: str = "rps"


def rows(
    sizes_connections: int, download_bytes: int, tasks: int, burst: int, *, postgres: bool = False
) -> list[Row]:
    """Every row, in the table's order, for a run of these sizes (with ``postgres``, the
    Postgres rows of :func:`pg_rows` at the end)."""
    big = (
        f"{download_bytes / 1024**3:g} GiB"
        if download_bytes >= 1024**3
        else (f"{download_bytes / 1024**2:g} MiB")
    )
    post16, post64 = "ceiling.post.c16", "ceiling.post.c64"
    out = [
        Row(post16, "ceiling", "1 ceiling: bare Starlette, POST 1 KB JSON", "16", "req/s"),
        Row(post64, "ceiling", "1 ceiling: bare Starlette, POST 1 KB JSON", "64", "req/s"),
    ]
    for key, label in (("none", "no plugins"), ("plugins", "downloader + slack + webhook")):
        for c, ceiling in (("16", post16), ("64", post64)):
            out.append(
                Row(
                    f"ingest.{key}.c{c}",
                    "ingest",
                    f"2 ingest, {label}",
                    c,
                    "req/s",
                    ceiling=ceiling,
                )
            )
    out += [
        Row(
            "duplicates.c64",
            "duplicates",
            "3 duplicate storm (one callback)",
            "64",
            "req/s",
            ceiling=post64,
        ),
        Row(
            "fanout.noop1",
            "fanout",
            f"4a fan-out, burst of {burst:,}: 1 no-op plugin",
            "64",
            "events/s",
            value="value",
            latency=(),
        ),
        Row(
            "fanout.noop3",
            "fanout",
            f"4a fan-out, burst of {burst:,}: 3 no-op plugins",
            "64",
            "events/s",
            value="value",
            latency=(),
        ),
        Row(
            "fanout.backlog1",
            "fanout",
            f"4a fan-out, backlog of {burst:,}: 1 no-op plugin",
            "64",
            "events/s",
            value="value",
            latency=(),
        ),
        Row(
            "fanout.backlog3",
            "fanout",
            f"4a fan-out, backlog of {burst:,}: 3 no-op plugins",
            "64",
            "events/s",
            value="value",
            latency=(),
        ),
        Row(
            "fanout.latency",
            "fanout",
            "4b 2xx → handler start (ms), ingest at half max",
            "64",
            "req/s",
            value="value",
            latency=("p50", "p99"),
        ),
    ]
    for load, label in (("get_task", "GET /tasks/{id}"), ("list", "GET /tasks?…&limit=50")):
        for c in ("1", "16"):
            ceiling = f"ceiling.{load}.c{c}"
            out.append(
                Row(ceiling, "status", f"5 ceiling: bare GET, same JSON ({label})", c, "req/s")
            )
            out.append(
                Row(
                    f"status.{load}.c{c}",
                    "status",
                    f"5 {label}, {tasks:,} tasks",
                    c,
                    "req/s",
                    ceiling=ceiling,
                )
            )
    out += [
        Row(
            "footprint.hwm",
            "footprint",
            "6 peak RSS (VmHWM) under ingest load",
            "64",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.rss_conns",
            "footprint",
            f"6 RSS with {sizes_connections:,} connections",
            f"{sizes_connections}",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.startup",
            "footprint",
            "6 start-up: process start → /readyz 200",
            "",
            "ms",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.bytes_per_task",
            "footprint",
            "6 database bytes per task after ingest",
            "",
            "B",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.download_before",
            "footprint",
            f"6 RSS, {big} download: before",
            "",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.download_max",
            "footprint",
            f"6 RSS, {big} download: max during",
            "",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.download_after",
            "footprint",
            f"6 RSS, {big} download: after",
            "",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "footprint.download_flat",
            "footprint",
            f"6 RSS, {big} download: flat (max {MINUS} before)",
            "",
            "MiB",
            value="value",
            latency=(),
        ),
        Row(
            "peer.c16",
            "peer",
            "7 peer: webhook (adnanh) + persist script",
            "16",
            "req/s",
            ceiling=post16,
        ),
        Row(
            "peer.c64",
            "peer",
            "7 peer: webhook (adnanh) + persist script",
            "64",
            "req/s",
            ceiling=post64,
        ),
    ]
    return out + (pg_rows(tasks, burst) if postgres else [])


def pg_rows(tasks: int, burst: int) -> list[Row]:
    """The Postgres column (``bench/run.py --postgres``): ingest on 1 and 2 replicas against
    the ceiling at 64 connections, the backlog drained by 1 and 2 replicas against SQLite's
    backlog figure of the same round, the status API against its ceiling."""
    out = [
        Row(
            f"pg.ingest.r{n}.c64",
            "ingest",
            f"2 ingest on Postgres, {n} replica{'s' * (n > 1)}, no plugins",
            "64",
            "req/s",
            ceiling="ceiling.post.c64",
        )
        for n in (1, 2)
    ]
    out += [
        Row(
            f"pg.backlog1.r{n}",
            "fanout",
            f"4a fan-out on Postgres, backlog of {burst:,}: 1 no-op plugin, {n} replica"
            f"{'s' * (n > 1)} ({TIMES} SQLite's backlog)",
            "",
            "events/s",
            value="value",
            latency=(),
            ceiling="fanout.backlog1",
            ceiling_field="value",
        )
        for n in (1, 2)
    ]
    for load, label in (("get_task", "GET /tasks/{id}"), ("list", "GET /tasks?…&limit=50")):
        out += [
            Row(
                f"pg.status.{load}.c{c}",
                "status",
                f"5 {label} on Postgres, {tasks:,} tasks",
                c,
                "req/s",
                ceiling=f"ceiling.{load}.c{c}",
            )
            for c in ("1", "16")
        ]
    return out


def values(rounds: Rounds, key: str, field: str) -> list[float]:
    """``field`` of row ``key`` in every round that has it."""
    return [r[key][field] for r in rounds if key in r and field in r[key]]


def ratios(rounds: Rounds, row: Row) -> list[float]:
    """Per round, the row's value over its ceiling's ``rps`` of the same round."""
    found = []
    for r in rounds:
        if not (row.ceiling and row.key in r and row.ceiling in r):
            continue
        below = r[row.ceiling].get(row.ceiling_field, 0.0)
        if below > 0:
            found.append(r[row.key][row.value] / below)
    return found


@dataclass(frozen=True)
class Spread:
    """The median, min and max of one figure over rounds (NaN when there is none)."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, found: Sequence[float]) -> Spread:
        clean = [x for x in found if not math.isnan(x)]
        if not clean:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))


def number(x: float, unit: str) -> str:
    """``x`` as the table shows a value of ``unit``."""
    if math.isnan(x):
        return DASH
    if unit in ("req/s", "events/s", "B") or abs(x) >= 100:
        return f"{x:,.0f}"
    if unit == "ratio":
        return f"{x:.2f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def cell(spread: Spread, unit: str) -> str:
    """``median [min-max]`` (the median alone for a single round)."""
    if spread.count == 0:
        return DASH
    shown = number(spread.median, unit)
    if spread.count > 1:
        shown += f" [{number(spread.low, unit)}{DASH}{number(spread.high, unit)}]"
    return shown


def markdown(table_rows: Sequence[Row], rounds: Rounds) -> str:
    """The table (see the module docstring)."""
    head = (
        f"| figure | conns | value: median [min{DASH}max] | unit | p50 ms | p99 ms | p99.9 ms"
        f" | {TIMES} ceiling |"
    )
    lines = [head, "|" + "---|" * 8]
    for row in table_rows:
        lat = [
            cell(Spread.of(values(rounds, row.key, f)), "ms") if f in row.latency else ""
            for f in LATENCY
        ]
        ratio = cell(Spread.of(ratios(rounds, row)), "ratio") if row.ceiling else ""
        value = cell(Spread.of(values(rounds, row.key, row.value)), row.unit)
        lines.append(
            f"| {row.figure} | {row.conns} | {value} | {row.unit} | {' | '.join(lat)} | {ratio} |"
        )
    return "\n".join(lines)
