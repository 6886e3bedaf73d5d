"""Retention on Postgres: :class:`~receiver.store.retention.PruneWindow`'s batches for the
writer, and the counts of what a prune would remove for the reads.

The rule (what goes, what stays) and the statements are ``receiver.store.retention``'s, run
here with psycopg's parameter mark; a window is bounded by ids as on SQLite, one batch of the
writer each. There is no vacuum step on Postgres: autovacuum makes the deleted rows' space
reusable by itself (``receiver.pruning`` skips the SQLite steps when the reader's
:class:`~receiver.store.retention.Space` says ``reclaims_itself``).
"""

from __future__ import annotations

from typing import Any

import psycopg

from receiver.store.postgres.deliveries import Replica
from receiver.store.postgres.pool import Query
from receiver.store.retention import Prunable, PruneWindow, Windowed, prunable_sql


def prune_window(op: PruneWindow, conn: psycopg.Connection[Any], replica: Replica) -> Windowed:
    """:class:`PruneWindow` on Postgres, in the writer's transaction (a savepoint of its
    own): the ids of the window, then the ``DELETE`` of those that qualify.

    Raises:
        psycopg.Error: a statement failed; the window's deletes are undone with it.
    """
    seen = conn.execute(*op.scan_sql("%s")).fetchall()
    if not seen:
        return op.windowed([], 0)
    return op.windowed(seen, conn.execute(*op.delete_sql("%s", seen)).rowcount)


def prunable_queries(cutoff_ms: int) -> dict[str, Query]:
    """The counts of :class:`~receiver.store.retention.Prunable` before ``cutoff_ms`` (Unix
    ms), by field, in its order: ``receiver.store.retention.prunable_sql``'s statements, each
    of one row whose column ``count`` is the count, for
    :meth:`~receiver.store.postgres.pool.PgReadPool.snapshot`."""
    return {
        name: (sql, (cutoff_ms,))
        for name, sql in zip(Prunable.__dataclass_fields__, prunable_sql("%s"), strict=True)
    }
