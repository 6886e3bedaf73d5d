"""The ``kling-hooks`` command, on click: the group, its entry point and its exit codes.

Commands, by module: ``serve``, ``simulate``, ``demo`` (``servers``); ``submit``
(``submit``); ``tasks``, ``task``, ``deliveries``, ``redeliver``, ``plugins``, ``token``,
``secret`` (``status``); ``kling get``, ``kling list``, ``reconcile`` (``kling``); ``prune``,
``backup`` (``care``); ``migrate-store`` (``migrate``); ``config check``, ``config show``
(``config``). The options they share are defined once in ``options``.
``kling-hooks COMMAND --help`` shows each command's options with their defaults.

Exit codes: 0 success; 1 Kling or the receiver answered with an error (an unknown task or
delivery, a delivery running now), or could not be reached, or the database cannot be used
(owned by another process, newer than this program, not a database, a backup refused or
unsound, a ``migrate-store`` copy refused); 2 bad usage (an unknown option, a bad
``--since``, ``redeliver`` without an ID or ``--all``), a bad setting or plugin table, or a
body that breaks a documented Kling rule (nothing was sent); 3 ``submit`` created the task at
Kling but the receiver could not record it. Errors are one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import httpx

from receiver.cli import care, config, kling, migrate, servers, status, submit
from receiver.cli.options import CONTEXT_SETTINGS, EXIT_ERROR, EXIT_OK, EXIT_USAGE
from receiver.config import ConfigError
from receiver.errors import (
    BackupError,
    DatabaseLocked,
    MigrateStoreError,
    NotADatabase,
    ReplicaInUse,
    SchemaTooNew,
    StoreUnavailable,
)
from receiver.status_client import ApiError
from submitter.errors import AuthNotConfigured, InvalidRequest, SubmitterError

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "cli", "main"]


class _Group(click.Group):
    """The command group; a reader that goes away (``kling-hooks tasks | head``) ends the
    command quietly with exit 0, as it did before click."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        return result


@click.group(
    cls=_Group,
    context_settings=CONTEXT_SETTINGS,
    epilog="Exit codes: 0 ok; 1 Kling or the receiver answered an error, or could not be "
    "reached; 2 bad usage, a bad setting, or a body that breaks a Kling rule; 3 submit: the "
    "task was created, but the receiver could not record it.",
)
@click.version_option(package_name="kling-hooks", prog_name="kling-hooks")
def cli() -> None:
    """Receive Kling callbacks, store every task transition, submit tasks.

    Settings come from the environment (KLING_*) and --config FILE.
    """


for command in (
    servers.serve,
    submit.submit,
    status.tasks,
    status.task,
    status.deliveries,
    status.redeliver,
    status.plugins,
    status.token,
    status.secret,
    kling.kling,
    kling.reconcile,
    care.prune,
    care.backup,
    migrate.migrate_store,
    servers.simulate,
    servers.demo,
    config.config,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kling-hooks`` console script.

    Args:
        argv: The arguments after the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code (see the module docstring). Every error is printed as one line on
        stderr, never a traceback.
    """
    try:
        result = cli.main(
            args=None if argv is None else list(argv),
            prog_name="kling-hooks",
            standalone_mode=False,
        )
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `kling-hooks`: the help
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: exit 2
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except (ConfigError, AuthNotConfigured) as exc:  # a setting is missing or wrong
        click.echo(f"error: {exc}", err=True)
        return EXIT_USAGE
    except InvalidRequest as exc:
        click.echo(f"invalid request, nothing sent: {exc}", err=True)
        return EXIT_USAGE
    except SubmitterError as exc:
        _print_submitter_error(exc)
        return EXIT_ERROR
    except (
        ApiError,
        DatabaseLocked,
        SchemaTooNew,
        NotADatabase,
        BackupError,
        StoreUnavailable,
        MigrateStoreError,
        ReplicaInUse,
        httpx.HTTPError,
    ) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except (click.Abort, KeyboardInterrupt):
        return 130
    return result if isinstance(result, int) else EXIT_OK


def _print_submitter_error(exc: SubmitterError) -> None:
    """``error: ...``, then Kling's fields (``http_status``, ``code``, ``message``,
    ``request_id``) as one JSON line when the error has them."""
    fields = {
        k: getattr(exc, k)
        for k in ("http_status", "code", "message", "request_id")
        if hasattr(exc, k)
    }
    click.echo(f"error: {exc}", err=True)
    if fields:
        click.echo(json.dumps(fields), err=True)
