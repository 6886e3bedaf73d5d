"""The SQLite store: every statement of SQL in kling-hooks lives in this package.

* ``database``: the lock that makes one process the owner, connections (WAL,
  ``synchronous=FULL``), migrations, the ``meta`` table;
* ``rows``: the one mapping between rows and the shapes of ``receiver.models``;
* ``batches``: the bulk writes of one group-commit batch (tasks, transitions, callbacks,
  outbox rows);
* ``transaction``: the transaction a batch runs in, and the protocol of write operations;
* ``deliveries``: the outbox operations (claim, finish, recover, replay);
* ``pool``: the status API's read connections (a few, each on a thread of its own);
* ``reads``: the status API's read-only queries, and their protocol for either backend
  (``StatusReads``);
* ``dashboard``: the dashboard's read-only queries (files by id, the overview's counts), and
  their protocol (``DashboardReads``);
* ``retention``: pruning old rows in small batches, and giving free pages back (``prune``);
* ``probe``: the write probe of ``GET /readyz`` while the last commit failed;
* ``backup``: an online copy with SQLite's backup API (``kling-hooks backup``).

A second backend (Postgres) is a second package behind the same names; nothing outside this
package writes SQL. What every backend keeps is listed in DESIGN.md ("What every storage
backend must keep").
"""

from receiver.errors import StoreUnavailable
from receiver.store.batches import Router
from receiver.store.dashboard import DashboardReader, DashboardReads
from receiver.store.database import (
    SCHEMA_VERSION,
    DatabaseLock,
    check_schema,
    connect,
    connect_writer,
    get_or_create_meta,
    migrate,
)
from receiver.store.pool import ReadPool
from receiver.store.probe import WriteProbe
from receiver.store.reads import Reader, StatusReads
from receiver.store.transaction import ConnectionOp, Transaction, WriteOp

__all__ = [
    "SCHEMA_VERSION",
    "ConnectionOp",
    "DashboardReader",
    "DashboardReads",
    "DatabaseLock",
    "ReadPool",
    "Reader",
    "Router",
    "StatusReads",
    "StoreUnavailable",
    "Transaction",
    "WriteOp",
    "WriteProbe",
    "check_schema",
    "connect",
    "connect_writer",
    "get_or_create_meta",
    "migrate",
]
