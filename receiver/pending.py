"""One operation queued for the writer (``receiver.writer``): the operation, its caller's
future, and what it gave, set on the writer's thread and resolved on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import Any

from receiver.errors import StoreUnavailable
from receiver.store import ConnectionOp, WriteOp


def for_caller(exc: Exception) -> Exception:
    """``exc`` as an operation's caller gets it: a ``sqlite3.Error`` or a ``psycopg.Error``
    as :class:`~receiver.errors.StoreUnavailable`, naming it; anything else as it is."""
    # psycopg is imported only by the Postgres backend: with it unloaded, no psycopg.Error
    # can have been raised (SQLite's receivers never load it).
    psycopg = sys.modules.get("psycopg")
    if isinstance(exc, sqlite3.Error) or (psycopg is not None and isinstance(exc, psycopg.Error)):
        return StoreUnavailable(f"database error: {exc}")
    return exc


#: Per operation type: whether it is a ConnectionOp.
_ALONE: dict[type, bool] = {}


@dataclass(slots=True)
class Pending:
    """A queued operation, its caller's future, and what it gave (set before the commit)."""

    op: WriteOp[Any] | ConnectionOp[Any]
    future: asyncio.Future[Any]
    result: Any = None
    error: Exception | None = field(default=None)
    #: A ConnectionOp, run alone. Found once per type, by the method it has: ``isinstance``
    #: with a runtime-checkable Protocol costs about 8 µs, and this is the callback path.
    alone: bool = field(init=False)

    def __post_init__(self) -> None:
        kind = type(self.op)
        alone = _ALONE.get(kind)
        if alone is None:
            alone = _ALONE[kind] = callable(getattr(self.op, "run_alone", None))
        self.alone = alone

    def resolve(self) -> None:
        """Give the caller's future the result, or the error (on the event loop)."""
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)
