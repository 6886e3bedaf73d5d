"""``kling-hooks backup``: an online snapshot of a running ``serve`` under a stream of
callbacks holds every callback acknowledged before it started, refuses to overwrite, and
restores: ``serve`` on the restored file answers for those tasks."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from submitter.tokens import CallbackTokens
from tests.conftest import API_TOKEN, SECRET, rows, serve, task_body
from tests.test_cli import cli_env, kling_hooks

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


class Stream:
    """Sends callbacks (one task each, four connections) until stopped; ``acked`` holds the
    task_ids answered 200, in order, and ``more`` is set each time one is."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: list[str] = []
        self.more = asyncio.Event()
        self._stop = False
        self._next = 0

    async def _send(self, http: httpx.AsyncClient) -> None:
        tokens = CallbackTokens([SECRET])
        while not self._stop:
            n, self._next = self._next, self._next + 1
            task_id = f"s-{n}"
            answer = await http.post(
                tokens.callback_url(self.url, f"ext-{n}"), json=task_body(task_id, "succeed")
            )
            assert answer.status_code == 200, answer.text
            self.acked.append(task_id)
            self.more.set()

    async def until(self, count: int) -> None:
        while len(self.acked) < count:
            self.more.clear()
            await self.more.wait()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stream]:
        async with httpx.AsyncClient(timeout=10) as http:
            senders = [asyncio.create_task(self._send(http)) for _ in range(4)]
            try:
                yield self
            finally:
                self._stop = True
                await asyncio.gather(*senders)


def write_config(directory: Path) -> Path:
    config = directory / "kling-hooks.toml"
    config.write_text(f'kling_hooks_db = "{directory / "kling-hooks.db"}"\n')
    return config


async def test_a_backup_under_a_stream_of_callbacks_holds_every_one_acknowledged_before_it(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    target = tmp_path / "backups" / "kh.db"
    target.parent.mkdir()
    env = cli_env()
    args = ("--config", str(config))
    async with serve(config, tmp_path) as server, Stream(server.url).running() as stream:
        await stream.until(100)
        before = list(stream.acked)  # acknowledged before the backup started
        made = await kling_hooks("backup", str(target), *args, env=env, cwd=tmp_path)
        copied = {r["task_id"] for r in rows(target, "SELECT task_id FROM tasks")}
        await stream.until(len(before) + 20)  # the stream went on, and goes on after
        again = await kling_hooks("backup", str(target), *args, env=env, cwd=tmp_path)
        forced = await kling_hooks("backup", str(target), "--force", *args, env=env, cwd=tmp_path)
    assert made.code == 0, made.err
    assert set(before) <= copied
    assert made.out.startswith(f"backed up {tmp_path / 'kling-hooks.db'} to {target}: ")
    assert f": {len(copied):,} tasks, {len(copied):,} transitions, " in made.out
    assert made.out.rstrip().endswith("bytes; integrity ok")
    assert (again.code, again.err) == (1, f"error: {target} exists; give --force to replace it\n")
    assert forced.code == 0, forced.err
    assert sorted(p.name for p in target.parent.iterdir()) == ["kh.db"]  # no temporary left

    # Restore: the service is stopped; replace the file, remove its -wal and -shm, start.
    db = tmp_path / "kling-hooks.db"
    restored = {r["task_id"] for r in rows(target, "SELECT task_id FROM tasks")}
    shutil.copyfile(target, db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    async with serve(config, tmp_path) as server, httpx.AsyncClient(timeout=10) as http:
        answers = [await http.get(f"{server.url}/tasks/{t}", headers=AUTH) for t in before]
        page = await http.get(f"{server.url}/tasks?limit=500", headers=AUTH)
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["task_status"] for a in answers} == {"succeed"}
    listed = {t["task_id"] for t in page.json()["tasks"]}
    assert listed <= restored and len(listed) == min(500, len(restored))


async def test_backup_of_a_database_that_does_not_exist_exits_1_and_writes_nothing(
    tmp_path: Path,
) -> None:
    target = tmp_path / "kh.db"
    run = await kling_hooks(
        "backup", str(target), "--db", str(tmp_path / "absent.db"), env=cli_env(), cwd=tmp_path
    )
    assert run.code == 1
    assert (
        run.err
        == f"error: {tmp_path / 'absent.db'} does not exist: nothing to back up (is --db right?)\n"
    )
    assert list(tmp_path.iterdir()) == []


async def test_backup_of_a_file_that_is_not_a_database_exits_1_with_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "notdb.db").write_bytes(b"kling-hooks notes, not a database\n" * 10)
    run = await kling_hooks("backup", "copy.db", "--db", "notdb.db", env=cli_env(), cwd=tmp_path)
    assert run.code == 1
    assert run.err == "error: notdb.db is not a kling-hooks database: file is not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notdb.db"]  # no copy, no temporary


async def test_backup_force_onto_the_live_database_or_its_wal_refuses_and_leaves_it_serving(
    tmp_path: Path,
) -> None:
    """``--force`` replaces a backup, never the database the receiver is writing: the target is
    compared by resolved path (here through a symbolic link and a ``..``) and as a file."""
    config = write_config(tmp_path)
    db = tmp_path / "kling-hooks.db"
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.db").symlink_to(db)
    env, args = cli_env(), ("--force", "--config", str(config))
    async with serve(config, tmp_path) as server, Stream(server.url).running() as stream:
        await stream.until(10)
        runs = {
            target: await kling_hooks("backup", target, *args, env=env, cwd=tmp_path)
            for target in ("sub/../kling-hooks.db", "link.db", "kling-hooks.db-wal")
        }
        await stream.until(len(stream.acked) + 10)  # still serving, into the same file
        acked = list(stream.acked)
    for target, run in runs.items():
        what = f"the database {db}" + ("'s -wal file" if target.endswith("-wal") else "")
        assert (run.code, run.err) == (
            1,
            f"error: {target} is {what} itself: a backup must go to another file\n",
        )
    stored = {r["task_id"] for r in rows(db, "SELECT task_id FROM tasks")}
    assert set(acked) <= stored
    assert not list(tmp_path.glob(".*.tmp"))
