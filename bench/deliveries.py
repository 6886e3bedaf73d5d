"""The plugin issue's "done when" run, end to end, printing its figures.

    python bench/deliveries.py [--tasks 20] [--seed 1]

What it does, all on loopback:

1. Starts the Kling simulator (failures, duplicate and out-of-order callbacks on; it serves the
   result files and retries callbacks that fail) and a Slack-compatible sink that answers 500
   to its first posts and 429 with Retry-After to the next ones.
2. Starts ``kling-hooks serve`` as a subprocess, with the downloader and slack plugins.
3. Submits ``--tasks`` tasks through the real submitter; once half of the Slack posts have
   arrived, kills the receiver with SIGKILL and starts it again on the same database.
4. Puts the Slack sink into an outage from the restart on, until every open Slack delivery is
   ``dead``; then heals it and replays them with ``kling-hooks redeliver --all --state dead``.
5. Checks: every succeeded task's files are on disk with the simulator's sha256; Slack got a
   message for every terminal transition, repeats only with the same idempotency key;
   nothing is left pending, failed or running; every replayed dead delivery is done.

It waits on the receiver's JSON log lines and on the sinks' own events, never on a timer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import random
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route as HttpRoute

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/deliveries.py`

from bench.suites.serve_process import ServeProcess
from receiver.logging import configure_logging
from receiver.serving import listen, running
from submitter import KlingClient, Registrar, auth_from_keys
from submitter.protocol import Route
from submitter.simulator import Faults, Simulator
from submitter.tokens import CallbackTokens, new_secret

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
#: Longest wait for the next delivery outcome while draining, seconds.
DRAIN_WAIT_S = 120.0
IMAGE = "https://example.com/kling-hooks/subject.png"
BODIES: list[tuple[Route, dict[str, Any]]] = [
    (Route.IMAGES_GENERATIONS, {"prompt": "a lighthouse at dawn", "n": 2}),
    (Route.VIDEOS_TEXT2VIDEO, {"prompt": "waves rolling onto a beach", "duration": "5"}),
    (Route.VIDEOS_IMAGE2VIDEO, {"image": IMAGE, "prompt": "slow zoom in"}),
]


class SlackSink:
    """Slack-compatible: 500 to the first ``fail_first`` posts, then 429 (Retry-After: 1) to
    the next ``throttle``, then ``ok``; ``outage`` makes it answer 500 to everything."""

    def __init__(self, fail_first: int, throttle: int) -> None:
        self.fail_first, self.throttle = fail_first, throttle
        self.posts: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.outage = False
        self.changed = asyncio.Condition()
        self.app = Starlette(routes=[HttpRoute("/services/{p:path}", self.post, methods=["POST"])])

    async def post(self, request: Request) -> Response:
        message = json.loads(await request.body())
        self.posts.append(message)
        async with self.changed:
            self.changed.notify_all()
        if self.outage or len(self.posts) <= self.fail_first:
            return PlainTextResponse("internal_error", status_code=500)
        if len(self.posts) <= self.fail_first + self.throttle:
            return PlainTextResponse("rate_limited", 429, headers={"Retry-After": "1"})
        self.accepted.append(message)
        return PlainTextResponse("ok")

    async def wait(self, pred: Any) -> None:
        async with self.changed:
            await self.changed.wait_for(pred)


def phase(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))


def states(db: Path) -> dict[int, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, state FROM deliveries"))


async def drain(receiver: ServeProcess, db: Path) -> None:
    """Wait (on log lines) until no delivery is pending, failed or running."""
    while True:
        seen = len(receiver.events)  # before the look: an outcome after it wakes the wait
        open_ = {i for i, s in states(db).items() if s in ("pending", "failed", "running")}
        if not open_:
            return
        await receiver.until(
            lambda e: e.get("event") in ("delivery_done", "delivery_dead"),
            after=seen,
            timeout_s=DRAIN_WAIT_S,
        )


async def run(tasks: int, seed: int) -> int:
    configure_logging("console", "warning")
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="kling-hooks-bench-"))
    db, downloads = work / "kling-hooks.db", work / "downloads"
    port_sock = listen()
    port = port_sock.getsockname()[1]
    port_sock.close()
    public_url = f"http://127.0.0.1:{port}"
    secret, api_token = new_secret(), new_secret()
    slack = SlackSink(fail_first=max(2, tasks // 4), throttle=2)
    slack_sock = listen()
    slack_url = f"http://127.0.0.1:{slack_sock.getsockname()[1]}/services/T0/B0/bench"
    config = work / "kling-hooks.toml"
    config.write_text(
        f'kling_hooks_db = "{db}"\nkling_hooks_public_url = "{public_url}"\n\n'
        f'[plugins.slack]\nwebhook_url = "{slack_url}"\nretry_schedule_s = [0.5, 1, 2]\n\n'
        f'[plugins.downloader]\ndirectory = "{downloads}"\nallow_private_hosts = true\n'
        "retry_schedule_s = [0.5, 1, 2]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env.update(
        KLING_HOOKS_SECRET=secret,
        KLING_HOOKS_API_TOKEN=api_token,
        KLING_HOOKS_LOG_FORMAT="json",
        KLING_HOOKS_LOG_LEVEL="debug",  # delivery_done is a debug line
    )
    simulator = Simulator(
        faults=Faults(failure_rate=0.2, duplicate_rate=0.5, reorder_rate=0.5),
        delay_s=(0.2, 1.5),
        seed=seed,
        callback_retries=10,
        callback_backoff_s=0.2,
    )
    receiver = ServeProcess(config, port, env)
    started = time.monotonic()
    async with running(simulator.app) as sim_url, running(slack.app, sock=slack_sock):
        await receiver.start()
        phase(f"receiver up on {public_url}; submitting {tasks} tasks")
        registrar = Registrar(public_url, api_token)
        async with KlingClient(
            api_base=sim_url,
            auth=auth_from_keys("bench-key", None, None),
            tokens=CallbackTokens([secret]),
            public_url=public_url,
            registrar=registrar,
        ) as client:
            jobs = [client.submit(*BODIES[rng.randrange(len(BODIES))]) for _ in range(tasks)]
            submissions = await asyncio.gather(*jobs)
        await registrar.aclose()
        phase("submitted; waiting for the first Slack messages")
        half = max(1, tasks // 2)
        await slack.wait(lambda: len(slack.accepted) >= half // 2)
        before_kill = counts(db)
        await receiver.kill()
        phase(f"killed with SIGKILL at {before_kill}; restarting")
        killed_at = time.monotonic()
        slack.outage = True  # until every open delivery has run out of attempts
        await receiver.start()
        restarted_s = time.monotonic() - killed_at
        await simulator.wait_idle()  # every callback has been delivered (with retries)
        phase("every callback delivered; waiting for deliveries to end (Slack is down)")
        await drain(receiver, db)
        phase(f"deliveries ended: {counts(db)}; Slack back up, replaying the dead ones")
        slack.outage = False
        dead_before = counts(db).get("dead", 0)
        replay = await asyncio.create_subprocess_exec(
            str(KLING_HOOKS),
            "redeliver",
            "--all",
            "--state",
            "dead",
            "--config",
            str(config),
            env={**env, "KLING_HOOKS_API_URL": public_url},
            stdout=asyncio.subprocess.PIPE,
        )
        replay_out, _ = await replay.communicate()
        await drain(receiver, db)
        async with httpx.AsyncClient(
            base_url=public_url, headers={"Authorization": f"Bearer {api_token}"}
        ) as api:
            answers = [(await api.get(f"/tasks/{s.task_id}")).json() for s in submissions]
        async with httpx.AsyncClient() as http:
            expected = {}
            for task in answers:
                for f in task["files"]:
                    expected[f["url"]] = hashlib.sha256((await http.get(f["url"])).content)
        await receiver.stop()
    elapsed_s = time.monotonic() - started

    succeeded = [t for t in answers if t["task_status"] == "succeed"]
    terminal = {f"{t['task_id']}:{t['task_status']}" for t in answers}
    wanted_urls = {
        f"{t['task_id']}:{u}"
        for t in succeeded
        for items in t["task_result"].values()
        for item in items
        for u in [item["url"]]
    }
    files = [f for t in succeeded for f in t["files"]]
    good_files = [
        f
        for f in files
        if Path(f["path"]).is_file()
        and hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest() == f["sha256"]
        and expected[f["url"]].hexdigest() == f["sha256"]
    ]
    keys = collections.Counter(_key(m) for m in slack.accepted)
    after = counts(db)
    print(f"tasks {len(answers)}: {len(succeeded)} succeed, {len(answers) - len(succeeded)} failed")
    print(
        f"receiver killed with SIGKILL at deliveries {before_kill}; back up in {restarted_s:.2f} s"
    )
    print(
        f"files: {len(good_files)} of {len(files)} on disk with the right sha256 "
        f"(result URLs: {len(wanted_urls)})"
    )
    print(
        f"slack posts: {len(slack.posts)} received, {len(slack.accepted)} accepted; "
        f"terminal transitions {len(terminal)}, with a message: {len(terminal & set(keys))}; "
        f"repeated (same idempotency key): {sum(1 for n in keys.values() if n > 1)}; "
        f"messages for anything else: {len(set(keys) - terminal)}"
    )
    print(f"dead before replay: {dead_before}; replay said: {replay_out.decode().strip()}")
    print(f"deliveries at the end: {after}")
    print(f"whole run: {elapsed_s:.1f} s; work directory {work}")
    ok = (
        len(good_files) == len(files) == len(wanted_urls)
        and terminal <= set(keys)
        and not set(keys) - terminal
        and set(after) == {"done"}
    )
    print("RESULT:", "all checks hold" if ok else "A CHECK FAILED")
    return 0 if ok else 1


def _key(message: dict[str, Any]) -> str:
    """The idempotency key the slack plugin puts in its message (context block)."""
    found = re.findall(
        r"event ([^\s`*]+:(?:succeed|failed|processing|submitted))", json.dumps(message)
    )
    return found[0] if found else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return asyncio.run(run(args.tasks, args.seed))


if __name__ == "__main__":
    sys.exit(main())
