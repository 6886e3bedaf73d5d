"""Benchmark: how soon an open dashboard shows a committed callback (issue 12: "within a second").

Run it from the repository root, in the project's virtualenv with its test extra
(``pip install '.[test]'``: Playwright), and Debian's ``chromium``::

    python bench/ui_live.py                  # 40 callbacks, one every 0.5 s
    python bench/ui_live.py --callbacks 100 --interval 0.2

What it does: starts ``kling-hooks serve`` (this virtualenv's, production settings, no
plugins) on a fresh database, signs a Chromium page (Playwright, ``/usr/bin/chromium``) in
with the API token, and opens the task list. Then, one at a time, it sends a distinct valid
callback (httpx, loopback) for a new task, and measures from the moment its 200 arrived until
the task's id is in the open page's text, with no reload (the page's live update: the
writer's commit signal, the Server-Sent Event, the page's fetch and swap). The moment the text
appeared is taken in the browser (``requestAnimationFrame`` polling of ``innerText``), so the
figure is an upper bound by one frame. Prints each figure's p50, p90, p99 and max in ms, and
exits 1 when a callback never showed up within ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench import processes
from bench.workload import API_TOKEN, distinct_callbacks

CHROMIUM = "/usr/bin/chromium"
JSON = {"Content-Type": "application/json"}


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def measure(base: str, callbacks: int, interval_s: float, timeout_s: float) -> list[float]:
    """Latencies (ms) from each callback's 200 to its task id in the open page's text.

    Raises:
        TimeoutError: a callback did not show within ``timeout_s``.
    """
    from playwright.async_api import async_playwright

    items = distinct_callbacks(callbacks, prefix="live")
    found: list[float] = []
    async with async_playwright() as pw, httpx.AsyncClient(base_url=base) as http:
        browser = await pw.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page()
        await page.goto(f"{base}/ui/sign-in")
        await page.fill("#secret", API_TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/ui/")
        live = "document.getElementById('live-state')?.textContent === 'Live'"
        await page.wait_for_function(live)
        for path, body in items:
            task_id = json.loads(body)["task_id"]
            seen = page.evaluate(
                """([id, limit]) => new Promise((resolve) => {
                    const start = performance.now();
                    const look = () => {
                        if (document.body.innerText.includes(id)) {
                            resolve(performance.timeOrigin + performance.now());
                        } else if (performance.now() - start > limit) {
                            resolve(null);
                        } else {
                            requestAnimationFrame(look);
                        }
                    };
                    look();
                })""",
                [task_id, timeout_s * 1000],
            )
            watching = asyncio.ensure_future(seen)
            await asyncio.sleep(0.05)  # the browser's watch is running before the callback
            answer = await http.post(path, content=body, headers=JSON)
            acked_ms = time.time() * 1000
            answer.raise_for_status()
            shown_ms = await watching
            if shown_ms is None:
                raise TimeoutError(f"{task_id} did not show within {timeout_s} s")
            found.append(shown_ms - acked_ms)
            await asyncio.sleep(interval_s)
        await browser.close()
    return found


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the receiver and the measurement, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callbacks", type=int, default=40, help="callbacks to send (40)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between them")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one may take")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kling-hooks-ui-live-"))
    port = processes.free_port()
    log = workdir / "serve.log"
    proc = processes.start_server(processes.serve_command(port, db=workdir / "live.db"), log)
    base = f"http://127.0.0.1:{port}"
    try:
        processes.wait_ready(base + "/readyz", proc, log)
        try:
            latencies = asyncio.run(measure(base, args.callbacks, args.interval, args.timeout))
        except TimeoutError as exc:
            print(f"FAILED: {exc}")
            sys.exit(1)
    finally:
        processes.stop_server(proc)
    print(
        f"{len(latencies)} callbacks, 200 -> task id on the open page (ms): "
        f"p50 {statistics.median(latencies):.0f}, p90 {percentile(latencies, 90):.0f}, "
        f"p99 {percentile(latencies, 99):.0f}, max {max(latencies):.0f}"
    )


if __name__ == "__main__":
    main()
