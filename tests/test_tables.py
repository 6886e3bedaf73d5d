"""The text tables of ``receiver.tables``, which ``kling-hooks`` and the demo print: given
status API answers, exactly the lines shown."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.models import ListedDelivery, PluginInfo, Task, TaskSummary
from receiver.tables import (
    delivery_table,
    format_table,
    format_time,
    plugins_table,
    shorten,
    task_view,
    tasks_table,
)

MS = 1795286835339  # 2026-11-21 18:47:15.339 UTC


def test_format_table_aligns_columns_and_shows_none_as_a_dash() -> None:
    text = format_table(["id", "plugin", "last_error"], [(1, "downloader", None), (12, "s", "x")])
    assert text.splitlines() == [
        "id  plugin      last_error",
        "1   downloader  -",
        "12  s           x",
    ]


def test_format_table_leaves_no_trailing_spaces_and_no_final_newline() -> None:
    text = format_table(["a", "long header"], [("wide value", "")])
    assert text == "a           long header\nwide value"


def test_format_table_refuses_a_row_of_another_length() -> None:
    with pytest.raises(ValueError):
        format_table(["a", "b"], [("only one",)])


@pytest.mark.parametrize(
    ("ms", "shown"),
    [(MS, "2026-11-21 18:47:15.339Z"), (0, "1970-01-01 00:00:00.000Z"), (None, "-")],
)
def test_format_time_shows_unix_ms_in_utc_to_the_millisecond(ms: int | None, shown: str) -> None:
    assert format_time(ms) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [("short", "short"), ("x" * 10, "x" * 10), ("x" * 11, "xxxxxxx..."), (None, None)],
)
def test_shorten_cuts_over_the_width_marking_the_cut(text: str | None, shown: str | None) -> None:
    assert shorten(text, 10) == shown


SUMMARY: dict[str, Any] = {
    "task_id": "2505875930906139466",
    "external_task_id": "kh-1",
    "route": "images/generations",
    "task_status": "succeed",
    "task_status_msg": "",
    "task_result": {"images": [{"index": 0, "url": "http://k/0.png"}], "other": "x"},
    "final_unit_deduction": "0.4",
    "created_at": MS - 4069,
    "updated_at": MS,
    "first_seen_at": MS - 4065,
    "last_received_at": MS + 2,
}


def test_tasks_table_has_one_row_per_task() -> None:
    tasks = [TaskSummary.model_validate(SUMMARY)]
    assert tasks_table(tasks).splitlines() == [
        "task_id              external_task_id  route               task_status  updated_at",
        "2505875930906139466  kh-1              images/generations  succeed      "
        "2026-11-21 18:47:15.339Z",
    ]


def delivery(**values: Any) -> ListedDelivery:
    base = {
        "id": 2,
        "plugin": "slack",
        "state": "failed",
        "attempts": 1,
        "next_attempt_at": MS,
        "task_id": "2505875930906139466",
        "external_task_id": "kh-1",
        "task_status": "succeed",
        "last_error": "SlackError: " + "x" * 200,
        "created_at": MS,
        "updated_at": MS,
    }
    return ListedDelivery.model_validate({**base, **values})


def test_delivery_table_cuts_last_error_to_120_characters() -> None:
    header, row = delivery_table([delivery()]).splitlines()
    assert header.split() == [
        "id",
        "plugin",
        "state",
        "attempts",
        "next_attempt_at",
        "task_status",
        "last_error",
    ]
    assert row.endswith("succeed      SlackError: " + "x" * 105 + "...")
    assert "kh-1" not in row


def test_delivery_table_with_task_adds_external_task_id() -> None:
    header, row = delivery_table([delivery(last_error=None)], with_task=True).splitlines()
    assert header.split()[5:] == ["external_task_id", "task_status", "last_error"]
    assert row.split()[-3:] == ["kh-1", "succeed", "-"]


def task(**values: Any) -> Task:
    base: dict[str, Any] = {
        **SUMMARY,
        "task_info": None,
        "request": None,
        "callbacks": {"new": 2},
        "transitions": [
            {"task_status": "submitted", "updated_at": MS - 4069, "received_at": MS - 4065},
            {"task_status": "succeed", "updated_at": MS, "received_at": MS + 2},
        ],
        "deliveries": [],
        "files": [],
    }
    return Task.model_validate({**base, **values})


def test_task_view_shows_fields_results_and_transitions() -> None:
    assert task_view(task()).splitlines() == [
        "field                 value",
        "task_id               2505875930906139466",
        "external_task_id      kh-1",
        "route                 images/generations",
        "task_status           succeed",
        "task_status_msg",
        "final_unit_deduction  0.4",
        "created_at            2026-11-21 18:47:11.270Z",
        "updated_at            2026-11-21 18:47:15.339Z",
        "image: http://k/0.png",
        "",
        "transition  updated_at                received_at",
        "submitted   2026-11-21 18:47:11.270Z  2026-11-21 18:47:11.274Z",
        "succeed     2026-11-21 18:47:15.339Z  2026-11-21 18:47:15.341Z",
    ]


def test_task_view_adds_deliveries_and_files_as_their_own_blocks() -> None:
    saved = {"url": "http://k/0.png", "path": "/d/image-0.png", "bytes": 1815, "sha256": "ab"}
    one = delivery().model_dump(exclude={"task_id", "external_task_id"})
    blocks = task_view(task(deliveries=[one], files=[saved], task_result=None))
    fields, transitions, deliveries, files = blocks.split("\n\n")
    assert "image:" not in fields
    assert transitions.startswith("transition")
    assert deliveries.startswith("id  plugin")
    assert files.splitlines() == [
        "file            path            bytes  sha256",
        "http://k/0.png  /d/image-0.png  1815   ab",
    ]


def test_plugins_table_shows_all_routes_and_a_failed_start() -> None:
    plugins = [
        PluginInfo(**p, settings={})
        for p in (
            {
                "name": "slack",
                "version": "0.2.0",
                "statuses": ["failed", "succeed"],
                "routes": None,
                "started": True,
                "origin": "entry point (kling-hooks 0.2.0)",
            },
            {
                "name": "echo",
                "version": "0.1",
                "statuses": ["succeed"],
                "routes": ["videos/text2video"],
                "started": False,
                "origin": "/p/echo.py",
            },
        )
    ]
    assert plugins_table(plugins).splitlines() == [
        "plugin  version  statuses        routes             started"
        "                                origin",
        "slack   0.2.0    failed,succeed  all                yes"
        "                                    entry point (kling-hooks 0.2.0)",
        "echo    0.1      succeed         videos/text2video  NO (see the log: plugin_start_failed)"
        "  /p/echo.py",
    ]
