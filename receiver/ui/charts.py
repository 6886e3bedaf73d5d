"""The overview's charts as data for an SVG template (``templates/_chart.html``): stacked bars,
drawn on the server, with no script and no library.

A :class:`Chart` holds the bars' rectangles in SVG user units (the template scales the
``viewBox`` to the page's width), one CSS class per series (colours are in ``ui.css``, not
in the SVG: the CSP allows no inline style), and the same numbers as a table for screen
readers and for reading exact values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 200
_AXIS = 28  # room under the bars for the labels


@dataclass(frozen=True)
class Bar:
    """One segment of a stacked bar: where it is, its series' position (CSS class ``s0``,
    ``s1``...) and its tooltip."""

    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True)
class Chart:
    """A stacked bar chart.

    Attributes:
        title: What it shows (the SVG's accessible name).
        bars: Every non-empty segment.
        ticks: ``(x, label)`` under the bars.
        top: The value at the top of the plot area (the largest stack).
        legend: ``(series position, name)`` of every series, in stacking order.
        rows: The table version: ``(bucket label, {series: value})`` per bucket with data.
        unit: What the values count (``callbacks``, ``units``).
    """

    title: str
    bars: list[Bar]
    ticks: list[tuple[float, str]]
    top: float
    legend: list[tuple[int, str]]
    rows: list[tuple[str, dict[str, float]]]
    unit: str
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def plot_height(self) -> int:
        return self.height - _AXIS


def stacked(
    *,
    title: str,
    buckets: Sequence[int],
    series: Sequence[str],
    values: Mapping[tuple[int, str], float],
    label: Callable[[int], str],
    unit: str,
    tick_every: int,
) -> Chart:
    """A stacked bar chart with one bar per bucket, left to right.

    Args:
        title: The chart's accessible name.
        buckets: The bucket keys in order (Unix ms of each minute or day).
        series: The series' names in stacking order, bottom first.
        values: ``{(bucket, series): value}``; missing pairs are 0.
        label: A bucket's label (tooltips, ticks and the table).
        unit: What the values count, for tooltips.
        tick_every: Label every n-th bucket under the axis.

    Raises:
        ValueError: no buckets, or ``tick_every`` below 1.
    """
    if not buckets or tick_every < 1:
        raise ValueError(f"buckets={len(buckets)}, tick_every={tick_every}: need both >= 1")
    totals = [sum(values.get((b, s), 0.0) for s in series) for b in buckets]
    top = max(totals) or 1.0
    slot = WIDTH / len(buckets)
    plot = HEIGHT - _AXIS
    bars: list[Bar] = []
    rows: list[tuple[str, dict[str, float]]] = []
    for i, bucket in enumerate(buckets):
        y = float(plot)
        found = {s: values[(bucket, s)] for s in series if values.get((bucket, s))}
        for name, value in found.items():
            height = value / top * plot
            y -= height
            tip = f"{label(bucket)}: {number(value)} {unit} ({name})"
            x, width = i * slot + slot * 0.1, max(slot * 0.8, 0.5)
            bars.append(Bar(x, y, width, height, list(series).index(name), tip))
        if found:
            rows.append((label(bucket), found))
    ticks = [
        (x, label(b))
        for i, b in enumerate(buckets)
        if i % tick_every == 0 and 24 <= (x := i * slot + slot / 2) <= WIDTH - 24
    ]
    legend = list(enumerate(series))
    return Chart(title, bars, ticks, top, legend, rows, unit)


def number(value: float) -> str:
    """``3``, ``0.4``, ``1.25``: no trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")
