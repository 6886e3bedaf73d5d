"""structlog set-up: JSON lines in production, readable lines in a terminal.

``auto`` picks the console renderer when stderr is a terminal, JSON otherwise (systemd's
journal, containers). uvicorn's own (stdlib) log records go through the same renderer, so a
production log is JSON from end to end. Secrets are never passed to the logger by our code:
callback tokens, bearer tokens, Kling keys and plugin secrets (a Slack webhook URL) stay out of
every event; uvicorn's access log is off unless ``KLING_HOOKS_ACCESS_LOG`` turns it on, and
then a callback URL's token is masked in it (``/callbacks/EXT/***``); httpx's and httpcore's
loggers (which would print request URLs) pass only warnings and errors.

Volume: an accepted callback and a done delivery are one line each at debug level only; info
carries lifecycle events and warnings carry every refusal (bench/README.md measures what a line
per callback costs).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from submitter.tokens import CALLBACK_PATH


class MaskCallbackTokens(logging.Filter):
    """On uvicorn's access log: a callback path's last segment (its token) becomes ``***``.

    uvicorn's access records carry ``(client, method, path, http_version, status)`` as
    ``args``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path = args[2]
            if path.startswith(CALLBACK_PATH + "/"):
                record.args = (
                    *args[:2],
                    path.split("?", 1)[0].rsplit("/", 1)[0] + "/***",
                    *args[3:],
                )
        return True


def configure_logging(
    log_format: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    """Configure structlog and the stdlib root logger for this process.

    Args:
        log_format: ``json``, ``console``, or ``auto`` (console on a terminal).
        level: ``debug``, ``info``, ``warning`` or ``error``.
    """
    numeric = logging.getLevelNamesMapping()[level.upper()]
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        # Plain tracebacks: rich's (when rich is installed) print every frame's local
        # variables, and those hold secrets (the callback secret, tokens, a Slack URL).
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            # uvicorn's records carry exc_info: rendered as text, as for our own lines (JSON
            # would print "<traceback object at ...>").
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, MaskCallbackTokens) for f in access.filters):
        access.addFilter(MaskCallbackTokens())
    # httpx logs every request ("HTTP Request: POST <url> ...") at INFO, and httpcore traces
    # at DEBUG: request URLs can be secrets (a Slack webhook URL), so only warnings pass.
    # aiosqlite logs every statement with its parameters at DEBUG (callback bodies, and the
    # meta table's generated secrets): only warnings pass.
    for name in ("httpx", "httpcore", "aiosqlite"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
