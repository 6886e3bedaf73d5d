"""The shape of the code: layers that look only down, and modules small enough to read.

The layers are the ``[tool.importlinter]`` contracts in pyproject.toml; ``lint-imports``
checks them. The size rule is the one the project holds itself to (STYLE.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("package", ["receiver", "submitter"])
def test_no_module_is_over_400_lines(package: str) -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / package).rglob("*.py")
    }
    assert sizes, f"no modules found under {package}"
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}
