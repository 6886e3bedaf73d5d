"""The systemd units in ``systemd/``: every one passes ``systemd-analyze verify`` with nothing
to say, and every service keeps its hardening: ``systemd-analyze security --offline=true``
rates its exposure 2.0 or lower.

``verify`` also checks that each ``ExecStart=`` binary exists and is executable. The units name
the production path, ``/opt/kling-hooks/venv/bin/kling-hooks``, which this machine does not
have. So the test copies every unit into one temporary directory, replacing that path, and
nothing else, by this virtualenv's ``kling-hooks`` (the console script the rest of the suite
runs), and asserts that each unit with an ``ExecStart=`` had it replaced. The copies sit side
by side as they will in ``/etc/systemd/system``, so ``verify`` also resolves the names the
units give each other (``Requires=kling-hooks.socket``, each timer's service). ``--root=DIR``
is no way round it: it would need a whole systemd tree (``sysinit.target`` and the rest)
under DIR.

``systemd-analyze`` comes with the ``systemd`` package; ``.ci/run`` installs it when missing.
Without it these tests fail and say so: they are never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KLING_HOOKS

UNITS = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_AT = "/opt/kling-hooks/venv/bin/kling-hooks"
MAX_EXPOSURE = 2.0
UNIT_FILES = sorted(
    p.name for p in UNITS.iterdir() if p.suffix in (".service", ".socket", ".timer")
)
SERVICES = [name for name in UNIT_FILES if name.endswith(".service")]


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze ARGS``; fails the test, saying how to install it, if missing."""
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is not installed: run `bash .ci/run`, or "
            "`apt-get install systemd` (Debian, Ubuntu)"
        )
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """A directory with a copy of every unit, ExecStart= pointing at this venv's kling-hooks."""
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        if re.search(r"^ExecStart=", text, re.MULTILINE):
            assert f"ExecStart={INSTALLED_AT} " in text, f"{name} runs another binary"
        (tmp_path / name).write_text(text.replace(INSTALLED_AT, str(KLING_HOOKS)))
    return tmp_path


def test_the_units_are_a_socket_the_services_and_their_timers() -> None:
    assert UNIT_FILES == [
        "kling-hooks-prune.service",
        "kling-hooks-prune.timer",
        "kling-hooks-reconcile.service",
        "kling-hooks-reconcile.timer",
        "kling-hooks.service",
        "kling-hooks.socket",
    ]


@pytest.mark.parametrize("name", UNIT_FILES)
def test_unit_passes_systemd_analyze_verify_without_a_warning(units: Path, name: str) -> None:
    done = systemd_analyze("verify", str(units / name))
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""  # unknown keys are only warnings: none either


@pytest.mark.parametrize("name", SERVICES)
def test_service_exposure_is_at_most_2(units: Path, name: str) -> None:
    done = systemd_analyze("security", "--offline=true", "--no-pager", str(units / name))
    assert done.returncode == 0, done.stderr
    found = re.search(rf"Overall exposure level for {re.escape(name)}: (\d+\.\d+)", done.stdout)
    assert found, done.stdout[-2000:]
    assert float(found[1]) <= MAX_EXPOSURE, done.stdout


def test_the_postgres_drop_in_passes_verify_and_keeps_the_exposure(units: Path) -> None:
    """``kling-hooks-postgres.conf``, installed as the service's drop-in (README.md, "Scaling
    out"), is read by systemd without a warning and loosens none of the hardening."""
    drop_ins = units / "kling-hooks.service.d"
    drop_ins.mkdir()
    # verify reads the drop-ins beside the unit: one with an unknown key is reported
    (drop_ins / "probe.conf").write_text("[Service]\nNoSuchKey=1\n")
    probed = systemd_analyze("verify", str(units / "kling-hooks.service"))
    assert "probe.conf:2: Unknown key 'NoSuchKey'" in probed.stderr, probed.stderr
    (drop_ins / "probe.conf").unlink()
    (drop_ins / "postgres.conf").write_text((UNITS / "kling-hooks-postgres.conf").read_text())
    done = systemd_analyze("verify", str(units / "kling-hooks.service"))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    security = systemd_analyze(
        "security", "--offline=true", "--no-pager", str(units / "kling-hooks.service")
    )
    found = re.search(
        r"Overall exposure level for kling-hooks.service: (\d+\.\d+)", security.stdout
    )
    assert found and float(found[1]) <= MAX_EXPOSURE, security.stdout
