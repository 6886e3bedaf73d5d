"""What a harness run shares: its sizes (a full run, or ``--quick``), its pre-built feeds,
and the context every job gets (the sink, the run directory, the problems found so far, the
figures of the round in progress).
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import wrk
from bench.perf.servers import Running
from bench.workload import distinct_callbacks

#: One figure's values in one round, by field (``rps``, ``p99`` in ms, ``value``...).
Sample = dict[str, float]
#: Distinct callbacks pre-built per second of ``duration_s``: more than any receiver here
#: stores per second (a faster one exhausts the feed early; its rate is still right).
FEED_RATE_PER_S = 15_000


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run.

    Attributes:
        duration_s: Each timed wrk run, seconds.
        warmup: Untimed distinct callbacks each receiver gets before its timed run.
        burst: Callbacks of a fan-out burst.
        tasks: Tasks in the status API's database.
        connections: Open connections of the footprint figure.
        download_bytes: The big file the downloader fetches, bytes.
        probe_rate_per_s: The fan-out latency probe's callbacks per second.
    """

    duration_s: float
    warmup: int
    burst: int
    tasks: int
    connections: int
    download_bytes: int
    probe_rate_per_s: float

    @property
    def feed(self) -> int:
        """Distinct callbacks in the ingest feed."""
        return math.ceil(FEED_RATE_PER_S * self.duration_s)


FULL = Sizes(
    duration_s=8.0,
    warmup=500,
    burst=10_000,
    tasks=1_000_000,
    connections=1_000,
    download_bytes=1024**3,
    probe_rate_per_s=40.0,
)
QUICK = Sizes(
    duration_s=0.5,
    warmup=50,
    burst=300,
    tasks=2_000,
    connections=200,
    download_bytes=8 * 1024**2,
    probe_rate_per_s=40.0,
)


@dataclass(frozen=True)
class Feeds:
    """The feed files (``bench/wrk.py``) every round draws on; bodies name their result
    images on the sink. ``ingest``: distinct callbacks; ``warmup``: others, for the untimed
    start of each receiver; ``duplicate``: one more callback (the duplicate storm sends it
    after ``warmup_then_duplicate``, which ends with it)."""

    ingest: Path
    warmup: Path
    duplicate: Path
    warmup_then_duplicate: Path
    image_base: str


def build_feeds(directory: Path, sizes: Sizes, sink_url: str) -> Feeds:
    """Write the feeds of a run into ``directory``."""
    # As long as Kling's CDN paths (bench.workload.CDN_IMAGE_BASE): bodies stay about 1 KB.
    image_base = f"{sink_url}/files/bs2/upload-kling-api/7283581940/image/"

    def lines(count: int, prefix: str) -> list[wrk.FeedLine]:
        made = distinct_callbacks(count, prefix=prefix, image_base=image_base)
        return [wrk.FeedLine("POST", path, body) for path, body in made]

    feeds = Feeds(
        ingest=directory / "ingest.feed",
        warmup=directory / "warmup.feed",
        duplicate=directory / "duplicate.feed",
        warmup_then_duplicate=directory / "warmup-duplicate.feed",
        image_base=image_base,
    )
    warm, dup = lines(sizes.warmup, "w"), lines(1, "d")
    wrk.write_feed(feeds.ingest, lines(sizes.feed, "i"))
    wrk.write_feed(feeds.warmup, warm)
    wrk.write_feed(feeds.duplicate, dup)
    wrk.write_feed(feeds.warmup_then_duplicate, warm + dup)
    return feeds


@dataclass
class Context:
    """What a job gets.

    Attributes:
        sizes: The run's sizes.
        workdir: The run's directory (each job's files go under ``r{round}/``).
        sink: The running sink.
        feeds: The pre-built feeds.
        groups: The figure groups this run measures (``--only``).
        keep: Keep every configuration's files (``--keep``: logs, databases, downloads).
        problems: Lossy runs and failed checks so far (any: exit 1).
        round_no: The round in progress, from 1.
        this_round: The figures measured so far in this round, by row key.
        extra: Set up once for a group (the status API's database...), by name.
    """

    sizes: Sizes
    workdir: Path
    sink: Running
    feeds: Feeds
    groups: frozenset[str]
    keep: bool = False
    problems: list[str] = field(default_factory=list)
    round_no: int = 0
    this_round: dict[str, Sample] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def wants(self, *groups: str) -> bool:
        """Whether any of ``groups`` is measured in this run."""
        return not self.groups.isdisjoint(groups)

    def rundir(self, name: str) -> Path:
        """A new, empty directory for one configuration of this round."""
        path = self.workdir / f"r{self.round_no}" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def done_with(self, path: Path) -> None:
        """Remove a configuration's files once its figures are taken (unless ``keep``)."""
        if not self.keep:
            shutil.rmtree(path, ignore_errors=True)

    def progress(self, message: str) -> None:
        """One progress line on stderr (stdout carries only the table)."""
        print(f"[round {self.round_no}] {message}", file=sys.stderr, flush=True)
