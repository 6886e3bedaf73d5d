"""Storage faults (issue 10, suite 4): a database that cannot grow and one that cannot be
written answer 503 with Retry-After, ``/readyz`` says so, and the receiver recovers without a
restart once the fault is cleared, losing no acknowledged callback.

The first tests name the defect the suite found ("Readiness lies": ``/readyz`` stayed 200 while
every write answered 503) on a receiver in this process; the last runs the whole suite
(``bench/suites/storage.py``) at its reduced size against ``kling-hooks serve`` subprocesses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from bench.suites import storage
from bench.suites.disk_faults import immutable
from receiver.errors import StoreUnavailable
from receiver.store import WriteProbe
from receiver.writer import Writer
from tests.conftest import make_settings, start_receiver, task_body


def db_files(db: Path) -> tuple[Path, Path]:
    return db, db.with_name(db.name + "-wal")


async def test_readyz_is_503_while_writes_fail_and_200_once_the_disk_takes_them_again(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    async with start_receiver(settings) as receiver:
        assert (await receiver.http.get(f"{receiver.url}/readyz")).status_code == 200
        with immutable(*db_files(settings.kling_hooks_db)):
            answer = await receiver.post_callback("kh-1", task_body("1", "succeed", "kh-1"))
            assert answer.status_code == 503 and answer.headers["retry-after"]
            ready = await receiver.http.get(f"{receiver.url}/readyz")
            assert ready.status_code == 503, ready.text  # was 200: "Readiness lies"
            assert ready.headers["retry-after"]
            assert ready.json()["ok"] is False
        # nothing else is sent: the probe (one a second at most) finds the disk writable
        for _ in range(100):
            if (await receiver.http.get(f"{receiver.url}/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert (await receiver.http.get(f"{receiver.url}/readyz")).status_code == 200
        answer = await receiver.post_callback("kh-1", task_body("1", "succeed", "kh-1"))
        assert answer.json() == {"ok": True, "verdict": "new"}


async def test_readiness_probes_write_at_most_once_per_interval_however_many_ask(
    tmp_path: Path,
) -> None:
    now_s = [100.0]
    db = tmp_path / "kling-hooks.db"
    writer = await Writer.open(db, probe_interval_s=1.0, clock_s=lambda: now_s[0])
    writer.start()
    try:
        assert await writer.writable()
        with immutable(*db_files(db)), capture_logs() as logs:
            try:
                await writer.submit(WriteProbe(1))
            except StoreUnavailable:
                pass
            assert not writer.last_commit_ok
            # a commit was just tried: no probe yet, whoever asks
            assert not any(await asyncio.gather(*(writer.writable() for _ in range(50))))
            failed = [e for e in logs if e["event"] == "commit_failed"]
            assert len(failed) == 1
            now_s[0] += 1.0  # idle for a probe interval: one probe, shared by all 50
            assert not any(await asyncio.gather(*(writer.writable() for _ in range(50))))
            assert not await writer.writable()
            assert len([e for e in logs if e["event"] == "commit_failed"]) == 2
        assert not await writer.writable()  # cleared, but the last probe is under 1 s old
        now_s[0] += 1.0
        assert await writer.writable()
        assert writer.last_commit_ok
    finally:
        await writer.close()


async def test_storage_suite_reduced_size_passes(tmp_path: Path) -> None:
    report = await storage.run(full=False, workdir=tmp_path)
    print(report.format())
    assert report.ok, report.format()
