"""Wiring: settings + plugins + database + writer + dispatcher + routes -> a Starlette app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Scope

from receiver import store
from receiver.api import API_ROUTES
from receiver.backends import open_store, store_label
from receiver.callbacks import CALLBACK_ROUTES, CallbackFastPath
from receiver.config import Settings
from receiver.dispatcher import Dispatcher
from receiver.fanout import make_router
from receiver.feed import LiveFeed
from receiver.limits import InFlightLimit
from receiver.metrics import Metrics, Rejection
from receiver.plugins.registry import LoadedPlugin, load_plugins
from receiver.request_ids import RequestIds, choose_request_id
from receiver.responses import http_exception, internal_error
from receiver.services import Services
from receiver.ui import dashboard_routes
from submitter.protocol import now_ms
from submitter.tokens import CALLBACK_PATH

log = structlog.get_logger("kling_hooks.app")

#: Called with the running receiver's parts once start-up is complete (tests, the demo).
StartedHook = Callable[[Services], None]


@contextlib.asynccontextmanager
async def open_services(
    settings: Settings,
    plugins: Sequence[LoadedPlugin],
    clock_ms: Callable[[], int],
    *,
    locked: bool = False,
) -> AsyncIterator[Services]:
    """Take the database's lock (SQLite's: on Postgres, replicas share the database), open
    it, start the writer and the dispatcher, yield them; stop them after.

    Args:
        locked: The caller holds the database's lock already (``serve`` takes it before
            uvicorn starts, so that a second one stops with one line).

    Raises:
        DatabaseLocked: another process owns the database; nothing was opened.
        StoreUnavailable: the database cannot be opened, reached, migrated or recovered.
    """
    if settings.kling_hooks_database_url is not None:
        async with _started(settings, plugins, clock_ms) as services:
            yield services
        return
    lock = store.DatabaseLock(settings.kling_hooks_db)
    if not locked:
        lock.acquire()  # before any migration or recovery
    try:
        async with _started(settings, plugins, clock_ms) as services:
            yield services
    finally:
        lock.release()


@contextlib.asynccontextmanager
async def _started(
    settings: Settings, plugins: Sequence[LoadedPlugin], clock_ms: Callable[[], int]
) -> AsyncIterator[Services]:
    async with open_store(settings, plugins, make_router(plugins)) as opened:
        writer = opened.writer
        dispatcher = Dispatcher(
            writer,
            plugins,
            clock_ms=clock_ms,
            grace_s=settings.kling_hooks_shutdown_grace_s,
            log_done=settings.kling_hooks_log_level == "debug",
            sweep=opened.sweep,
        )
        metrics = Metrics(
            db=opened.sqlite_path, plugins=[p.name for p in plugins], clock_ms=clock_ms
        )
        dispatcher.add_listener(metrics.delivery_finished)
        feed = LiveFeed()
        if opened.credentials.api_token_generated:
            log.warning("api_token_generated", how_to_read=_how_to_read_token(settings))
        async with contextlib.AsyncExitStack() as running:
            writer.start()
            writer.add_listener(lambda _transitions: dispatcher.wake())
            writer.add_listener(feed.on_commit)  # the dashboard's live updates
            writer.add_callback_listener(feed.on_callbacks)
            dispatcher.add_listener(feed.on_outcome)
            running.callback(feed.close)
            running.push_async_callback(dispatcher.close)
            if opened.listen is not None:  # other replicas' new deliveries, retries, leases
                await running.enter_async_context(opened.listen(dispatcher.wake_at))
            await dispatcher.start()
            yield Services(
                settings=settings,
                plugins=tuple(plugins),
                credentials=opened.credentials,
                writer=writer,
                reader=opened.reader,
                dispatcher=dispatcher,
                clock_ms=clock_ms,
                metrics=metrics,
                dashboard=opened.dashboard,
                feed=feed,
            )


def _how_to_read_token(settings: Settings) -> str:
    """The command that prints the API token the receiver just generated."""
    if settings.kling_hooks_database_url is not None:
        return "kling-hooks token (with the same KLING_HOOKS_DATABASE_URL)"
    return f"kling-hooks token --db {settings.kling_hooks_db}"


def _count_overload(scope: Scope) -> None:
    """Count a callback refused by the in-flight limit (``reason="overloaded"``)."""
    found = scope.get("state", {}).get("services")
    if isinstance(found, Services) and scope["path"].startswith(CALLBACK_PATH + "/"):
        found.metrics.rejected(Rejection.OVERLOADED)


def create_app(
    settings: Settings,
    plugins: Sequence[LoadedPlugin] | None = None,
    *,
    clock_ms: Callable[[], int] = now_ms,
    on_started: StartedHook | None = None,
    database_locked: bool = False,
) -> ASGIApp:
    """The receiver's ASGI app: Starlette's, behind the in-flight limit and the callback
    fast path (``receiver.callbacks.CallbackFastPath``). The database is opened (and
    migrated) by its lifespan.

    Args:
        settings: The settings (``receiver.config.load_settings``).
        plugins: The plugins to deliver to; by default those enabled in ``settings.plugins``
            (the config file's ``[plugins.NAME]`` tables), found by
            :func:`receiver.plugins.registry.load_plugins`.
        clock_ms: The wall clock, Unix ms.
        on_started: Called with the :class:`~receiver.services.Services` once everything
            runs, before the first request is served.
        database_locked: The caller holds the database's lock
            (:class:`receiver.store.DatabaseLock`); otherwise the lifespan takes it.

    Raises:
        ConfigError: a plugin table names no installed plugin or has a bad value.
    """
    if plugins is None:
        plugins = load_plugins(
            settings.plugins, settings.kling_hooks_plugins_dir, base_dir=settings.config_dir
        )
    enabled = list(plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        async with open_services(settings, enabled, clock_ms, locked=database_locked) as services:
            log.info(
                "receiver_started",
                db=store_label(settings),
                public_url=settings.public_url,
                plugins=[p.name for p in enabled],
            )
            if on_started is not None:
                on_started(services)
            yield {"services": services}
        log.info("receiver_stopped")

    ui_routes = dashboard_routes() if settings.kling_hooks_ui else []
    app = Starlette(
        routes=[*CALLBACK_ROUTES, *API_ROUTES, *ui_routes],
        middleware=[Middleware(RequestIds)],
        exception_handlers={HTTPException: http_exception, Exception: internal_error},
        lifespan=lifespan,
    )
    # A path with a trailing slash is not ours: 404 as documented, not a 307 to a callback URL.
    app.router.redirect_slashes = False
    # A callback is handed to its endpoint before any of Starlette's layers; the limit on
    # requests in flight covers both.
    return InFlightLimit(
        CallbackFastPath(app),
        limit=settings.kling_hooks_max_in_flight,
        retry_after_s=settings.kling_hooks_retry_after_s,
        on_refused=_count_overload,
        request_id=choose_request_id,
    )
