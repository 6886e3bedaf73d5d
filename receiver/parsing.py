"""Parsing Kling callback bodies into a :class:`~submitter.protocol.TaskObject`.

Accepted variants (PROTOCOL.md section 4): the bare task object; the query envelope
``{"code", "message", "request_id", "data": {task}}`` that some resellers forward; the older
schema without ``task_info`` and ``final_unit_deduction``; failed tasks whose ``task_info`` and
``task_result`` are ``{}``. Unknown fields are kept.
"""

from __future__ import annotations

from pydantic import ValidationError

from receiver.errors import NotATask, NotJSON
from submitter.protocol import TaskObject, first_error, loads_json


def parse_callback(raw: str) -> TaskObject:
    """Parse one callback body.

    Args:
        raw: The request body, decoded from UTF-8.

    Returns:
        The task object, unwrapped from an envelope when the body was one.

    Raises:
        NotJSON: the body is not JSON that can be stored and forwarded
            (:func:`submitter.protocol.loads_json`: ``NaN``, ``1e400``, deep nesting, a lone
            surrogate are refused too).
        NotATask: no ``task_id``, an unknown ``task_status``, or a wrong type; the message
            names the field.
    """
    try:
        doc = loads_json(raw)
    except ValueError as exc:
        raise NotJSON(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise NotATask(f"body is a JSON {type(doc).__name__}, not a task object")
    data = doc.get("data")
    if "task_id" not in doc and isinstance(data, dict) and "task_id" in data:
        doc = data
    try:
        return TaskObject.model_validate(doc)
    except ValidationError as exc:
        raise NotATask(first_error(exc)) from None
