"""Plain-text tables of the status API's answers, as ``kling-hooks`` and the demo print them.

Every table is left-aligned columns separated by two spaces under a header line; a missing
value (None) shows as ``-``. Times are Unix epoch milliseconds shown in UTC, marked ``Z``
as in ISO 8601 (``2026-11-21 18:47:15.339Z``; ``--since`` takes the same form). The inputs
are the status API's answers, as the models of ``receiver.models`` that
``receiver.status_client`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from receiver.models import Delivery, ListedDelivery, PluginInfo, Task, TaskSummary
from submitter.protocol import TaskObject

#: Width at which ``last_error`` is cut in delivery lists (one task's view shows it whole).
LAST_ERROR_WIDTH = 120

_TASK_FIELDS = (
    "task_id",
    "external_task_id",
    "route",
    "task_status",
    "task_status_msg",
    "final_unit_deduction",
)


def format_time(ms: int | None) -> str:
    """``ms`` (Unix epoch milliseconds) as ``YYYY-MM-DD HH:MM:SS.mmmZ``, in UTC (the ``Z``);
    ``-`` for None."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def shorten(text: str | None, width: int) -> str | None:
    """``text`` cut to at most ``width`` characters, ``...`` marking a cut; None stays None."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, under a header line.

    Args:
        headers: The column names.
        rows: One sequence of cells per row, as long as ``headers``; None shows as ``-``.

    Returns:
        The lines joined by newlines, without a final newline or trailing spaces.

    Raises:
        ValueError: a row is not as long as ``headers``.
    """
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"{row!r} has {len(row)} cells for {len(headers)} columns")
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def tasks_table(tasks: Sequence[TaskSummary]) -> str:
    """``GET /tasks`` items, one row each: ids, route, status and ``updated_at``."""
    rows = [
        (t.task_id, t.external_task_id, t.route, t.task_status, format_time(t.updated_at))
        for t in tasks
    ]
    return format_table(["task_id", "external_task_id", "route", "task_status", "updated_at"], rows)


def task_view(task: Task) -> str:
    """One task (``GET /tasks/{id}``) as blocks separated by blank lines.

    The blocks: a field/value table followed by one ``image: URL`` (``video: URL``, ...) line
    per result file Kling reported; the transitions; the deliveries, if any; the files plugins
    saved, if any.
    """
    fields = [(f, getattr(task, f)) for f in _TASK_FIELDS]
    fields += [("created_at", format_time(task.created_at))]
    fields += [("updated_at", format_time(task.updated_at))]
    head = [format_table(["field", "value"], fields), *_result_lines(task.task_result)]
    transitions = [
        (t.task_status, format_time(t.updated_at), format_time(t.received_at))
        for t in task.transitions
    ]
    blocks = [
        "\n".join(head),
        format_table(["transition", "updated_at", "received_at"], transitions),
    ]
    if task.deliveries:
        blocks.append(delivery_table(task.deliveries, error_width=None))
    if task.files:
        files = [(f.url, f.path, f.bytes, f.sha256) for f in task.files]
        blocks.append(format_table(["file", "path", "bytes", "sha256"], files))
    return "\n\n".join(blocks)


def _result_lines(task_result: Mapping[str, Any] | None) -> list[str]:
    """``kind: URL`` for every item with a ``url`` in Kling's ``task_result`` (``images`` gives
    ``image: ...``); other shapes are skipped."""
    lines = []
    for kind, items in (task_result or {}).items():
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "url" in item:
                lines.append(f"{kind.removesuffix('s')}: {item['url']}")
    return lines


def delivery_table(
    deliveries: Sequence[Delivery] | Sequence[ListedDelivery],
    *,
    with_task: bool = False,
    error_width: int | None = LAST_ERROR_WIDTH,
) -> str:
    """Deliveries, one row each; ``last_error`` is the last column.

    Args:
        deliveries: ``GET /deliveries`` items when ``with_task``, else the ``deliveries`` of
            ``GET /tasks/{id}``.
        with_task: Add the ``external_task_id`` column (a list spanning tasks).
        error_width: Cut ``last_error`` to this many characters (None: whole).
    """
    headers = ["id", "plugin", "state", "attempts", "next_attempt_at"]
    headers += ["external_task_id", "task_status"] if with_task else ["task_status"]
    rows = [
        (
            d.id,
            d.plugin,
            d.state,
            d.attempts,
            format_time(d.next_attempt_at),
            *([d.external_task_id] if isinstance(d, ListedDelivery) and with_task else []),
            d.task_status,
            d.last_error if error_width is None else shorten(d.last_error, error_width),
        )
        for d in deliveries
    ]
    return format_table([*headers, "last_error"], rows)


def plugins_table(plugins: Sequence[PluginInfo]) -> str:
    """``GET /plugins`` items, one row each; ``routes`` None shows as ``all``, and a plugin
    whose ``start()`` failed as ``NO (see the log: plugin_start_failed)``."""
    rows = [
        (
            p.name,
            p.version,
            ",".join(p.statuses),
            "all" if p.routes is None else ",".join(p.routes),
            "yes" if p.started else "NO (see the log: plugin_start_failed)",
            p.origin,
        )
        for p in plugins
    ]
    return format_table(["plugin", "version", "statuses", "routes", "started", "origin"], rows)


def kling_tasks_table(tasks: Sequence[TaskObject]) -> str:
    """Kling's own task objects (``kling-hooks kling list``), one row each."""
    rows = [
        (t.task_id, t.external_task_id, t.task_status, format_time(t.updated_at)) for t in tasks
    ]
    return format_table(["task_id", "external_task_id", "task_status", "updated_at"], rows)


def kling_task_view(task: TaskObject) -> str:
    """One of Kling's task objects (``kling-hooks kling get``): a field/value table, then one
    ``image: URL`` (``video: URL``...) line per result."""
    fields = [
        ("task_id", task.task_id),
        ("external_task_id", task.external_task_id),
        ("task_status", task.task_status),
        ("task_status_msg", task.task_status_msg),
        ("final_unit_deduction", task.final_unit_deduction),
        ("created_at", format_time(task.created_at)),
        ("updated_at", format_time(task.updated_at)),
    ]
    return "\n".join([format_table(["field", "value"], fields), *_result_lines(task.task_result)])
