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
from receiver.metrics import Metrics
from receiver.plugins.registry import LoadedPlugin
from receiver.store import Reader
from receiver.writer import Writer


@dataclass(frozen=True)
class Services:
    """The running receiver's parts.

    Attributes:
        clock_ms: The wall clock, Unix epoch ms.
        metrics: This receiver's Prometheus metrics (``GET /metrics``).
    """

    settings: Settings
    plugins: tuple[LoadedPlugin, ...]
    credentials: Credentials
    writer: Writer
    reader: Reader
    dispatcher: Dispatcher
    clock_ms: Callable[[], int]
    metrics: Metrics

    def started_plugins(self) -> frozenset[str]:
        """The plugins that can run a delivery now: enabled, and their ``start()`` succeeded."""
        return frozenset(p.name for p in self.plugins if self.dispatcher.is_started(p.name))


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
