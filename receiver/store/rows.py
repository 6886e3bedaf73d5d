"""The one mapping between stored rows and the shapes of ``receiver.models``.

A column holding JSON is named after its field with ``_json`` appended (``task_result`` is
stored in ``task_result_json``); every other column has its field's name. The reads' SELECT
lists are derived from the models' field names; :func:`decode` turns a row back into field
values, and :func:`json_object` renders one as the model's JSON inside the query (SQLite);
:func:`json_text` renders a fetched row as the same text in Python (Postgres). (The writes
go through the row dataclasses of ``receiver.transitions``, whose fields are the tables'
columns; ``receiver.store.batches`` derives its statements from them.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

#: Fields stored as JSON text.
JSON_FIELDS = frozenset({"task_result", "task_info", "request"})

#: JSON as SQLite's ``json_object`` writes a value: no spaces, non-ASCII text as it is, ``"``,
#: ``\`` and control characters escaped (``\n``, ``\u0007``).
_SQLITE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: A JSON string (kept), or whitespace outside strings (dropped): :func:`minified`.
_BETWEEN_TOKENS = re.compile(r'("(?:\\.|[^"\\])*")|[ \t\n\r]+')


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
    out = []
    for name in names:
        source = _source(name, tables or {}, default)
        same = source.rsplit(".", 1)[-1] == column(name)
        out.append(source if same else f"{source} AS {name}")
    return ", ".join(out)


def json_object(
    names: Iterable[str],
    *,
    tables: Mapping[str, str] | None = None,
    default: str = "",
    values: Mapping[str, str] | None = None,
) -> str:
    """SQL: ``json_object('task_id', t.task_id, 'task_result', json(t.task_result_json), ...)``,
    an expression whose value is the JSON object of the given fields, in their order, as a
    model's ``model_dump_json`` writes it: a JSON column is embedded as JSON (``json()``),
    NULL is ``null``, an INTEGER a number, TEXT a string.

    Args:
        names: The fields, in order.
        tables: As for :func:`select_list`.
        default: As for :func:`select_list`.
        values: SQL giving a field's value when it is not a column, by field name: a JSON
            function's result (``json_group_array(...)``, ``json(...)``) is embedded as
            JSON, any other value as a JSON string, number or null. (A scalar subquery's
            value is not a function's result: wrap it in ``json()``.)
    """
    pairs = []
    for name in names:
        if values and name in values:
            pairs.append(f"'{name}', {values[name]}")
            continue
        source = _source(name, tables or {}, default)
        pairs.append(f"'{name}', " + (f"json({source})" if name in JSON_FIELDS else source))
    return f"json_object({', '.join(pairs)})"


def json_text(
    names: Iterable[str], row: Mapping[str, Any], *, values: Mapping[str, str] | None = None
) -> str:
    """The JSON text that :func:`json_object` makes SQLite render for ``row``, made in Python:
    the given fields in their order, a JSON column (``row["task_result_json"]``) embedded as
    stored, any other column's value as a JSON string, number or null.

    A JSON column is embedded as SQLite's ``json()`` gives it back: minified (the whitespace
    between tokens removed, :func:`minified`), every token as stored (``\\u00e9`` escapes and
    number spellings included), so the two texts are the same.

    Args:
        names: The fields, in order (a model's ``model_fields``).
        row: The row, by column name (:func:`column`): e.g. psycopg's ``dict_row``.
        values: The JSON text of a field that is not a column, by field name (a nested list).
    """
    pairs = []
    for name in names:
        if values and name in values:
            value = values[name]
        elif name in JSON_FIELDS:
            stored = row[column(name)]
            value = "null" if stored is None else minified(str(stored))
        else:
            value = _SQLITE_JSON.encode(row[name])
        pairs.append(f"{_SQLITE_JSON.encode(name)}:{value}")
    return "{" + ",".join(pairs) + "}"


def minified(text: str) -> str:
    """JSON ``text`` without the whitespace between its tokens (strings kept as they are):
    what SQLite's ``json()`` returns for JSON text (``{"a": 1}`` is ``{"a":1}``)."""
    return _BETWEEN_TOKENS.sub(lambda m: m.group(1) or "", text)


def json_scalar(value: object) -> str:
    """``value`` (a string, number, None, or a dict or list of them) as SQLite's JSON
    functions write it (:func:`json_text`'s encoding)."""
    return _SQLITE_JSON.encode(value)


def _source(name: str, tables: Mapping[str, str], default: str) -> str:
    """The column expression of field ``name``: ``d.id``, ``t.task_status``, ``route``."""
    source = tables.get(name, default)
    if "." in source:
        return source
    return f"{source}.{column(name)}" if source else column(name)


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
