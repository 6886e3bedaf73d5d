"""Every exception the receiver raises on purpose, under one base.

Hierarchy::

    ReceiverError
    ├── ConfigError              a setting or plugin table is wrong; start-up stops (exit 2)
    ├── StoreUnavailable         the database could not commit or answer (503, Retry-After)
    │   ├── SchemaTooNew         the database is newer than this program (serve stops, exit 1)
    │   └── NotADatabase         the file is not a SQLite database (serve stops, exit 1)
    ├── BackupError              ``kling-hooks backup`` could not make a sound copy (exit 1)
    ├── DatabaseLocked           another process owns the database (serve stops, exit 1)
    ├── MigrateStoreError        ``kling-hooks migrate-store`` refused, or its copy stopped (exit 1)
    ├── TaskConflict             task_id and external_task_id name two tasks (409)
    ├── BodyTooLarge             a request body is over KLING_HOOKS_MAX_BODY_BYTES (413)
    ├── Refused                  a request the HTTP API refuses, with its status
    │   ├── NotJSON              a body that is not JSON (400)
    │   └── NotATask             JSON that is not a Kling task object (422)
    ├── ApiError                 the status API answered an error (receiver.status_client)
    ├── DeliveryError            a replay that cannot be done
    │   ├── DeliveryNotFound     no delivery has that id (404)
    │   ├── DeliveryRunning      it is running now (409)
    │   └── PluginNotLoaded      its plugin is not loaded (409)
    └── PluginError              raised by a plugin's handler (receiver.plugins)
        ├── RetryAfter           retry no earlier than a delay
        ├── PermanentError       no retry can help: dead at once
        └── DownloadError, SlackError, WebhookError   the built-in plugins' own

The status codes are those the HTTP edge answers (``receiver.callbacks``, ``receiver.api``).
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every exception the receiver raises on purpose."""


class ConfigError(ReceiverError):
    """A setting is missing or wrong; the message names the variable."""


class StoreUnavailable(ReceiverError):
    """The database could not commit or answer; nothing of the operation was recorded."""


class SchemaTooNew(StoreUnavailable):
    """The database's schema version is above the one this program knows: a newer release
    wrote it, and this one must not guess what its tables mean."""


class NotADatabase(StoreUnavailable):
    """The file named as the database is not a SQLite database (SQLite's ``SQLITE_NOTADB``:
    another file, or one encrypted or damaged beyond its header); nothing was changed."""


class BackupError(ReceiverError):
    """A backup was refused (the target exists or is the live database, the source is missing
    or not a database, the target's file system has no hard links) or its copy failed
    ``PRAGMA integrity_check``; no file was left at the target."""


class DatabaseLocked(ReceiverError):
    """Another process holds the database's lock: one process owns a database."""


class ReplicaInUse(ReceiverError):
    """A running replica of the same Postgres database holds this replica id
    (``KLING_HOOKS_REPLICA_ID``, the host name by default)."""


class MigrateStoreError(ReceiverError):
    """``kling-hooks migrate-store`` refused to copy (the SQLite file is missing, not a
    kling-hooks database, of an older schema or owned by a running receiver; the Postgres
    server cannot be reached; the Postgres database holds rows that did not come from this
    source as it is now), or its copy stopped on a database error (the batches committed
    stay, and a second run goes on); the message says which, and what to do."""


class TaskConflict(ReceiverError):
    """The task_id and external_task_id given belong to two different tasks."""


class BodyTooLarge(ReceiverError):
    """A request body is over the limit (``Content-Length`` or the bytes received)."""


class Refused(ReceiverError):
    """A request the HTTP API refuses: answered ``status`` with ``message`` in the error shape.

    Args:
        message: The error text, naming the bad value and the rule.
        status: The HTTP status; subclasses set a default.
    """

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NotJSON(Refused):
    """The body is not JSON (answered 400)."""

    status = 400


class NotATask(Refused):
    """The body is JSON but not a Kling task object (answered 422)."""

    status = 422


class DeliveryError(ReceiverError):
    """Base of the reasons a replay of one delivery cannot be done."""


class DeliveryNotFound(DeliveryError):
    """No delivery has that id (answered 404)."""


class DeliveryRunning(DeliveryError):
    """The delivery is running now and cannot be replayed until it ends (answered 409)."""


class PluginNotLoaded(DeliveryError):
    """The delivery's plugin is not loaded, so a replay could not run (answered 409)."""
