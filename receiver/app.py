"""Wiring: settings + plugins + database + writer + dispatcher + routes -> a Starlette app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from receiver import credentials, store
from receiver.api import api_routes
from receiver.config import Settings
from receiver.dispatcher import Dispatcher, make_router
from receiver.plugins.registry import LoadedPlugin, load_plugins
from receiver.responses import http_exception, internal_error
from receiver.routes import callback_routes
from receiver.runtime import Runtime
from receiver.writer import Writer

log = structlog.get_logger("kling_hooks.app")


def create_app(
    settings: Settings,
    runtime: Runtime | None = None,
    plugins: Sequence[LoadedPlugin] | None = None,
) -> Starlette:
    """The receiver's ASGI app. The database is opened (and migrated) by its lifespan.

    Args:
        settings: The settings (``receiver.config.load_settings``).
        runtime: Pass one to reach the writer, reader and dispatcher from outside (tests, the
            demo); by default a new one is made.
        plugins: The plugins to deliver to; by default those enabled in ``settings.plugins``
            (the config file's ``[plugins.NAME]`` tables), found by
            :func:`receiver.plugins.registry.load_plugins`.

    Raises:
        ConfigError: a plugin table names no installed plugin or has a bad value.
    """
    if plugins is None:
        plugins = load_plugins(settings.plugins, settings.kling_hooks_plugins_dir)
    rt = runtime or Runtime(settings=settings)
    rt.plugins = list(plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = settings.kling_hooks_db
        writer = await Writer.open(
            db, busy_timeout_ms=settings.kling_hooks_busy_timeout_ms, router=make_router(rt.plugins)
        )
        reader_conn = await store.connect(db, read_only=True)
        dispatcher = Dispatcher(
            writer,
            rt.plugins,
            clock_ms=rt.clock_ms,
            grace_s=settings.kling_hooks_shutdown_grace_s,
        )
        try:
            creds = await credentials.resolve(settings, writer.connection)
            rt.credentials = creds
            rt.writer, rt.reader = writer, store.Reader(reader_conn)
            if creds.api_token_generated:
                log.warning("api_token_generated", how_to_read=f"kling-hooks token --db {db}")
            writer.start()
            writer.add_listener(lambda _transitions: dispatcher.wake())
            await dispatcher.start()
            rt.dispatcher = dispatcher
            rt.ready.set()
            log.info(
                "receiver_started",
                db=str(db),
                public_url=settings.kling_hooks_public_url,
                plugins=[p.name for p in rt.plugins],
            )
            yield
        finally:
            rt.ready.clear()
            await dispatcher.close()
            await writer.close()
            await reader_conn.close()
            log.info("receiver_stopped")

    return Starlette(
        routes=[*callback_routes(rt), *api_routes(rt)],
        exception_handlers={HTTPException: http_exception, Exception: internal_error},
        lifespan=lifespan,
    )
