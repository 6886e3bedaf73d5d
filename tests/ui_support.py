"""What the dashboard's tests share: a receiver (real uvicorn, real SQLite) with the downloader
and a plugin that fails once, the simulator serving real PNG and MP4 results, tasks submitted
through the real submitter, and a signed-in Chromium page (Debian's ``/usr/bin/chromium``,
driven by Playwright) that records every console error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from receiver.plugins import PluginSettings
from receiver.plugins.downloader import Downloader, DownloaderSettings
from receiver.serving import running
from receiver.ui.sessions import one_time_link
from submitter import KlingClient, Registrar, Submission, auth_from_keys
from submitter.simulator import Faults, Simulator
from tests.conftest import API_TOKEN, Outcomes, Receiver, RecordingPlugin, make_settings
from tests.conftest import start_receiver as start_bare_receiver

CHROMIUM = Path("/usr/bin/chromium")
#: Screenshots of the main pages (docs/ has copies): KLING_HOOKS_ARTIFACTS, else test-artifacts/.
ARTIFACTS = Path(
    os.environ.get("KLING_HOOKS_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)


@dataclass
class Rig:
    """A receiver, the simulator and a way to submit tasks to both."""

    receiver: Receiver
    sim_url: str
    simulator: Simulator
    flaky: RecordingPlugin
    outcomes: Outcomes
    submissions: list[Submission] = field(default_factory=list)

    async def submit(self, route: str, body: dict[str, Any]) -> Submission:
        """Create a task at the simulator, registered with the receiver (real HTTP)."""
        registrar = Registrar(self.receiver.url, API_TOKEN)
        async with KlingClient(
            api_base=self.sim_url,
            auth=auth_from_keys("any-key", None, None),
            tokens=self.receiver.services.credentials.tokens,
            public_url=self.receiver.url,
            registrar=registrar,
        ) as client:
            try:
                submission = await client.submit(route, body)
            finally:
                await registrar.aclose()
        self.submissions.append(submission)
        return submission

    def sign_in_link(self) -> str:
        return one_time_link(self.receiver.url, self.receiver.services.settings, API_TOKEN)


@contextlib.asynccontextmanager
async def start_rig(tmp_path: Path, **settings: Any) -> AsyncIterator[Rig]:
    """The receiver with the downloader and ``flaky`` (a plugin whose first attempt fails, with
    no retry: that delivery is dead), and the simulator (no faults unless asked)."""
    downloader = Downloader(
        DownloaderSettings(directory=tmp_path / "downloads", allow_private_hosts=True)
    )
    flaky = RecordingPlugin(
        PluginSettings(retry_schedule_s=[], statuses=["succeed"]),
        name="flaky",
        fail_first=1,
        error=RuntimeError("flaky: the target answered 500"),
    )
    faults = Faults(failure_rate=0.0)
    simulator = Simulator(faults=faults, delay_s=(0.2, 0.4), seed=5)
    async with (
        start_bare_receiver(make_settings(tmp_path, **settings), [downloader, flaky]) as r,
        running(simulator.app) as sim_url,
    ):
        yield Rig(r, sim_url, simulator, flaky, Outcomes(r))


async def settle(rig: Rig, deliveries: int) -> None:
    """Wait until the simulator sent everything and ``deliveries`` deliveries ended."""
    await rig.simulator.wait_idle()
    await rig.outcomes.ended(deliveries)


@dataclass
class Page:
    """A Playwright page and the console errors (and uncaught exceptions) it logged."""

    page: Any
    errors: list[str]

    def assert_no_console_errors(self) -> None:
        assert self.errors == [], self.errors

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@contextlib.asynccontextmanager
async def browser_page(width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A fresh Chromium context and page (no cookies), recording console errors."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            yield Page(page, errors)
        finally:
            await browser.close()
