"""The outbox's write operations on Postgres, where several replicas claim from one table.

The operations are SQLite's (``receiver.store.deliveries``: :class:`Claim`, :class:`Finish`,
:class:`Recover`, :class:`Redeliver`), with the same arguments, results and states, plus one
of Postgres's own, :class:`ExpireLeases`; here are their statements for a shared database
(:data:`DELIVERY_OPS`, run by :class:`~receiver.store.postgres.PgTransaction` in the batch's
transaction, a savepoint each).
What differs is that a claim is leased to one replica (:class:`Replica`; schema version 2):

* **Claim** locks the due rows with ``SELECT ... FOR UPDATE SKIP LOCKED``: a row another
  replica's open batch has locked is skipped, not waited for, so two replicas claiming at
  once never get the same delivery. The claimed rows are ``running`` with ``claimed_by`` (the
  replica's ``replica_id``) and ``lease_expires_at = now_ms + lease``.
* **Finish** stores an outcome only while the replica still holds the claim of that attempt
  (``running``, ``claimed_by`` it, and ``attempts`` equal to the Finish's ``attempt`` when it
  names one, as the dispatcher's does). A Finish that comes after its lease was recovered
  changes nothing, its files included: the delivery is another attempt's now, on another
  replica or on this one.
* **Recover** makes due again (or ``dead``, after the last attempt: SQLite's rule) the
  running deliveries whose lease has expired, whoever claimed them, and, as SQLite's does at
  start-up, those still claimed under this replica's own ``replica_id`` (a previous run of it
  stopped during them), expired or not. A running row with no lease (copied in from SQLite)
  counts as expired.
* **Redeliver** is SQLite's, filter for filter.
* **ExpireLeases** (Postgres only) is the periodic sweep: Recover's rule for the running
  deliveries whose lease has expired, whoever claimed them, but none of this replica's
  claims that still hold, so a running replica can sweep without taking back its own
  deliveries in flight. ``Claimed.next_due_at`` tells it when to: it counts the earliest
  lease still to expire among the running rows of the plugins it reports on.

Lease times are the replicas' own clocks (``now_ms`` of the operations, Unix ms), as
``next_attempt_at`` is.

Limits, for the dispatcher's wiring to keep in mind:

* ``Claimed.next_due_at`` counts due rows that another replica's open batch has locked (they
  are due now, so the dispatcher looks again at once). Of the leases it counts only those
  still to expire (``lease_expires_at > now_ms``): one that has expired is the sweep's to
  release, and counting it would have a dispatcher that does not sweep look again at once
  for ever. A running row with no lease (copied in from SQLite) is not reported either; the
  sweep and Recover release it as expired.
* A Finish with no ``attempt`` is matched by replica only (the fence before attempts): an
  earlier attempt's late outcome on the same replica is then taken for the current one.
* The dispatcher runs ExpireLeases with its claim once the earliest lease or retry it knows
  of has come (``receiver.dispatcher``).
* A Finish that is ignored raises nothing; it returns False, and the dispatcher logs it
  (``delivery_outcome_ignored``).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from receiver.errors import StoreUnavailable
from receiver.models import DeliveryState, SavedFile
from receiver.store.deliveries import (
    EVENT_SQL,
    FILE_COLUMNS,
    UPSERT_FILE_SET,
    Claim,
    Claimed,
    DeliveryOp,
    Finish,
    Job,
    Recover,
    Redeliver,
    jobs_of,
)
from receiver.store.rows import decode

#: The default lease, ms: the downloader's default ``timeout_s`` (900 s) and a minute.
DEFAULT_LEASE_MS = 960_000


@dataclass(frozen=True)
class Replica:
    """Who claims deliveries on Postgres, and for how long.

    Attributes:
        replica_id: This receiver's name in ``deliveries.claimed_by``. It must be distinct
            for every replica of one database (two on one host need names of their own) and
            the same across a replica's restarts: at start, :class:`Recover` takes back what
            is still claimed under it. Default: the host name.
        lease_ms: How long a claim holds, ms; once ``now_ms`` passes ``lease_expires_at``,
            any replica's :class:`Recover` makes the delivery due again. It must exceed the
            plugin's ``timeout_s``, plus the time to record the outcome and the replicas'
            clock skew: a shorter lease lets a slow attempt run on two replicas at once.
            Default :data:`DEFAULT_LEASE_MS`.
        plugin_lease_ms: A plugin's own lease, ms, by plugin name (a plugin with a short
            ``timeout_s`` is recovered sooner); others get ``lease_ms``.
    """

    replica_id: str = field(default_factory=socket.gethostname)
    lease_ms: int = DEFAULT_LEASE_MS
    plugin_lease_ms: Mapping[str, int] = field(default_factory=dict)

    def lease_for(self, plugin: str) -> int:
        """The lease of a claim of ``plugin``'s deliveries, ms."""
        return self.plugin_lease_ms.get(plugin, self.lease_ms)


_CLAIM = (
    "WITH due AS (SELECT id FROM deliveries WHERE plugin = %(plugin)s"
    " AND state IN ('pending', 'failed') AND next_attempt_at <= %(now)s"
    " ORDER BY next_attempt_at, id LIMIT %(free)s FOR UPDATE SKIP LOCKED)"
    " UPDATE deliveries d SET state = 'running', attempts = d.attempts + 1,"
    " next_attempt_at = NULL, updated_at = %(now)s, claimed_by = %(replica)s,"
    " lease_expires_at = %(expires)s FROM due WHERE d.id = due.id RETURNING d.id"
)


def claim(op: Claim, conn: psycopg.Connection[Any], replica: Replica) -> Claimed:
    """:class:`Claim` on Postgres: at most ``slots[plugin]`` due deliveries of each plugin,
    skipping those another replica's batch has locked, leased to ``replica``."""
    ids: list[int] = []
    left: list[str] = []
    for plugin, free in op.slots.items():
        if free <= 0:
            continue
        args = {
            "plugin": plugin,
            "now": op.now_ms,
            "free": free,
            "replica": replica.replica_id,
            "expires": op.now_ms + replica.lease_for(plugin),
        }
        got = [int(r[0]) for r in conn.execute(_CLAIM, args).fetchall()]
        ids += got
        if len(got) < free:
            left.append(plugin)
    jobs = _load_jobs(conn, ids) if ids else []
    return Claimed(jobs, _next_due(conn, left, op.now_ms) if left else None)


#: The earliest of the plugins' next attempts and of their running rows' leases still to
#: expire (``deliveries_due`` and ``deliveries_leases`` serve the two halves).
_NEXT_DUE = (
    "SELECT LEAST((SELECT MIN(next_attempt_at) FROM deliveries"
    " WHERE state IN ('pending', 'failed') AND plugin = ANY(%(plugins)s)),"
    " (SELECT MIN(lease_expires_at) FROM deliveries WHERE state = 'running'"
    " AND lease_expires_at > %(now)s AND plugin = ANY(%(plugins)s)))"
)


def _next_due(conn: psycopg.Connection[Any], plugins: list[str], now_ms: int) -> int | None:
    row = conn.execute(_NEXT_DUE, {"plugins": plugins, "now": now_ms}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _load_jobs(conn: psycopg.Connection[Any], ids: list[int]) -> list[Job]:
    cur = conn.cursor(row_factory=dict_row)
    rows = [decode(r) for r in cur.execute(EVENT_SQL.format(marks=_marks(len(ids))), ids)]
    return jobs_of(rows, saved_files(conn, sorted({r["task_id"] for r in rows})))


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


def saved_files(conn: psycopg.Connection[Any], task_ids: list[str]) -> dict[str, list[SavedFile]]:
    """The files recorded for each of ``task_ids``, by id: ``{task_id: [SavedFile]}``."""
    names = ", ".join(SavedFile.__dataclass_fields__)
    found: dict[str, list[SavedFile]] = {}
    for r in conn.execute(
        f"SELECT task_id, {names} FROM files WHERE task_id = ANY(%s) ORDER BY id", (task_ids,)
    ):
        found.setdefault(r[0], []).append(SavedFile(*tuple(r)[1:]))
    return found


_FINISH = (
    "UPDATE deliveries SET state = %s, next_attempt_at = %s, last_error = %s, updated_at = %s,"
    " claimed_by = NULL, lease_expires_at = NULL"
    " WHERE id = %s AND state = 'running' AND claimed_by = %s"
)
_FINISH_ATTEMPT = _FINISH + " AND attempts = %s"
_UPSERT_FILE = (
    f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({_marks(len(FILE_COLUMNS))})"
    + UPSERT_FILE_SET
)


def finish(op: Finish, conn: psycopg.Connection[Any], replica: Replica) -> bool:
    """:class:`Finish` on Postgres: the outcome and its files (upserted by (task, url), as on
    SQLite) are stored only while ``replica`` holds the claim of ``op.attempt`` (of any
    attempt when it is None); otherwise nothing is."""
    o = op.outcome
    error = None if o.state is DeliveryState.DONE else o.last_error
    args = (o.state, o.next_attempt_at, error, op.now_ms, op.delivery_id, replica.replica_id)
    if op.attempt is None:
        cur = conn.execute(_FINISH, args)
    else:
        cur = conn.execute(_FINISH_ATTEMPT, (*args, op.attempt))
    if cur.rowcount and o.files:
        conn.cursor().executemany(
            _UPSERT_FILE,
            [(op.task_id, op.delivery_id, *astuple(f), op.now_ms) for f in o.files],
        )
    return cur.rowcount == 1


#: Running rows whose lease ran out (or that have none): any replica may release them.
_EXPIRED = "state = 'running' AND COALESCE(lease_expires_at, 0) <= %(now)s"
#: Running rows that are the recovering replica's to take back at start: expired, or claimed
#: under the recovering replica's own name.
_RECOVERABLE = (
    "state = 'running' AND (COALESCE(lease_expires_at, 0) <= %(now)s OR claimed_by = %(replica)s)"
)
_RELEASE_DEAD = (
    "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, last_error = %(error)s,"
    " updated_at = %(now)s, claimed_by = NULL, lease_expires_at = NULL"
    " WHERE {rows} AND plugin = %(plugin)s AND attempts >= %(allowed)s"
)
_RELEASE_DUE = (
    "UPDATE deliveries SET state = 'failed', next_attempt_at = %(now)s, last_error = %(error)s,"
    " updated_at = %(now)s, claimed_by = NULL, lease_expires_at = NULL WHERE {rows}"
)


def _release(
    conn: psycopg.Connection[Any],
    rows: str,
    op: Recover | ExpireLeases,
    replica: Replica,
) -> int:
    """Make the running deliveries that ``rows`` matches due at ``op.now_ms`` (``dead``
    after the plugin's last attempt, SQLite's rule), with ``op.reason``; how many."""
    base = {"now": op.now_ms, "replica": replica.replica_id}
    dead = 0
    for plugin, allowed in op.attempts_allowed.items():
        error = f"{op.reason} (its last attempt)"
        args = {**base, "error": error, "plugin": plugin, "allowed": allowed}
        dead += conn.execute(_RELEASE_DEAD.format(rows=rows), args).rowcount
    due = conn.execute(_RELEASE_DUE.format(rows=rows), {**base, "error": op.reason})
    return dead + due.rowcount


def recover(op: Recover, conn: psycopg.Connection[Any], replica: Replica) -> int:
    """:class:`Recover` on Postgres: the running deliveries whose lease expired by
    ``now_ms``, and those claimed under ``replica``'s own name, become due at ``now_ms``,
    their interrupted attempt counted; ``dead`` when it was the plugin's last. Returns how
    many were recovered."""
    return _release(conn, _RECOVERABLE, op, replica)


@dataclass(frozen=True)
class ExpireLeases(DeliveryOp[int]):
    """The periodic sweep, on Postgres only: running deliveries whose lease has expired by
    ``now_ms`` (or that have none), whoever claimed them, become due at ``now_ms``, their
    attempt counted; ``dead`` when it was the plugin's last. Claims whose lease holds are
    untouched, this replica's included (unlike :class:`Recover`, which is for start-up).

    Args:
        now_ms: The time they become due, and the time leases are compared with.
        attempts_allowed: Per plugin, ``1 + len(retry_schedule_s)``, as for Recover.

    Returns:
        How many deliveries were released (made due or dead).
    """

    now_ms: int
    attempts_allowed: dict[str, int] = field(default_factory=dict)
    reason: str = "lease expired: the replica that claimed this attempt gave no outcome in time"

    def apply(self, conn: sqlite3.Connection) -> int:
        raise StoreUnavailable("ExpireLeases runs on Postgres only (SQLite has no leases)")


def expire_leases(op: ExpireLeases, conn: psycopg.Connection[Any], replica: Replica) -> int:
    """:class:`ExpireLeases`: release the running deliveries whose lease expired."""
    return _release(conn, _EXPIRED, op, replica)


def redeliver(op: Redeliver, conn: psycopg.Connection[Any], replica: Replica) -> int:
    """:class:`Redeliver` on Postgres: the same delivery or filter, the same errors (the
    statement and the checks are the operation's own)."""
    if op.delivery_id is not None:
        op.check_found(conn.execute(Redeliver.FIND_SQL.format(m="%s"), (op.delivery_id,)))
    sql, args = op.update_sql("%s")
    return conn.execute(sql, args).rowcount


#: ``run(op, conn, replica)`` of each delivery operation, by its type.
DELIVERY_OPS: dict[type, Callable[[Any, psycopg.Connection[Any], Replica], Any]] = {
    Claim: claim,
    Finish: finish,
    Recover: recover,
    Redeliver: redeliver,
    ExpireLeases: expire_leases,
}
