"""The dashboard over plain HTTP against a real uvicorn receiver: its headers, its refusals
(signed out, Origin, CSRF, bad input), files by id only, no secret in any page, the switch,
and ``kling-hooks demo --serve``."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import pytest

from receiver.ui.rendering import CONTENT_SECURITY_POLICY
from tests.conftest import API_TOKEN, KLING_HOOKS, SECRET, make_settings, start_receiver, task_body
from tests.ui_support import start_rig

pytestmark = pytest.mark.both_backends

PAGES = ["/ui/", "/ui/deliveries", "/ui/overview"]
SLACK_URL = "http://127.0.0.1:9/services/T0/B0/slack-secret-part"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def signed_in(http: httpx.AsyncClient, url: str) -> str:
    """Sign ``http`` in with the API token; returns the session's CSRF token."""
    answer = await http.post(
        f"{url}/ui/sign-in", data={"secret": API_TOKEN, "next": "/ui/"}, headers={"Origin": url}
    )
    assert answer.status_code == 303, answer.text
    page = (await http.get(f"{url}/ui/")).text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found[1]


async def test_pages_need_a_session_and_carry_strict_headers(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        for path in [*PAGES, "/ui/tasks/x"]:
            answer = await r.http.get(r.url + path)
            assert answer.status_code == 303 and answer.headers["location"].startswith(
                "/ui/sign-in?next="
            )
        assert (await r.http.get(f"{r.url}/ui/events")).status_code == 401
        assert (await r.http.get(f"{r.url}/ui/files/1")).status_code == 401
        await signed_in(r.http, r.url)
        for path in PAGES:
            answer = await r.http.get(r.url + path)
            assert answer.status_code == 200
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["cache-control"] == "no-store"
            assert "<script>" not in answer.text and "style=" not in answer.text
        static = await r.http.get(f"{r.url}/ui/static/ui.css")
        assert static.status_code == 200 and static.headers["cache-control"].startswith("public")
        assert "etag" in static.headers


async def test_bad_input_gets_a_4xx_page_naming_it(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        await signed_in(r.http, r.url)
        cases = {
            "/ui/?task_status=done": (400, "task_status=&#39;done&#39; is not one of"),
            "/ui/?colour=red": (400, "&#39;colour&#39; is not a query parameter of /ui/"),
            "/ui/?cursor=-1": (400, "cursor=&#39;-1&#39; is not a whole number"),
            "/ui/deliveries?state=lost": (400, "state=&#39;lost&#39;"),
            "/ui/tasks/unknown": (404, "no task with that task_id"),
            "/ui/files/12": (404, "no saved file with id 12"),
            "/ui/files/..%2F..%2Fetc%2Fpasswd": (404, "no such page"),
            "/ui/nowhere": (404, "no such page"),
            "/ui/events?since=x": (400, "since=&#39;x&#39;"),
        }
        for path, (status, message) in cases.items():
            answer = await r.http.get(r.url + path)
            assert (answer.status_code, message in answer.text) == (status, True), path


async def test_state_changing_forms_need_the_origin_and_the_csrf_token(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path)) as r:
        csrf = await signed_in(r.http, r.url)
        replay = f"{r.url}/ui/deliveries/replay"
        without_origin = await r.http.post(replay, data={"csrf": csrf})
        other_origin = await r.http.post(
            replay, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        wrong_token = await r.http.post(replay, data={"csrf": "x"}, headers={"Origin": r.url})
        no_token = await r.http.post(replay, headers={"Origin": r.url})
        good = await r.http.post(replay, data={"csrf": csrf}, headers={"Origin": r.url})
        assert [a.status_code for a in (without_origin, other_origin, wrong_token, no_token)] == [
            403
        ] * 4
        assert "Origin" in other_origin.text and "CSRF" in wrong_token.text
        assert good.status_code == 303 and good.headers["location"] == "/ui/deliveries?replayed=0"
        sign_in_elsewhere = await r.http.post(
            f"{r.url}/ui/sign-in", data={"secret": API_TOKEN}, headers={"Origin": "null"}
        )
        assert sign_in_elsewhere.status_code == 403


async def test_saved_files_are_served_by_id_with_their_recorded_type(tmp_path: Path) -> None:
    async with start_rig(tmp_path) as rig:
        sub = await rig.submit("images/generations", {"prompt": "p", "n": 1})
        await rig.simulator.wait_idle()
        await rig.outcomes.ended(2)
        http = rig.receiver.http
        await signed_in(http, rig.receiver.url)
        page = (await http.get(f"{rig.receiver.url}/ui/tasks/{sub.task_id}")).text
        (file_id,) = re.findall(r'src="/ui/files/(\d+)"', page)
        answer = await http.get(f"{rig.receiver.url}/ui/files/{file_id}")
        task = (await rig.receiver.get_task(sub.task_id)).json()
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]
    assert answer.content == Path(task["files"][0]["path"]).read_bytes()
    assert task["files"][0]["path"] not in page  # the page names files by id only


async def test_no_secret_appears_in_any_page(tmp_path: Path) -> None:
    plugins = {
        "slack": {"webhook_url": SLACK_URL, "retry_schedule_s": []},
        "webhook": {"url": "http://127.0.0.1:9/hook", "secret": WEBHOOK_SECRET},
    }
    async with start_receiver(make_settings(tmp_path, plugins=plugins)) as r:
        await r.register("ts-1", "kh-secret", "images/generations", {"prompt": "p"})
        callback_url = r.callback_url("kh-secret")
        await r.post_callback("kh-secret", task_body("ts-1", "succeed", "kh-secret"))
        await signed_in(r.http, r.url)
        seen = [(await r.http.get(r.url + p)).text for p in [*PAGES, "/ui/tasks/ts-1"]]
    token = callback_url.rsplit("/", 1)[1]
    for text in seen:
        for secret in (API_TOKEN, SECRET, token, SLACK_URL, "slack-secret-part", WEBHOOK_SECRET):
            assert secret not in text


async def test_the_session_cookie_is_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, kling_hooks_public_url="https://hooks.example.com")
    async with start_receiver(settings) as r:
        answer = await r.http.post(
            f"{r.url}/ui/sign-in",
            data={"secret": API_TOKEN},
            headers={"Origin": "https://hooks.example.com"},  # the public URL's origin
        )
    cookie = answer.headers["set-cookie"]
    assert answer.status_code == 303
    for attribute in ("HttpOnly", "Max-Age=43200", "Path=/ui", "SameSite=strict", "Secure"):
        assert attribute in cookie


async def test_the_dashboard_is_off_with_kling_hooks_ui_false(tmp_path: Path) -> None:
    async with start_receiver(make_settings(tmp_path, kling_hooks_ui=False)) as r:
        assert (await r.http.get(f"{r.url}/ui/")).status_code == 404
        assert (await r.http.get(f"{r.url}/ui/sign-in")).status_code == 404


async def test_demo_serve_prints_a_signed_in_link_to_every_task_until_interrupted(
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS), "demo", "--serve", "--dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not (line := (await proc.stdout.readline()).decode()).startswith("dashboard"):
                assert line, "".join(lines)
                lines.append(line)
        link = line.split()[1]
        await proc.stdout.readline()  # what the link is
        token = (await proc.stdout.readline()).decode().split()
        external_ids = re.findall(r"^(kh-\w+)\s", "".join(lines), re.MULTILINE)
        base = link.split("/ui/")[0]
        async with httpx.AsyncClient(follow_redirects=True, timeout=10) as http:
            listing = await http.get(link)
            again = await http.get(link)  # one-time: refused the second time
            pages = [(await http.get(f"{base}/ui/tasks/{e}")).text
                     for e in external_ids]  # fmt: skip
        async with httpx.AsyncClient(timeout=10) as other:  # another browser, later
            signed = await other.post(
                f"{base}/ui/sign-in", data={"secret": token[2]}, headers={"Origin": base}
            )
    finally:
        proc.send_signal(signal.SIGINT)
        code = await proc.wait()
    assert code == 0
    assert len(external_ids) == 5 and all(e in listing.text for e in external_ids)
    assert again.status_code == 403
    assert token[:2] == ["api", "token"] and signed.status_code == 303  # the printed token
    assert sum("/ui/files/" in p for p in pages) == 4  # every succeeded task's files
    assert all("Replay" in p for p in pages)  # and its deliveries


async def test_a_result_url_is_a_link_only_when_it_is_http(tmp_path: Path) -> None:
    images = [
        {"index": 0, "url": "javascript:window.pwned=1"},
        {"index": 1, "url": "https://cdn.klingai.com/a.png"},
    ]
    async with start_receiver(make_settings(tmp_path)) as r:
        body = task_body("tx-1", "succeed", "kh-url", task_result={"images": images})
        assert (await r.post_callback("kh-url", body)).status_code == 200
        await signed_in(r.http, r.url)
        page = (await r.http.get(f"{r.url}/ui/tasks/tx-1")).text
        assert "javascript:window.pwned=1" in page  # shown, as text
        assert 'href="javascript:' not in page
        assert 'href="https://cdn.klingai.com/a.png"' in page
