"""The reliability suites (issue 10): each module is one suite, run at a reduced size by the
test suite (``tests/test_reliability_*.py``) and at full size by ``python bench/reliability.py``.

Every suite module defines ``NAME`` (a short title) and ``async def run(full: bool, workdir:
Path) -> Report``: it starts what it needs (real ``kling-hooks serve`` processes, sinks, the
simulator) on 127.0.0.1 under ``workdir``, stops all of it before returning, and reports its
figures. A suite fails when one of its must-be-zero figures is not zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """What one suite measured.

    Attributes:
        name: The suite's ``NAME``.
        figures: Every figure printed, by label, in order (counts, ms, MiB, ratios).
        must_be_zero: The labels of ``figures`` that must be 0 for the suite to pass.
        notes: Free lines printed under the figures (what was done, the sizes used).
    """

    name: str
    figures: dict[str, int | float | str] = field(default_factory=dict)
    must_be_zero: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """``"label = value"`` of each must-be-zero figure that is not 0."""
        return [
            f"{k} = {self.figures.get(k)}" for k in self.must_be_zero if self.figures.get(k) != 0
        ]

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        """The report as aligned text lines, ``PASS``/``FAIL`` in the title."""
        width = max((len(k) for k in self.figures), default=0)
        lines = [f"{self.name}: {'PASS' if self.ok else 'FAIL'}"]
        for label, value in self.figures.items():
            mark = "  (must be 0)" if label in self.must_be_zero else ""
            shown = (
                f"{value:,}"
                if isinstance(value, int)
                else (f"{value:,.2f}" if isinstance(value, float) else value)
            )
            lines.append(f"  {label.ljust(width)}  {shown}{mark}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)
