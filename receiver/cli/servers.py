"""The commands that run servers until stopped: ``serve`` (the receiver), ``simulate`` (the
Kling simulator) and ``demo`` (both, with a Slack sink, for one task per route)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
from pathlib import Path

import click
import structlog

from receiver.cli.options import ANY_PATH, EXIT_OK, F, load, settings_options
from receiver.logging import configure_logging
from submitter.providers import PROVIDERS

log = structlog.get_logger("kling_hooks.serve")


@click.command()
@click.option(
    "--host", show_default="KLING_HOOKS_HOST, else 127.0.0.1", help="address to listen on"
)
@click.option(
    "--port", type=int, show_default="KLING_HOOKS_PORT, else 8000", help="TCP port (0: any free)"
)
@click.option(
    "--fd",
    type=int,
    show_default="systemd's LISTEN_FDS, else none",
    help="serve on this inherited listening socket instead of --host/--port",
)
@click.option(
    "--plugins-dir",
    type=ANY_PATH,
    show_default="KLING_HOOKS_PLUGINS_DIR, else none",
    help="directory of single-file plugins",
)
@settings_options
def serve(
    host: str | None,
    port: int | None,
    fd: int | None,
    plugins_dir: Path | None,
    config: Path | None,
    db: Path | None,
) -> int:
    """Run the receiver (callbacks + status API) under uvicorn.

    Its store is the SQLite file of --db / KLING_HOOKS_DB, or the Postgres database of
    KLING_HOOKS_DATABASE_URL, which several replicas may share (each with its own
    KLING_HOOKS_REPLICA_ID).

    It listens on an inherited socket when it has one (--fd N, else systemd's LISTEN_FDS
    when LISTEN_PID is this process), otherwise on --host:--port.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from receiver.activation import inherited_sockets
    from receiver.app import create_app
    from receiver.serving import Server, receiver_options
    from receiver.store import DatabaseLock, check_schema

    settings = load(
        config,
        db,
        quiet=False,
        kling_hooks_plugins_dir=plugins_dir,
        kling_hooks_host=host,
        kling_hooks_port=port,
    )
    inherited = inherited_sockets(fd, os.environ, os.getpid())  # before any child starts
    with contextlib.ExitStack() as owned:
        if settings.kling_hooks_database_url is None:  # Postgres: replicas share it, no lock
            owned.enter_context(DatabaseLock(settings.kling_hooks_db))  # a second serve stops
            check_schema(settings.kling_hooks_db)  # a newer release's database: one line
        else:  # unreachable, a newer schema, its replica id taken: one line, exit 1
            from receiver.backends import replica_id
            from receiver.store.postgres import check_reachable

            url = settings.kling_hooks_database_url.get_secret_value()
            check_reachable(url, replica_id(settings))  # and no replica runs under its id
        server = Server(
            uvicorn.Config(
                create_app(settings, database_locked=True, on_started=_freeze_start_up),
                host=settings.kling_hooks_host,
                port=settings.kling_hooks_port,
                log_level=settings.kling_hooks_log_level,
                **receiver_options(settings),
            )
        )
        for sock in inherited.sockets:  # uvicorn logs its own address only when it binds
            log.info("listening", address=_address(sock), fd=sock.fileno(), via=inherited.source)
        server.run(sockets=inherited.sockets or None)
    if not server.started:  # as uvicorn.run does: start-up did not finish
        sys.exit(STARTUP_FAILURE)
    return EXIT_OK


def _freeze_start_up(_services: object) -> None:
    """Once the receiver runs: what start-up made (modules, the models' validators, settings,
    plugins) lives as long as the process, so the cyclic garbage collector stops scanning it
    (``gc.freeze``); each collection then walks only what requests made."""
    gc.collect()
    gc.freeze()


def _address(sock: socket.socket) -> str:
    """``host:port`` (``[v6]:port``) of a TCP socket, the path of a Unix socket."""
    name = sock.getsockname()
    if isinstance(name, tuple):
        host, port = name[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)


_FAULT_RATES = {
    "failure_rate": "share of tasks that fail",
    "duplicate_rate": "share of callbacks sent twice",
    "reorder_rate": "share of tasks whose callbacks arrive newest first",
    "envelope_rate": "share of callbacks wrapped in {code, message, data}",
    "old_schema_rate": "share of callbacks without task_info and final_unit_deduction",
    "drop_nonterminal_rate": "share of non-terminal callbacks never sent",
}


def fault_options(f: F) -> F:
    """One ``--NAME-rate`` option, a share in [0, 1], per rate of ``Faults``."""
    for name, help_ in reversed(_FAULT_RATES.items()):
        option = click.option(
            f"--{name.replace('_', '-')}",
            type=click.FloatRange(0, 1),
            default=0.0,
            help=help_,
        )
        f = option(f)
    return f


@click.command()
@click.option("--host", default="127.0.0.1", help="address to listen on")
@click.option("--port", type=int, default=9000, help="TCP port (0: any free port)")
@click.option(
    "--provider",
    type=click.Choice(sorted(PROVIDERS)),
    default="official",
    help="whose paths and body rules to serve (submitter.providers)",
)
@click.option(
    "--prefix", show_default="the provider's", help="route prefix, e.g. /kling like a reseller"
)
@click.option("--api-key", show_default="any key", help="accept only this bearer key")
@click.option("--seed", type=int, show_default="random", help="makes runs repeatable")
@click.option("--min-delay", type=float, default=0.5, help="least seconds between states")
@click.option("--max-delay", type=float, default=2.0, help="most seconds between states")
@fault_options
def simulate(
    host: str,
    port: int,
    provider: str,
    prefix: str | None,
    api_key: str | None,
    seed: int | None,
    min_delay: float,
    max_delay: float,
    failure_rate: float,
    duplicate_rate: float,
    reorder_rate: float,
    envelope_rate: float,
    old_schema_rate: float,
    drop_nonterminal_rate: float,
) -> int:
    """Run the Kling simulator (no account, no credits)."""
    import uvicorn

    from submitter.simulator import Faults, Simulator

    configure_logging("auto", "info")
    faults = Faults(
        failure_rate=failure_rate,
        duplicate_rate=duplicate_rate,
        reorder_rate=reorder_rate,
        envelope_rate=envelope_rate,
        old_schema_rate=old_schema_rate,
        drop_nonterminal_rate=drop_nonterminal_rate,
    )
    sim = Simulator(
        faults=faults,
        provider=PROVIDERS[provider],
        prefix=prefix,
        delay_s=(min_delay, max_delay),
        api_key=api_key,
        seed=seed,
    )
    uvicorn.run(sim.app, host=host, port=port, access_log=False, log_config=None)
    return EXIT_OK


@click.command()
@click.option(
    "--dir",
    "directory",
    type=ANY_PATH,
    show_default="a new temporary directory",
    help="where the database and downloads go",
)
@click.option("--seed", type=int, default=1, help="simulator seed (which tasks fail)")
@click.option(
    "--serve",
    is_flag=True,
    help="then keep the servers running and print a signed-in dashboard link, until Ctrl-C",
)
def demo(directory: Path | None, seed: int, serve: bool) -> int:
    """Run the whole pipeline in one process: one task per route.

    Simulator + receiver + downloader + a Slack sink, on loopback, with no Kling account.
    With --serve, the receiver and the simulator keep running afterwards, and the dashboard
    (/ui/) opens signed in from the printed link; Ctrl-C stops them (exit 0).
    """
    from receiver.demo import run_demo

    try:
        return asyncio.run(run_demo(seed=seed, directory=directory, serve=serve))
    except KeyboardInterrupt:
        if not serve:
            raise
        return EXIT_OK
