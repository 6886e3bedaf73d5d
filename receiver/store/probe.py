"""The write probe: the smallest write that must reach the disk, for ``GET /readyz``.

While the writer's last commit failed (a full disk, a file that cannot be written, a lock held
by another process), readiness asks the database again with this operation rather than
trusting an old failure forever: it rewrites one ``meta`` row, so the commit appends a WAL
frame, exactly as a callback's would.
"""

from __future__ import annotations

from receiver.store.transaction import Transaction

#: The ``meta`` key the probe rewrites (its value: the probe's time, Unix ms).
PROBE_KEY = "write_probe_ms"


class WriteProbe:
    """A :class:`~receiver.store.WriteOp` that records ``at_ms`` under :data:`PROBE_KEY`.

    Args:
        at_ms: The probe's time, Unix epoch ms (a changing value, so the page really changes).
    """

    task_keys = None

    def __init__(self, at_ms: int) -> None:
        self.at_ms = at_ms

    def run(self, tx: Transaction) -> None:
        """Upsert the ``meta`` row; returns nothing."""
        tx.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PROBE_KEY, str(self.at_ms)),
        )
