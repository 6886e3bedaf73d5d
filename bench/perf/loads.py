"""One wrk run against a running server, as every job takes it: warm-up or timed, with the
server's CPU time around it, its answers counted into a receiver's :class:`Tally`, and its
figures as a :data:`~bench.perf.sizes.Sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench import wrk
from bench.perf.servers import Running, Tally
from bench.perf.sizes import Context, Sample


def timed(
    ctx: Context,
    run: Running,
    feed: Path,
    connections: int,
    *,
    mode: str = "seq",
    duration_s: float | None = None,
    rate_per_s: float = 0.0,
    limit: int = 0,
    path: str | None = None,
    headers: Sequence[str] = (),
    tally: Tally | None = None,
) -> tuple[wrk.WrkResult, float]:
    """One wrk run (:func:`bench.wrk.run_wrk`) against ``run``.

    Args:
        duration_s: Seconds of sending (default the run's ``duration_s``; 0: until the feed
            or ``limit`` runs out).
        tally: Where a receiver's answers are counted for its loss check.

    Returns:
        wrk's result, and the server's CPU seconds over the run.

    A run that wrk's hard deadline had to end (answers that never came) is a problem.
    """
    cpu_before = run.cpu_s()
    result = wrk.run_wrk(
        run.url,
        feed,
        connections=connections,
        mode=mode,
        duration_s=ctx.sizes.duration_s if duration_s is None else duration_s,
        rate_per_s=rate_per_s,
        limit=limit,
        path=path,
        headers=headers,
        workdir=feed.parent,
    )
    cpu_s = run.cpu_s() - cpu_before
    if tally is not None:
        tally.add(result.new, result.ok)
    if not result.finished:
        ctx.problems.append(
            f"{run.name}: wrk ended by its hard deadline, {result.issued - result.answered} "
            f"requests unanswered (socket errors {dict(result.errors)})"
        )
    return result, cpu_s


def warm(
    ctx: Context,
    run: Running,
    connections: int,
    *,
    feed: Path | None = None,
    path: str | None = None,
    tally: Tally | None = None,
) -> wrk.WrkResult:
    """Send the warm-up feed once (untimed; counted into ``tally``)."""
    result, _ = timed(
        ctx,
        run,
        feed or ctx.feeds.warmup,
        connections,
        duration_s=0,
        path=path,
        tally=tally,
    )
    return result


def sample(result: wrk.WrkResult, server_cpu_s: float | None = None) -> Sample:
    """The figures of one timed run.

    Returns:
        ``rps`` (2xx answers per second), ``p50``, ``p90``, ``p99``, ``p999``, ``max`` (ms),
        ``ok``, ``non2xx`` (and by status: ``non2xx_503``...) and ``errors`` (counts),
        ``span_s``, ``wrk_cpu`` (wrk's share of one core) and, given ``server_cpu_s``,
        ``server_cpu`` (share of one core) and ``server_cpu_us`` (µs per answer).
    """
    found: Sample = {"rps": result.rps}
    found.update({k: result.latency_ms[k] for k in ("p50", "p90", "p99", "p999", "max")})
    found.update(
        ok=result.ok,
        non2xx=sum(result.non2xx.values()),
        errors=sum(result.errors.values()),
        span_s=result.span_s,
        wrk_cpu=result.wrk_cpu_share,
    )
    found.update({f"non2xx_{status}": n for status, n in result.non2xx.items()})
    if server_cpu_s is not None and result.span_s > 0:
        found["server_cpu"] = server_cpu_s / result.span_s
        found["server_cpu_us"] = server_cpu_s / max(result.answered, 1) * 1e6
    return found
