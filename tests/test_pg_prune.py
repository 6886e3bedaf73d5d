"""Pruning on Postgres (``receiver.store.postgres.retention``, ``receiver.pruning``): the same
history on SQLite and Postgres pruned with the same cutoffs and windows removes the same rows
(old raw callbacks, old done deliveries) and keeps the same (tasks, transitions, files, dead
letters, every delivery not done, done ones a file names); on Postgres no vacuum step runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from receiver.models import Pruned
from receiver.pruning import prune
from tests.pg_reads_support import TASK_IDS, Backend, at, both

TABLES = ("tasks", "transitions", "callbacks", "deliveries", "files")
#: What a prune answers alike on both backends (not sizes, durations or the vacuum mode).
SAME = {"dry_run", "complete", "cutoff_ms", "callbacks", "deliveries", "dead_kept"}
SAME |= {"kept_for_files", "batches"}


async def pruned(
    b: Backend, cutoff_ms: int, *, dry_run: bool = False, vacuum: bool = False
) -> Pruned:
    """``prune`` on ``b`` in windows of 3 rows."""
    return await prune(
        b.writer, b.reader, cutoff_ms=cutoff_ms, dry_run=dry_run, vacuum=vacuum, window_rows=3
    )


def counts(b: Backend) -> dict[str, int]:
    return {t: b.count(t) for t in TABLES}


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


DELIVERIES = (
    "SELECT id, state, updated_at, EXISTS (SELECT 1 FROM files f WHERE f.delivery_id = d.id)"
    " FROM deliveries d ORDER BY id"
)


async def test_prune_on_postgres_removes_and_keeps_what_it_does_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    cutoffs = (at(5.5), at(31) + 10)  # some callbacks; then every callback, some deliveries
    async with both(tmp_path, pg_url) as (lite, pg):
        before = counts(pg)
        assert before == counts(lite)
        deliveries = pg_rows(pg_url, DELIVERIES)
        dry = await pruned(pg, cutoffs[1], dry_run=True)
        assert dry.model_dump(include=SAME) == (
            await pruned(lite, cutoffs[1], dry_run=True)
        ).model_dump(include=SAME)
        assert counts(pg) == before  # a dry run changes nothing
        for cutoff, vacuum in zip(cutoffs, (False, True), strict=True):
            mine = await pruned(pg, cutoff, vacuum=vacuum)
            theirs = await pruned(lite, cutoff, vacuum=vacuum)
            same = SAME - {"batches"} if vacuum else SAME  # SQLite's vacuum steps are batches
            assert mine.model_dump(include=same) == theirs.model_dump(include=same), cutoff
            assert (mine.vacuum, theirs.vacuum) == ("none", "incremental" if vacuum else "none")
            assert mine.complete and mine.size_bytes_after > 0 and mine.free_bytes_after == 0
            assert counts(pg) == counts(lite)
            for id_ in TASK_IDS:
                assert await pg.reader.task_answer(id_) == await lite.reader.task_answer(id_)
            assert await pg.reader.list_deliveries(
                state=None, plugin=None, limit=500, before_id=None
            ) == await lite.reader.list_deliveries(
                state=None, plugin=None, limit=500, before_id=None
            )
    # what went and what stayed, on Postgres
    assert pg_rows(pg_url, "SELECT COUNT(*) FROM callbacks") == [(0,)]
    for table in ("tasks", "transitions", "files"):
        assert pg_rows(pg_url, f"SELECT COUNT(*) FROM {table}") == [(before[table],)]
    old_done = {
        i for i, state, updated_at, _ in deliveries if state == "done" and updated_at < cutoffs[1]
    }
    named = {i for i, _, _, has_file in deliveries if has_file}
    kept = [i for i, *_ in deliveries if i not in old_done - named]
    assert [i for (i,) in pg_rows(pg_url, "SELECT id FROM deliveries ORDER BY id")] == kept
    assert old_done - named and old_done & named  # some went; the one a file names stayed
    states = {state for i, state, *_ in deliveries if i in kept}
    assert states >= {"dead", "failed", "running", "pending", "done"}
    assert dry.deliveries == len(old_done - named) and dry.kept_for_files == 1
    assert dry.dead_kept == 1
