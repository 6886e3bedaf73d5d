"""The reliability suites of issue 10, all of them, at full size: one command, one report.

    python bench/reliability.py                 # full size (the README's figures)
    python bench/reliability.py --reduced       # the CI size, as tests/test_reliability_*.py
    python bench/reliability.py --only crash,storage

Runs every suite module of ``bench/suites`` that exists, in the order of ``SUITES`` (each
module defines ``NAME`` and ``async def run(full, workdir) -> Report``), each in a fresh
temporary directory, prints each report and a summary line per suite, and exits 1 when any
suite failed (a must-be-zero figure was not zero, or the suite raised). Storage faults mount a
tmpfs and set inode flags when run as root; elsewhere they fall back to ``RLIMIT_FSIZE``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suites import Report

#: Every suite module, in running order; those not written yet are skipped, none that exist.
SUITES = ("crash", "hostile", "forgery", "storage", "slow_clients", "secrets")


def present(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(f"bench.suites.{n}") is not None]


async def run_one(name: str, full: bool) -> tuple[Report, float]:
    module = importlib.import_module(f"bench.suites.{name}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"kling-hooks-{name}-") as workdir:
        try:
            report: Report = await module.run(full, Path(workdir))
        except Exception:
            report = Report(str(getattr(module, "NAME", name)), {"raised": 1}, ("raised",))
            report.notes += traceback.format_exc().splitlines()
    return report, time.monotonic() - started


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true", help="the CI size, not the full one")
    parser.add_argument("--only", default="", help="comma-separated suite modules")
    args = parser.parse_args(argv)
    wanted = tuple(args.only.split(",")) if args.only else SUITES
    names = present(wanted)
    size = "reduced" if args.reduced else "full"
    print(f"kling-hooks reliability suites, {size} size: {', '.join(names)}", flush=True)
    results: list[tuple[str, Report, float]] = []
    for name in names:
        report, took_s = await run_one(name, full=not args.reduced)
        print(f"\n{report.format()}\n  ({took_s:.1f} s)", flush=True)
        results.append((name, report, took_s))
    print("\nsummary")
    for name, report, took_s in results:
        verdict = "PASS" if report.ok else "FAIL: " + "; ".join(report.failures)
        print(f"  {name:<14} {verdict}  ({took_s:.1f} s)")
    return 0 if results and all(r.ok for _, r, _ in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
