"""One owner per database: a second ``kling-hooks serve`` on the same database stops at once,
with one line naming the process that holds it; a killed owner leaves nothing that blocks."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from receiver.errors import DatabaseLocked
from receiver.store import DatabaseLock
from tests.conftest import KLING_HOOKS, make_settings, serve, start_receiver


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{tmp_path / "kling-hooks.db"}"\n')
    return config


async def second_serve(config: Path, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS),
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_second_serve_on_the_same_database_exits_at_once_naming_the_owner(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    async with serve(config, tmp_path) as first:
        code, err = await second_serve(config, tmp_path)
        assert first.proc.returncode is None  # the owner runs on, untouched
        owner = first.proc.pid
    assert code == 1
    assert err == (
        f"error: {tmp_path / 'kling-hooks.db'} is in use by process {owner} (it holds "
        f"{tmp_path / 'kling-hooks.db.lock'}): one process owns a database; stop it, or give "
        "this one another KLING_HOOKS_DB\n"
    )


async def test_a_killed_owner_leaves_no_lock_behind(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    async with serve(config, tmp_path) as first:
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
    assert (tmp_path / "kling-hooks.db.lock").exists()  # the file stays, the lock does not
    async with serve(config, tmp_path) as second:
        assert any(e.get("event") == "receiver_started" for e in second.events)


async def test_an_app_in_process_takes_the_lock_too(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with start_receiver(settings):
        with pytest.raises(DatabaseLocked, match="is in use by process"):
            DatabaseLock(settings.kling_hooks_db).acquire()
    with DatabaseLock(settings.kling_hooks_db):  # free again once the app stopped
        pass
