"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
uvicorn receiver (SQLite file, downloader) and the simulator serving real PNG and MP4 files.

Every test ends by checking that no page logged a console error (a CSP violation, a failed
load, a script error). The main pages' screenshots are written to ``test-artifacts/``
(``tests/ui_support.py``, ``ARTIFACTS``); ``docs/`` holds copies for the README.
"""

from __future__ import annotations

import time
from pathlib import Path

from submitter.protocol import Route
from tests.conftest import API_TOKEN, task_body
from tests.ui_support import Rig, browser_page, settle, start_rig

IMAGE = {"prompt": "a lighthouse at dawn, watercolour", "n": 1}
VIDEO = {"prompt": "waves rolling onto a beach", "duration": "5"}

#: Every element with text: its colour against the first opaque background behind it,
#: as WCAG 2 contrast ratios; the elements under 4.5:1 (3:1 for large text) are returned.
CONTRAST_JS = """() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const back = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0.9) { if (c.length < 4 || c[3] > 0) return c; }
    }
    return [255, 255, 255];
  };
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || box.width === 0 || el.closest(".visually-hidden, .skip, svg")) continue;
    const style = getComputedStyle(el);
    const [a, b] = [lum(rgb(style.color)), lum(back(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const large = parseFloat(style.fontSize) >= 24 ||
      (parseFloat(style.fontSize) >= 18.66 && Number(style.fontWeight) >= 700);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < (large ? 3 : 4.5)) bad.push(`${el.tagName} ${text} ${ratio.toFixed(2)}`);
  }
  return bad;
}"""

#: Form controls without an accessible name (a label, aria-label or visible text).
UNLABELLED_JS = """() => [...document.querySelectorAll("input:not([type=hidden]), select, button")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
    && !el.textContent.trim()).map((el) => el.outerHTML.slice(0, 80))"""


async def _first_task(rig: Rig) -> tuple[str, str]:
    """(task_id, external_task_id) of an image task and a video task, both ended."""
    image = await rig.submit(Route.IMAGES_GENERATIONS, IMAGE)
    video = await rig.submit(Route.VIDEOS_TEXT2VIDEO, VIDEO)
    await settle(rig, 4)  # downloader and flaky, for each
    return image.task_id, video.task_id


async def test_sign_in_with_the_api_token_and_refusal_without_it(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        await b.page.goto(f"{rig.receiver.url}/ui/deliveries")
        assert b.page.url.startswith(f"{rig.receiver.url}/ui/sign-in?next=")
        assert await b.page.locator("h1").inner_text() == "Sign in"

        await b.page.fill("#secret", "not the token")
        await b.page.click("button[type=submit]")
        assert "neither the API token" in await b.page.locator("[role=alert]").inner_text()
        assert await b.page.context.cookies() == []

        await b.page.fill("#secret", API_TOKEN)
        await b.page.click("button[type=submit]")
        await b.page.wait_for_url(f"{rig.receiver.url}/ui/deliveries")
        assert await b.page.locator("h1").inner_text() == "Deliveries"
        (cookie,) = await b.page.context.cookies()
        assert cookie["name"] == "kh_session" and cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert 0 < cookie["expires"] - time.time() <= 12 * 3600 + 60

        await b.page.click("text=Sign out")
        await b.page.wait_for_url(f"{rig.receiver.url}/ui/sign-in")
        await b.page.goto(f"{rig.receiver.url}/ui/")
        assert "/ui/sign-in" in b.page.url
        # The refused sign-in's 401 is the one error the browser logs, by design.
        assert [e for e in b.errors if "401" not in e] == []


async def test_task_list_filters_thumbnails_and_task_pages_with_image_and_video(
    tmp_path: Path,
) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        image_id, video_id = await _first_task(rig)
        page = b.page
        await page.goto(rig.sign_in_link())
        rows = page.locator("tr.task-row")
        assert await rows.count() == 2
        thumb = page.locator(f"tr[data-task-id='{image_id}'] img.thumb")
        await thumb.wait_for()
        await page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=await thumb.element_handle()
        )
        poster = page.locator(f"tr[data-task-id='{video_id}'] video.thumb")
        await page.wait_for_function("(v) => v.readyState >= 1", arg=await poster.element_handle())
        assert "waves rolling onto a beach" in await rows.nth(0).inner_text()
        await b.screenshot("tasks.png")

        await page.select_option("#f-route", "videos/text2video")
        await page.click("text=Apply")
        await page.wait_for_url("**/ui/?task_status=&route=videos%2Ftext2video&q=")
        assert await rows.count() == 1
        assert await page.locator(f"tr[data-task-id='{video_id}']").count() == 1
        await page.select_option("#f-status", "failed")
        await page.click("text=Apply")
        assert await rows.count() == 0
        assert "No task matches" in await page.locator("#task-list").inner_text()
        await page.goto(f"{rig.receiver.url}/ui/")
        await page.fill("#f-q", rig.submissions[0].external_task_id)
        await page.click("text=Apply")
        assert await rows.count() == 1
        assert await page.locator(f"tr[data-task-id='{image_id}']").count() == 1

        await page.click("a.task-link")
        image = page.locator("img.full")
        await page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=await image.element_handle()
        )
        task = (await rig.receiver.get_task(image_id)).json()
        assert task["files"][0]["sha256"] in await page.locator(".results").inner_text()

        await page.goto(f"{rig.receiver.url}/ui/tasks/{video_id}")
        video = page.locator("video.full")
        assert await video.get_attribute("controls") is not None
        await page.wait_for_function(
            "(v) => v.readyState >= 1 && v.duration > 0", arg=await video.element_handle()
        )
        assert await video.evaluate("(v) => v.duration") == 5
        await b.screenshot("task.png")
        b.assert_no_console_errors()


async def test_a_failed_task_shows_kling_s_reason(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        await rig.receiver.register("tf-1", "kh-failed", "videos/image2video", {"prompt": "zoom"})
        reason = "Failure to pass the risk control system"
        failed = task_body("tf-1", "failed", "kh-failed", task_status_msg=reason)
        assert (await rig.receiver.post_callback("kh-failed", failed)).status_code == 200
        await b.page.goto(rig.sign_in_link())
        await b.page.click("a.task-link")
        assert await b.page.locator(".failure-reason").inner_text() == reason
        assert "failed" in await b.page.locator(".task-status").inner_text()
        b.assert_no_console_errors()


async def test_replaying_a_dead_delivery_from_its_button_changes_its_state_on_the_page(
    tmp_path: Path,
) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        sub = await rig.submit(Route.IMAGES_GENERATIONS, IMAGE)
        await settle(rig, 2)
        await b.page.goto(rig.sign_in_link())
        await b.page.goto(f"{rig.receiver.url}/ui/deliveries")
        dead = b.page.locator("table.deliveries").first
        assert "Dead letters" in await dead.locator("caption").inner_text()
        assert "flaky: the target answered 500" in await dead.inner_text()
        await b.screenshot("deliveries.png")

        await b.page.goto(f"{rig.receiver.url}/ui/tasks/{sub.task_id}")
        row = b.page.locator("tr", has_text="flaky")
        assert await row.locator(".delivery-state").inner_text() == "dead"
        await row.get_by_role("button", name="Replay").click()
        assert "1 delivery replayed" in await b.page.locator(".notice").inner_text()
        await row.locator(".delivery-state", has_text="done").wait_for(timeout=10_000)
        assert len(rig.flaky.events) == 2  # the dead attempt, and the replay
        b.assert_no_console_errors()


async def test_replaying_every_dead_letter_from_the_deliveries_page(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        await b.page.goto(rig.sign_in_link())
        await b.page.goto(f"{rig.receiver.url}/ui/deliveries")
        replay_all = b.page.get_by_role("button", name="Replay every dead delivery")
        assert await replay_all.count() == 0  # nothing to replay yet
        await rig.submit(Route.IMAGES_GENERATIONS, IMAGE)
        await settle(rig, 2)
        await replay_all.wait_for(timeout=10_000)  # the live update brought it
        await replay_all.click()
        assert "1 delivery replayed" in await b.page.locator(".notice").inner_text()
        await rig.outcomes.ended(3)
        assert len(rig.flaky.events) == 2  # the dead attempt, and the replay
        b.assert_no_console_errors()


async def test_a_callback_appears_on_the_open_task_list_without_a_reload(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        await b.page.goto(rig.sign_in_link())
        await b.page.locator("#live-state", has_text="Live").wait_for()
        await b.page.evaluate("() => { window.notReloaded = true; }")
        sub = await rig.submit(Route.IMAGES_GENERATIONS, IMAGE)
        row = b.page.locator(f"tr[data-task-id='{sub.task_id}']")
        await row.wait_for(timeout=10_000)
        await row.locator(".status", has_text="succeed").wait_for(timeout=10_000)
        assert await b.page.evaluate("() => window.notReloaded") is True
        b.assert_no_console_errors()


async def test_a_duplicate_callback_updates_the_open_task_page_without_a_reload(
    tmp_path: Path,
) -> None:
    # A duplicate records no transition, only its raw callback: the task's counts change.
    async with start_rig(tmp_path) as rig, browser_page() as b:
        body = task_body("tx-dup", "succeed", "kh-dup")
        assert (await rig.receiver.post_callback("kh-dup", body)).status_code == 200
        await b.page.goto(rig.sign_in_link())
        await b.page.goto(f"{rig.receiver.url}/ui/tasks/tx-dup")
        await b.page.locator("#live-state", has_text="Live").wait_for()
        summary = b.page.locator("#task-summary")
        assert "1 new" in await summary.inner_text()
        assert "duplicate" not in await summary.inner_text()
        await b.page.evaluate("() => { window.notReloaded = true; }")
        assert (await rig.receiver.post_callback("kh-dup", body)).status_code == 200
        await b.page.locator("#task-summary", has_text="1 duplicate").wait_for(timeout=10_000)
        assert await b.page.evaluate("() => window.notReloaded") is True
        b.assert_no_console_errors()


async def test_a_replay_form_with_a_wrong_csrf_token_is_refused(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        sub = await rig.submit(Route.IMAGES_GENERATIONS, IMAGE)
        await settle(rig, 2)
        await b.page.goto(rig.sign_in_link())
        await b.page.goto(f"{rig.receiver.url}/ui/tasks/{sub.task_id}")
        await b.page.evaluate(
            "() => document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged')"
        )
        async with b.page.expect_response("**/replay") as answer:
            await b.page.locator("tr", has_text="flaky").get_by_role("button").click()
        assert (await answer.value).status == 403
        assert "CSRF token" in await b.page.locator("[role=alert]").inner_text()
        assert len(rig.flaky.events) == 1  # nothing replayed
        assert [e for e in b.errors if "403" not in e] == []


async def test_script_and_quotes_from_kling_and_the_user_are_shown_as_text(
    tmp_path: Path,
) -> None:
    hostile = '<script>window.pwned = 1</script>"\'><img src=x onerror="window.pwned = 2">'
    async with start_rig(tmp_path) as rig, browser_page() as b:
        await rig.receiver.register("tx-1", "kh-xss", "images/generations", {"prompt": hostile})
        body = task_body("tx-1", "failed", "kh-xss", task_status_msg=hostile)
        assert (await rig.receiver.post_callback("kh-xss", body)).status_code == 200
        await b.page.goto(rig.sign_in_link())
        assert hostile[:60] in await b.page.locator("td.prompt").inner_text()
        await b.page.click("a.task-link")
        assert await b.page.locator(".failure-reason").inner_text() == hostile
        assert hostile in await b.page.locator(".request").inner_text()
        assert await b.page.evaluate("() => window.pwned") is None
        assert await b.page.locator("img[src=x]").count() == 0
        b.assert_no_console_errors()


async def test_every_page_is_labelled_keyboard_usable_readable_and_fits_a_phone(
    tmp_path: Path,
) -> None:
    async with start_rig(tmp_path) as rig, browser_page() as b:
        image_id, _ = await _first_task(rig)
        await b.page.goto(rig.sign_in_link())
        await b.page.keyboard.press("Tab")
        assert await b.page.evaluate("() => document.activeElement.textContent") == (
            "Skip to content"
        )
        await b.page.keyboard.press("Enter")
        assert await b.page.evaluate("() => document.activeElement.id") == "main"
        pages = ["/ui/", f"/ui/tasks/{image_id}", "/ui/deliveries", "/ui/overview"]
        for width in (1280, 375):
            await b.page.set_viewport_size({"width": width, "height": 800})
            for path in pages:
                await b.page.goto(rig.receiver.url + path)
                assert await b.page.evaluate(UNLABELLED_JS) == [], path
                assert await b.page.evaluate(CONTRAST_JS) == [], path
                overflow = "() => document.documentElement.scrollWidth - window.innerWidth"
                assert await b.page.evaluate(overflow) <= 0, (path, width)
        await b.page.set_viewport_size({"width": 1280, "height": 800})
        await b.page.goto(rig.receiver.url + "/ui/overview")
        assert await b.page.locator("svg rect").count() > 0
        await b.screenshot("overview.png")
        b.assert_no_console_errors()
