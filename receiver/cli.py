"""The ``kling-hooks`` command.

Subcommands: ``serve``, ``submit``, ``tasks``, ``task``, ``deliveries``, ``redeliver``,
``plugins``, ``token``, ``simulate``, ``demo``.
Exit codes: 0 success; 1 Kling or the receiver answered with an error (an unknown task or
delivery, a delivery running now), or could not be reached; 2 bad usage (a bad ``--since``,
``redeliver`` without an ID or ``--all``), a bad setting or plugin table, or a body that
breaks a documented Kling rule (nothing was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from receiver import credentials
from receiver.config import ConfigError, Settings, load_settings
from receiver.logging import configure_logging
from receiver.outbox import DeliveryState
from submitter.errors import InvalidRequest, SubmitterError
from submitter.protocol import Route as KlingRoute
from submitter.protocol import TaskStatus

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace, *, quiet: bool = True, **overrides: Any) -> Settings:
    """Load settings (``--db`` and ``overrides``, named like the settings, win) and set up
    logging; ``quiet`` commands log errors only."""
    settings = load_settings(args.config, kling_hooks_db=args.db, **overrides)
    level = settings.kling_hooks_log_level
    if quiet and level in ("debug", "info", "warning"):
        level = "error"  # the command prints its own warnings
    configure_logging(settings.kling_hooks_log_format, level)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app

    settings = _settings(args, quiet=False, kling_hooks_plugins_dir=args.plugins_dir)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level=settings.kling_hooks_log_level,
        log_config=None,
    )
    return EXIT_OK


def _read_data(value: str) -> dict[str, Any]:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("--data must be a JSON object")
    return data


async def _submit(args: argparse.Namespace) -> int:
    from submitter import KlingClient, Registrar, auth_from_keys, validate_body

    settings = _settings(args)
    try:
        body = _read_data(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read --data: {exc}", file=sys.stderr)
        return EXIT_USAGE
    validate_body(args.route, body)  # before anything else: a bad body sends nothing
    auth = auth_from_keys(
        settings.kling_api_key.get_secret_value() if settings.kling_api_key else None,
        settings.kling_access_key,
        settings.kling_secret_key.get_secret_value() if settings.kling_secret_key else None,
    )
    # A new database would hold a callback secret no receiver knows: every callback refused.
    creds = await credentials.resolve_from_file(settings, must_exist=True)
    registrar = Registrar(settings.api_url, creds.api_token)
    try:
        async with KlingClient(
            api_base=settings.kling_api_base,
            auth=auth,
            tokens=creds.tokens,
            public_url=settings.kling_hooks_public_url,
            registrar=registrar,
        ) as client:
            submission = await client.submit(args.route, body, args.external_task_id)
    finally:
        await registrar.aclose()
    if submission.warning:
        print(f"warning: {submission.warning}", file=sys.stderr)
    print(json.dumps(submission.to_json()))
    return EXIT_OK


async def _api(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """Call the status API at ``--url`` (default ``settings.api_url``) with the API token.

    Returns:
        The JSON answer.

    Raises:
        ApiError: the answer was not 200 (the message names the status and the error).
        httpx.HTTPError: the receiver could not be reached.
    """
    settings = _settings(args)
    token = await credentials.api_token_from_file(settings)
    base = args.url or settings.api_url
    async with httpx.AsyncClient(base_url=base, timeout=10.0) as client:
        response = await client.request(
            method,
            path,
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text[:200]
        raise ApiError(f"{base}{path}: HTTP {response.status_code}: {message}")
    return response.json()


class ApiError(Exception):
    """The status API answered with an error."""


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _cut(text: str | None, width: int) -> str | None:
    """``text`` shortened to ``width`` characters, ``...`` marking a cut."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def _query(**values: object) -> dict[str, str]:
    """Query parameters: the given values as text, leaving out None and empty ones."""
    return {k: str(v) for k, v in values.items() if v is not None and v != ""}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


async def _tasks(args: argparse.Namespace) -> int:
    params = _query(task_status=args.status, route=args.route, limit=args.limit, cursor=args.cursor)
    page = await _api(args, "GET", "/tasks", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    rows = [
        (t["task_id"], t["external_task_id"], t["route"], t["task_status"], _time(t["updated_at"]))
        for t in page["tasks"]
    ]
    print(format_table(["task_id", "external_task_id", "route", "task_status", "updated_at"], rows))
    if page["next_cursor"]:
        print(f"(more: --cursor {page['next_cursor']})")
    return EXIT_OK


async def _task(args: argparse.Namespace) -> int:
    task = await _api(args, "GET", f"/tasks/{args.id}")
    if args.json:
        print(json.dumps(task, indent=2))
        return EXIT_OK
    fields = [
        "task_id",
        "external_task_id",
        "route",
        "task_status",
        "task_status_msg",
        "final_unit_deduction",
    ]
    print(
        format_table(
            ["field", "value"],
            [(f, task[f]) for f in fields]
            + [
                ("created_at", _time(task["created_at"])),
                ("updated_at", _time(task["updated_at"])),
            ],
        )
    )
    for kind, items in (task["task_result"] or {}).items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "url" in item:
                print(f"{kind[:-1] if kind.endswith('s') else kind}: {item['url']}")
    print()
    print(
        format_table(
            ["transition", "updated_at", "received_at"],
            [
                (t["task_status"], _time(t["updated_at"]), _time(t["received_at"]))
                for t in task["transitions"]
            ],
        )
    )
    if task.get("deliveries"):
        print()
        print(delivery_table(task["deliveries"]))
    if task.get("files"):
        print()
        print(
            format_table(
                ["file", "path", "bytes", "sha256"],
                [(f["url"], f["path"], f["bytes"], f["sha256"]) for f in task["files"]],
            )
        )
    return EXIT_OK


def delivery_table(deliveries: Sequence[dict[str, Any]], *, with_task: bool = False) -> str:
    """Deliveries as a table (``GET /deliveries`` items when ``with_task``, else those of
    ``GET /tasks/{id}``): times in UTC, ``last_error`` cut to 60 characters."""
    headers = ["id", "plugin", "state", "attempts", "next_attempt_at"]
    headers += ["external_task_id", "task_status"] if with_task else ["task_status"]
    rows = [
        (
            d["id"],
            d["plugin"],
            d["state"],
            d["attempts"],
            _time(d["next_attempt_at"]),
            *([d["external_task_id"]] if with_task else []),
            d["task_status"],
            _cut(d["last_error"], 60),
        )
        for d in deliveries
    ]
    return format_table([*headers, "last_error"], rows)


async def _deliveries(args: argparse.Namespace) -> int:
    params = _query(state=args.state, plugin=args.plugin, limit=args.limit, cursor=args.cursor)
    page = await _api(args, "GET", "/deliveries", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    print(delivery_table(page["deliveries"], with_task=True))
    if page["next_cursor"]:
        print(f"(more: --cursor {page['next_cursor']})")
    return EXIT_OK


def since_ms(value: str) -> int:
    """``--since``: Unix ms, or an ISO 8601 date or date-time (UTC unless it has an offset).

    Raises:
        argparse.ArgumentTypeError: neither, or before 1970.
    """
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither Unix ms nor an ISO 8601 date-time (2026-03-01T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = (when - datetime.fromtimestamp(0, UTC)) // timedelta(milliseconds=1)
    if ms < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is before 1970")
    return ms


async def _redeliver(args: argparse.Namespace) -> int:
    if args.all == (args.id is not None):
        print("error: give one delivery ID or --all", file=sys.stderr)
        return EXIT_USAGE
    if args.all:
        body = {"state": args.state or "dead", "plugin": args.plugin, "since": args.since}
        answer = await _api(
            args,
            "POST",
            "/deliveries/redeliver",
            body={k: v for k, v in body.items() if v is not None},
        )
    elif args.plugin or args.state or args.since is not None:
        print("error: --plugin, --state and --since go with --all", file=sys.stderr)
        return EXIT_USAGE
    else:
        answer = await _api(args, "POST", f"/deliveries/{args.id}/redeliver")
    count = int(answer["redelivered"])
    print(f"{count} {'delivery' if count == 1 else 'deliveries'} replayed")
    return EXIT_OK


async def _plugins(args: argparse.Namespace) -> int:
    doc = await _api(args, "GET", "/plugins")
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    if not doc["plugins"]:
        print("no plugin enabled (add a [plugins.NAME] table to the config file)")
        return EXIT_OK
    rows = [
        (
            p["name"],
            p["version"],
            ",".join(p["statuses"]),
            "all" if p["routes"] is None else ",".join(p["routes"]),
            "yes" if p["started"] else "NO (see the log: plugin_start_failed)",
            p["origin"],
        )
        for p in doc["plugins"]
    ]
    print(format_table(["plugin", "version", "statuses", "routes", "started", "origin"], rows))
    return EXIT_OK


async def _token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(await credentials.api_token_from_file(settings))
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from submitter.simulator import Faults, Simulator

    configure_logging("auto", "info")
    faults = Faults(
        failure_rate=args.failure_rate,
        duplicate_rate=args.duplicate_rate,
        reorder_rate=args.reorder_rate,
        envelope_rate=args.envelope_rate,
        old_schema_rate=args.old_schema_rate,
        drop_nonterminal_rate=args.drop_nonterminal_rate,
    )
    sim = Simulator(
        faults=faults,
        prefix=args.prefix,
        delay_s=(args.min_delay, args.max_delay),
        api_key=args.api_key,
        seed=args.seed,
    )
    uvicorn.run(sim.app, host=args.host, port=args.port, access_log=False, log_config=None)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from receiver.demo import run_demo

    return await run_demo(seed=args.seed, directory=args.dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kling-hooks",
        description=(
            "Receive Kling callbacks, store every task transition, submit tasks. "
            "Settings come from the environment (KLING_*) and --config FILE."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", type=Path, help="TOML file with settings (env wins)")
        p.add_argument("--db", type=Path, help="SQLite file (KLING_HOOKS_DB)")
        return p

    p = command("serve", "run the receiver (callbacks + status API) under uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--plugins-dir",
        type=Path,
        help="directory of single-file plugins (KLING_HOOKS_PLUGINS_DIR)",
    )
    p.set_defaults(run=cmd_serve)

    p = command("submit", "submit one task to Kling with our callback_url")
    p.add_argument(
        "route",
        help="images/generations, images/multi-image2image, "
        "videos/multi-image2video, videos/text2video or videos/image2video",
    )
    p.add_argument("--data", required=True, help="the body as JSON, or @file.json")
    p.add_argument("--external-task-id", help="default: a generated kh-<ULID>")
    p.set_defaults(run=_submit)

    p = command("tasks", "list tasks from the status API, newest first")
    p.add_argument("--status", choices=[s.value for s in TaskStatus])
    p.add_argument("--route", choices=[r.value for r in KlingRoute])
    p.add_argument("--limit", type=int, default=50, help="1 to 500")
    p.add_argument("--cursor", help="next page: the cursor a previous page printed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--url", help="status API base URL (default KLING_HOOKS_API_URL)")
    p.set_defaults(run=_tasks)

    p = command("task", "show one task by task_id or external_task_id")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--url", help="status API base URL (default KLING_HOOKS_API_URL)")
    p.set_defaults(run=_task)

    p = command("deliveries", "list deliveries to plugins from the status API, newest first")
    p.add_argument("--state", choices=[s.value for s in DeliveryState])
    p.add_argument("--plugin", help="only deliveries to this plugin")
    p.add_argument("--limit", type=int, default=50, help="1 to 500")
    p.add_argument("--cursor", help="next page: the cursor a previous page printed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--url", help="status API base URL (default KLING_HOOKS_API_URL)")
    p.set_defaults(run=_deliveries)

    p = command("redeliver", "replay one delivery by ID, or --all matching a filter")
    p.add_argument("id", nargs="?", type=int, help="the delivery's id (see `deliveries`)")
    p.add_argument("--all", action="store_true", help="every delivery matching the filter")
    p.add_argument("--plugin", help="with --all: only deliveries to this plugin")
    p.add_argument(
        "--state",
        choices=["dead", "failed", "done", "pending"],
        help="with --all: only deliveries in this state (default dead)",
    )
    p.add_argument(
        "--since",
        type=since_ms,
        metavar="WHEN",
        help="with --all: only deliveries created at or after WHEN: Unix ms, or an "
        "ISO 8601 date-time (UTC unless it has an offset)",
    )
    p.add_argument("--url", help="status API base URL (default KLING_HOOKS_API_URL)")
    p.set_defaults(run=_redeliver)

    p = command("plugins", "list the plugins the receiver runs (settings with --json)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--url", help="status API base URL (default KLING_HOOKS_API_URL)")
    p.set_defaults(run=_plugins)

    p = command("token", "print the status API token (generated on first start if unset)")
    p.set_defaults(run=_token)

    p = sub.add_parser("simulate", help="run the Kling simulator (no account, no credits)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--prefix", default="", help="route prefix, e.g. /kling like a reseller")
    p.add_argument("--api-key", help="accept only this bearer key (default: any)")
    p.add_argument("--seed", type=int)
    p.add_argument("--min-delay", type=float, default=0.5, help="seconds between states")
    p.add_argument("--max-delay", type=float, default=2.0)
    for name in (
        "failure-rate",
        "duplicate-rate",
        "reorder-rate",
        "envelope-rate",
        "old-schema-rate",
        "drop-nonterminal-rate",
    ):
        p.add_argument(f"--{name}", type=float, default=0.0, help="share in [0, 1]")
    p.set_defaults(run=cmd_simulate)

    p = sub.add_parser(
        "demo",
        help="simulator + receiver + downloader + a Slack sink in one process: one task per route",
    )
    p.add_argument(
        "--dir", type=Path, help="where the database and downloads go (default: a new temp dir)"
    )
    p.add_argument("--seed", type=int, default=1, help="simulator seed (which tasks fail)")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kling-hooks`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        result = args.run(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidRequest as exc:
        print(f"invalid request, nothing sent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SubmitterError as exc:
        fields = {
            k: getattr(exc, k)
            for k in ("http_status", "code", "message", "request_id")
            if hasattr(exc, k)
        }
        print(f"error: {exc}", file=sys.stderr)
        if fields:
            print(json.dumps(fields), file=sys.stderr)
        return EXIT_ERROR
    except (ApiError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `kling-hooks tasks | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
