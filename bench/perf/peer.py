"""The peer: ``webhook`` (the Debian package of adnanh/webhook, a Go server that runs a
command per request), configured to persist each callback before it answers.

Configuration (written by :func:`write_config`):

- ``hooks.json``: one hook, id ``kling`` (URL ``/hooks/kling``), ``POST`` only, whose
  ``execute-command`` is ``persist.sh`` with the entire JSON payload as its one argument
  (``pass-arguments-to-command: [{"source": "entire-payload"}]``), and
  ``include-command-output-in-response: true``, so the answer waits for the command (without
  it webhook answers at once and runs the command afterwards);
- ``persist.sh``: ``printf '%s\\n' "$1" >> payloads.jsonl``, one line per payload, appended
  (no fsync: the receiver's commits are fsynced, these are not);
- ``webhook -ip 127.0.0.1 -port N -hooks hooks.json``: not verbose (no request log).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: The peer's hook URL path.
HOOK_PATH = "/hooks/kling"
PAYLOADS = "payloads.jsonl"


def write_config(directory: Path) -> Path:
    """Write ``hooks.json`` and ``persist.sh`` into ``directory``; returns ``hooks.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "persist.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$1\" >> {directory / PAYLOADS}\n")
    script.chmod(0o755)
    hook = {
        "id": "kling",
        "execute-command": str(script),
        "command-working-directory": str(directory),
        "http-methods": ["POST"],
        "include-command-output-in-response": True,
        "pass-arguments-to-command": [{"source": "entire-payload"}],
    }
    hooks = directory / "hooks.json"
    hooks.write_text(json.dumps([hook], indent=2))
    return hooks


def command(port: int, hooks: Path) -> list[str]:
    """The ``webhook`` command line on 127.0.0.1:``port``.

    Raises:
        RuntimeError: ``webhook`` is not installed (``apt-get install webhook``).
    """
    found = shutil.which("webhook")
    if found is None:
        raise RuntimeError("webhook is not installed (apt-get install webhook)")
    return [found, "-ip", "127.0.0.1", "-port", str(port), "-hooks", str(hooks)]


def stored(directory: Path) -> int:
    """Payload lines the peer has persisted in ``directory``."""
    path = directory / PAYLOADS
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)
