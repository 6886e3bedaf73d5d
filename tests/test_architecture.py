"""The shape of the code: layers that look only down, and modules small enough to read.

The layers are the ``[tool.importlinter]`` contracts in pyproject.toml; ``lint-imports``
checks them. The size rule is the one the project holds itself to (STYLE.md).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400


CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    kept = " ".join(done.stdout.split())  # lint-imports wraps long names
    for contract in CONTRACTS:
        assert f"{contract['name']} KEPT" in kept
    assert f"{len(CONTRACTS)} kept, 0 broken" in kept
    assert len(CONTRACTS) == 4


def test_every_receiver_module_has_a_layer() -> None:
    [layers] = [c["layers"] for c in CONTRACTS if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {
        f"receiver.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "receiver").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    assert modules - placed == set(), "add the new module to a layer in pyproject.toml"


@pytest.mark.parametrize("package", ["receiver", "submitter"])
def test_no_module_is_over_400_lines(package: str) -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / package).rglob("*.py")
    }
    assert sizes, f"no modules found under {package}"
    assert {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES} == {}
