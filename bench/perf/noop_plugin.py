"""A no-op kling-hooks plugin for the fan-out figures: a single file for ``--plugins-dir``.

Its name is its file's name (``noop.py`` is plugin ``noop``), so the harness can enable the
same plugin under several names by copying the file. Each handler records
``(task_id, time.time())`` as its first step, in memory, and returns (the delivery is
``done``); :meth:`Noop.stop` writes them to ``starts_file``, one ``task_id<TAB>Unix seconds``
line each. Its table::

    [plugins.noop]
    starts_file = "/tmp/run/noop-starts.tsv"
"""

from __future__ import annotations

import time
from pathlib import Path

from receiver.plugins import Event, Plugin, PluginSettings

#: The ``concurrency`` the harness gives it: a handler that does no I/O can run many at once
#: (the default, 4, suits plugins that call a remote service); bench/README.md says why.
CONCURRENCY = 64


class NoopSettings(PluginSettings):
    """The plugin's table: the common keys and ``starts_file`` (where :meth:`Noop.stop`
    writes the handler start times)."""

    starts_file: Path
    #: Refuse to start (the receiver leaves the plugin out, and its deliveries stay
    #: ``pending``): the harness fills a backlog this way, then drains it in a second run.
    refuse_start: bool = False


class Noop(Plugin):
    """Does nothing but note when each of its handlers started (wall clock, Unix seconds)."""

    # The registry loads a plugins-dir file as module ``kling_hooks_local_plugins.<stem>``.
    name = __name__.rpartition(".")[2]
    version = "1.0.0"
    settings_model = NoopSettings
    settings: NoopSettings

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        self._starts: list[tuple[str, float]] = []

    async def start(self) -> None:
        """Raises RuntimeError when ``refuse_start`` is set."""
        if self.settings.refuse_start:
            raise RuntimeError("refuse_start = true: this run only fills the outbox")

    async def handle(self, event: Event) -> None:
        """Record the start time; nothing else."""
        self._starts.append((event.task_id, time.time()))

    async def stop(self) -> None:
        """Write every recorded start to ``starts_file``."""
        lines = "".join(f"{task_id}\t{started:.6f}\n" for task_id, started in self._starts)
        self.settings.starts_file.write_text(lines)


plugin = Noop
