"""Which plugins a new transition goes to: the writer's router.

Decided inside the transition's own transaction (``receiver.store.batches``), so that the
outbox rows are written with it; the route known then decides (a task the submitter never
registered has none).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from receiver.plugins.registry import LoadedPlugin
from receiver.store import Router

log = structlog.get_logger("kling_hooks.fanout")


def make_router(plugins: Sequence[LoadedPlugin]) -> Router:
    """The writer's router: ``router(task_status, route)`` -> the names of the plugins whose
    :meth:`~receiver.plugins.Plugin.wants` is true, in ``plugins`` order.

    A ``wants`` that raises counts as false (and is logged): it must not fail a commit.
    """

    def route(task_status: str, route: str | None) -> list[str]:
        names = []
        for loaded in plugins:
            try:
                if loaded.plugin.wants(task_status, route):
                    names.append(loaded.name)
            except Exception:
                log.exception("plugin_wants_failed", plugin=loaded.name)
        return names

    return route
