"""What the HTTP handlers share: settings, plugins, credentials, writer, reader, dispatcher, clock.

Built by ``receiver.app`` at start-up (inside the lifespan, where the database is opened) and
passed to the handlers; no module-level state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from receiver.config import Settings
from receiver.credentials import Credentials
from receiver.dispatcher import Dispatcher
from receiver.plugins.registry import LoadedPlugin
from receiver.store import Reader
from receiver.writer import Writer


def now_ms() -> int:
    """The wall clock, Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass
class Runtime:
    """Filled in by the lifespan; handlers read it. ``ready`` is set once everything runs."""

    settings: Settings
    clock_ms: Callable[[], int] = now_ms
    plugins: list[LoadedPlugin] = field(default_factory=list)
    credentials: Credentials | None = None
    writer: Writer | None = None
    reader: Reader | None = None
    dispatcher: Dispatcher | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
