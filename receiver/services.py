"""What the HTTP handlers share, built complete before the first request.

``receiver.app``'s lifespan opens the database, starts the writer and the dispatcher, and
yields one :class:`Services` as Starlette's lifespan state; a handler reaches it with
:func:`services`. No field is ever missing, and there is no module-level state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Scope

from receiver.config import Settings
from receiver.credentials import Credentials
from receiver.dispatcher import Dispatcher
from receiver.errors import PluginNotLoaded
from receiver.feed import LiveFeed
from receiver.metrics import Metrics
from receiver.models import DeliveryState
from receiver.plugins.registry import LoadedPlugin
from receiver.store import DashboardReads, StatusReads
from receiver.store.deliveries import Redeliver
from receiver.writer import Writer


@dataclass(frozen=True)
class Services:
    """The running receiver's parts.

    Attributes:
        clock_ms: The wall clock, Unix epoch ms.
        metrics: This receiver's Prometheus metrics (``GET /metrics``).
        reader: The status API's reads, on either backend (:class:`StatusReads`).
        dashboard: The dashboard's reads (``receiver.ui``), on the status API's connections.
        feed: Which tasks just changed, for the dashboard's live updates.
    """

    settings: Settings
    plugins: tuple[LoadedPlugin, ...]
    credentials: Credentials
    writer: Writer
    reader: StatusReads
    dispatcher: Dispatcher
    clock_ms: Callable[[], int]
    metrics: Metrics
    dashboard: DashboardReads
    feed: LiveFeed

    def started_plugins(self) -> frozenset[str]:
        """The plugins that can run a delivery now: enabled, and their ``start()`` succeeded."""
        return frozenset(p.name for p in self.plugins if self.dispatcher.is_started(p.name))

    async def replay(
        self,
        *,
        delivery_id: int | None = None,
        state: DeliveryState | None = None,
        plugin: str | None = None,
        since_ms: int | None = None,
    ) -> int:
        """Replay one delivery (``delivery_id``) or every one matching the filter, through the
        writer (:class:`~receiver.store.deliveries.Redeliver`), then wake the dispatcher and
        the live feed. The one way to replay: ``POST /deliveries/{id}/redeliver``, ``POST
        /deliveries/redeliver`` and the dashboard's Replay buttons all call it.

        Returns:
            How many deliveries are due again.

        Raises:
            DeliveryNotFound: ``delivery_id`` names no delivery.
            DeliveryRunning: ``delivery_id`` is running now.
            PluginNotLoaded: the delivery's plugin, or the filter's ``plugin``, is not loaded
                (not enabled, or its ``start()`` failed).
            StoreUnavailable: the database did not commit.
        """
        loaded = self.started_plugins()
        if delivery_id is None and plugin is not None and plugin not in loaded:
            names = ", ".join(sorted(loaded)) or "none"
            raise PluginNotLoaded(f"plugin={plugin!r} is not loaded (loaded: {names})")
        op = Redeliver(
            self.clock_ms(),
            delivery_id=delivery_id,
            state=state,
            plugin=plugin,
            since_ms=since_ms,
            loaded=loaded,
        )
        count = await self.writer.submit(op)
        self.dispatcher.wake()
        self.feed.changed()
        return count


def services(request: Request) -> Services:
    """The :class:`Services` of the app that serves ``request``.

    Raises:
        RuntimeError: the app was built without ``receiver.app.create_app``'s lifespan.
    """
    return services_of(request.scope)


def services_of(scope: Scope) -> Services:
    """The :class:`Services` in an HTTP scope's lifespan state (what :func:`services` reads;
    for pure ASGI handlers, which have no ``Request``).

    Raises:
        RuntimeError: the app was built without ``receiver.app.create_app``'s lifespan.
    """
    found = scope.get("state", {}).get("services")
    if not isinstance(found, Services):
        raise RuntimeError("no Services in the lifespan state: build the app with create_app")
    return found
