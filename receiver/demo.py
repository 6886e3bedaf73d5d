"""``kling-hooks demo``: the whole pipeline in one process, on loopback, with no Kling account.

It starts the simulator, a Slack-compatible sink and the receiver on free ports, with the
built-in ``downloader`` (into a temporary directory) and ``slack`` plugins enabled. It submits
one task per route through the real submitter over real HTTP (duplicate and out-of-order
callbacks switched on), waits until every task has ended and every delivery has finished
(woken by the writer's commits and the dispatcher's outcomes: nothing polls), then prints each
task's transitions, the files saved, and the Slack messages received. With ``serve``
(``kling-hooks demo --serve``) it then keeps the receiver and the simulator running and
prints the dashboard's URL, signed in through a one-time link, until it is interrupted
(Ctrl-C).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from receiver.app import create_app
from receiver.config import Settings
from receiver.logging import configure_logging
from receiver.models import DeliveryState, Task
from receiver.plugins.registry import LoadedPlugin
from receiver.services import Services
from receiver.serving import listen, receiver_options, running
from receiver.status_client import StatusClient
from receiver.store.deliveries import Job, Outcome
from receiver.tables import format_table
from receiver.transitions import TransitionRow
from receiver.ui.sessions import ONCE_MAX_AGE_S, one_time_link
from submitter import KlingClient, Registrar, Submission, auth_from_keys
from submitter.protocol import Route, TaskStatus
from submitter.simulator import Faults, Simulator
from submitter.tokens import new_secret

EXAMPLE_IMAGE = "https://example.com/kling-hooks/subject.png"
DEMO_TASKS: dict[Route, dict[str, Any]] = {
    Route.IMAGES_GENERATIONS: {"prompt": "a lighthouse at dawn, watercolour", "n": 2},
    Route.IMAGES_MULTI_IMAGE2IMAGE: {
        "subject_image_list": [{"subject_image": EXAMPLE_IMAGE}],
        "prompt": "the subject in a snowy forest",
    },
    Route.VIDEOS_MULTI_IMAGE2VIDEO: {
        "image_list": [{"image": EXAMPLE_IMAGE}, {"image": EXAMPLE_IMAGE}],
        "prompt": "the character turns and waves",
    },
    Route.VIDEOS_TEXT2VIDEO: {"prompt": "waves rolling onto a beach", "duration": "5"},
    Route.VIDEOS_IMAGE2VIDEO: {"image": EXAMPLE_IMAGE, "prompt": "slow zoom in"},
}
TIMEOUT_S = 25.0


class _Ended:
    """Waits until every task has ended and each of its terminal deliveries has finished.

    ``on_commit`` is a writer listener (terminal transitions), ``on_outcome`` a dispatcher
    listener (deliveries that reached ``done`` or ``dead``).
    """

    def __init__(self, plugins: Sequence[LoadedPlugin]) -> None:
        self.plugins = plugins
        self.terminal: dict[str, str] = {}
        self.finished: set[tuple[str, str]] = set()
        self.wanted: set[str] | None = None
        self.done = asyncio.Event()

    def on_commit(self, transitions: list[TransitionRow]) -> None:
        for t in transitions:
            if t.task_status.is_terminal:
                self.terminal[t.task_id] = t.task_status
        self._check()

    def on_outcome(self, job: Job, outcome: Outcome) -> None:
        if outcome.state in (DeliveryState.DONE, DeliveryState.DEAD):
            self.finished.add((job.event.task_id, job.plugin))
        self._check()

    def _check(self) -> None:
        if self.wanted is None or not self.wanted <= set(self.terminal):
            return
        for task_id in self.wanted:
            status = self.terminal[task_id]
            # The demo's plugins filter on status only, so the route does not matter here.
            plugins = {p.name for p in self.plugins if p.plugin.wants(status, None)}
            if not {(task_id, p) for p in plugins} <= self.finished:
                return
        self.done.set()

    async def wait_for(self, task_ids: set[str]) -> None:
        self.wanted = task_ids
        self._check()
        await self.done.wait()


class SlackSink:
    """A Slack-compatible incoming webhook on loopback: answers ``ok`` and keeps each post."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.app = Starlette(
            routes=[routing.Route("/services/{path:path}", self._post, methods=["POST"])]
        )

    async def _post(self, request: Request) -> Response:
        self.messages.append(await request.body())
        return PlainTextResponse("ok")


async def run_demo(
    seed: int = 1,
    out: TextIO | None = None,
    delay_s: tuple[float, float] = (0.3, 1.2),
    directory: Path | None = None,
    serve: bool = False,
) -> int:
    """Run the demo; returns the exit code (0 when every task ended, 1 otherwise).

    Args:
        seed: The simulator's seed (which tasks fail, which callbacks repeat).
        out: Where to print (default stdout).
        delay_s: The simulator's (min, max) seconds between a task's states.
        directory: Where the database and the downloads go; by default a new temporary
            directory, which is kept (and printed) so the files can be looked at.
        serve: Then keep the servers running, and print a one-time sign-in link to the
            dashboard (``receiver.ui``), until cancelled (Ctrl-C: ``KeyboardInterrupt``
            out of ``asyncio.run``).
    """
    import sys

    out = out or sys.stdout
    configure_logging("auto", "warning")  # JSON lines, not ANSI colours, into a file
    faults = Faults(failure_rate=0.2, duplicate_rate=0.5, reorder_rate=0.5)
    simulator = Simulator(faults=faults, delay_s=delay_s, seed=seed)
    slack = SlackSink()
    tmp = directory or Path(tempfile.mkdtemp(prefix="kling-hooks-demo-"))
    tmp.mkdir(parents=True, exist_ok=True)
    sock = listen()
    receiver_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    slack_sock = listen()
    slack_url = f"http://127.0.0.1:{slack_sock.getsockname()[1]}/services/T0/B0/demo"
    downloads = tmp / "downloads"
    settings = _settings(_new_database(tmp), receiver_url, slack_url, downloads)
    ready: asyncio.Future[Services] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    async with (
        running(simulator.app) as sim_url,
        running(slack.app, sock=slack_sock),
        running(
            create_app(settings, on_started=ready.set_result),
            sock=sock,
            options=receiver_options(settings),
        ),
    ):
        print(f"simulator  {sim_url}   (duplicates and reordering on)", file=out)
        print(f"receiver   {receiver_url}   database {settings.kling_hooks_db}", file=out)
        print(f"slack      {slack_url}   downloads {downloads}\n", file=out)
        svc = await ready
        ended = _Ended(svc.plugins)
        svc.writer.add_listener(ended.on_commit)
        svc.dispatcher.add_listener(ended.on_outcome)
        submissions = await _submit_all(svc, sim_url)
        try:
            await asyncio.wait_for(ended.wait_for({s.task_id for s in submissions}), TIMEOUT_S)
        except TimeoutError:
            print(f"not every task ended within {TIMEOUT_S:.0f} s", file=out)
            return 1
        await simulator.wait_idle()
        tasks = await _fetch(receiver_url, svc.credentials.api_token, submissions)
        _report(tasks, submissions, time.monotonic() - started, len(slack.messages), tmp, out)
        if serve:
            link = one_time_link(receiver_url, settings, svc.credentials.api_token)
            print(
                f"\ndashboard  {link}\n(a one-time sign-in link, valid for "
                f"{ONCE_MAX_AGE_S // 60} minutes; the simulator and the receiver run until "
                f"Ctrl-C)\napi token  {svc.credentials.api_token}\n(this run's own: it signs "
                f"in to {receiver_url}/ui/ again, and the CLI's --url {receiver_url} takes it "
                f"as KLING_HOOKS_API_TOKEN)\nThe database and the downloads are kept in {tmp}",
                file=out,
                flush=True,
            )
            await asyncio.Event().wait()  # until cancelled
    print(f"The database and the downloads are kept in {tmp}", file=out)
    return 0


def _new_database(directory: Path) -> Path:
    """``demo.db`` in ``directory``, or ``demo-2.db``, ``demo-3.db``... when an earlier run
    left one there: the seeded simulator gives the same task_ids each run, which a database
    of an earlier run holds for other external_task_ids already."""
    db, number = directory / "demo.db", 1
    while db.exists():
        number += 1
        db = directory / f"demo-{number}.db"
    return db


def _settings(db: Path, receiver_url: str, slack_url: str, downloads: Path) -> Settings:
    """The demo receiver's settings: fresh secrets, the downloader and the Slack plugin, and a
    SQLite file of its own even where ``KLING_HOOKS_DATABASE_URL`` is set (the demo's tasks
    are simulated: they must not land in a real database)."""
    return Settings(
        kling_hooks_db=db,
        kling_hooks_database_url=None,
        kling_hooks_public_url=receiver_url,
        kling_hooks_api_url=receiver_url,
        kling_api_key=SecretStr("demo-key"),
        kling_hooks_secret=SecretStr(new_secret()),
        kling_hooks_api_token=SecretStr(new_secret()),
        kling_hooks_log_level="warning",
        plugins={
            # The simulator serves results on loopback, which the downloader refuses
            # unless told otherwise (a callback must not reach internal services).
            "downloader": {"directory": str(downloads), "allow_private_hosts": True},
            "slack": {"webhook_url": slack_url},
        },
    )


async def _submit_all(svc: Services, sim_url: str) -> list[Submission]:
    registrar = Registrar(svc.settings.api_url, svc.credentials.api_token)
    async with KlingClient(
        api_base=sim_url,
        auth=auth_from_keys("demo-key", None, None),
        tokens=svc.credentials.tokens,
        public_url=svc.settings.public_url,
        registrar=registrar,
    ) as client:
        try:
            return list(
                await asyncio.gather(
                    *[client.submit(route, body) for route, body in DEMO_TASKS.items()]
                )
            )
        finally:
            await registrar.aclose()


async def _fetch(url: str, token: str, submissions: list[Submission]) -> list[Task]:
    async with StatusClient(url, token) as client:
        return list(await asyncio.gather(*[client.task(s.external_task_id) for s in submissions]))


def _report(
    tasks: list[Task],
    submissions: list[Submission],
    elapsed_s: float,
    slack_messages: int,
    directory: Path,
    out: TextIO,
) -> None:
    rows = []
    for task, sub in zip(tasks, submissions, strict=True):
        start = task.transitions[0].received_at
        steps = "  ".join(f"{t.task_status} +{t.received_at - start}ms" for t in task.transitions)
        counts = task.callbacks
        extra = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()) if v != "new")
        received = f"{sum(counts.values())}" + (f" ({extra})" if extra else "")
        rows.append((sub.external_task_id, task.route, steps, received, task.task_status))
    print(
        format_table(
            ["task", "route", "transitions (time after submit)", "callbacks", "final"], rows
        ),
        file=out,
    )
    files = [
        (Path(f.path).relative_to(directory), f.bytes, f.sha256[:12])
        for t in tasks
        for f in t.files
    ]
    print("\n" + format_table([f"saved in {directory}", "bytes", "sha256"], files), file=out)
    final = [t.task_status for t in tasks]
    succeeded, failed = final.count(TaskStatus.SUCCEED), final.count(TaskStatus.FAILED)
    print(
        f"\n{len(tasks)} tasks ended in {elapsed_s:.1f} s: {succeeded} succeed, "
        f"{failed} failed. {len(files)} files saved, {slack_messages} Slack "
        "messages sent.\nNext: run kling-hooks simulate, serve and submit yourself (README,"
        ' "Submitting tasks").',
        file=out,
    )
