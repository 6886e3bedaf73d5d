"""The one mapping between stored rows and the shapes of ``receiver.models``.

A column holding JSON is named after its field with ``_json`` appended (``task_result`` is
stored in ``task_result_json``); every other column has its field's name. The reads' SELECT
lists are derived from the models' field names, and :func:`decode` turns a row back into
field values. (The writes go through the row dataclasses of ``receiver.transitions``, whose
fields are the tables' columns; ``receiver.store.batches`` derives its statements from them.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

#: Fields stored as JSON text.
JSON_FIELDS = frozenset({"task_result", "task_info", "request"})


def marks(n: int) -> str:
    """``?,?,...`` with ``n`` placeholders."""
    return ",".join("?" * n)


def column(name: str) -> str:
    """The column that stores field ``name``."""
    return f"{name}_json" if name in JSON_FIELDS else name


def select_list(
    names: Iterable[str], *, tables: Mapping[str, str] | None = None, default: str = ""
) -> str:
    """``"t.task_status, k.request_json, d.id AS delivery_id"`` for the given field names.

    Args:
        names: The fields to select, in order.
        tables: A field's table alias or ``"alias.column"`` when it is not ``default``'s
            column of the same name (``{"delivery_id": "d.id"}``).
        default: The alias of the table the other fields come from ("" for none).
    """
    tables = tables or {}
    out = []
    for name in names:
        source = tables.get(name, default)
        if "." in source:
            out.append(f"{source} AS {name}")
        else:
            out.append(f"{source}.{column(name)}" if source else column(name))
    return ", ".join(out)


def decode(row: aiosqlite.Row | Mapping[str, Any]) -> dict[str, Any]:
    """A row as field values: ``task_result_json`` becomes ``task_result``, parsed."""
    values: dict[str, Any] = {}
    for key in row.keys():
        value = row[key]
        if key.endswith("_json") and key[: -len("_json")] in JSON_FIELDS:
            values[key[: -len("_json")]] = None if value is None else json.loads(value)
        else:
            values[key] = value
    return values
