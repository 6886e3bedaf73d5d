"""Provider profiles against the seed pages: every curl example gets the wire request its page
documents, and every documented violation is refused with nothing sent.

The curl examples are read from ``docs/kling/seeds/`` itself, so a page's example that the
table below does not cover fails the suite. Each row is sent by :class:`KlingClient` (its
provider inferred from the curl's host, as ``KLING_API_BASE`` would be) to the simulator
running that provider's profile, which records every request it receives.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from receiver.serving import running
from submitter import InvalidRequest, KlingClient
from submitter.auth import auth_for
from submitter.bodies import ALIASES
from submitter.protocol import Route
from submitter.providers import (
    COMETAPI,
    HINGNET,
    OFFICIAL,
    PROVIDERS,
    AuthKind,
    Provider,
    by_name,
    infer,
    resolve,
)
from submitter.simulator import RecordedRequest, Simulator
from tests.conftest import API_TOKEN, SECRET, Receiver
from tests.submitter_support import GEN, M2I, M2V, PUBLIC_URL, TOKENS

SEEDS = Path(__file__).resolve().parents[1] / "docs" / "kling" / "seeds"
API_KEY = "reseller-key-0123456789"
ACCESS_KEY = "ak-0123456789"
SECRET_KEY = "sk-0123456789abcdef0123456789abcdef"
EXT = "kh-seed-0001"
URL = "https://example.com/subject.jpg"
SUBJECTS = [{"subject_image": URL}, {"subject_image": URL}]

# -- the curl examples of the seed pages -----------------------------------------------------


@dataclass(frozen=True)
class Curl:
    """One curl example of a seed page: ``seed`` (``"003"``), its number on the page (from 1),
    the method, the URL and the ``--data`` body (None for a GET)."""

    seed: str
    number: int
    method: str
    url: str
    body: dict[str, Any] | None

    @property
    def key(self) -> str:
        return f"{self.seed}#{self.number}"


def read_curls() -> dict[str, Curl]:
    """Every curl example of every seed page, by ``"<seed>#<number>"``."""
    found: dict[str, Curl] = {}
    for page in sorted(SEEDS.glob("*.txt")):
        seed = page.name[:3]
        chunks = re.split(r"(?=\bcurl\s)", page.read_text())[1:]
        for number, chunk in enumerate(chunks, start=1):
            url = re.search(r"--url\s+(\S+)|^curl\s+\"([^\"]+)\"", chunk)
            assert url is not None, chunk[:200]
            data = re.search(r"--data\s+'(.*?)'", chunk, re.DOTALL)
            method = re.search(r"--request\s+(\w+)", chunk)
            curl = Curl(
                seed=seed,
                number=number,
                method=method[1] if method else "GET",
                url=url[1] or url[2],
                body=json.loads(data[1]) if data else None,
            )
            found[curl.key] = curl
    return found


CURLS = read_curls()


@dataclass(frozen=True)
class Row:
    """What one example must give on the wire: the provider inferred from its host, the
    method, the path (``{task_id}`` filled in) and the query string."""

    provider: Provider
    method: str
    path: str
    query: str = ""


SEED_TABLE: dict[str, Row] = {
    # 000 hingnet, multi-image2image: subject + scene + style reference.
    "000#1": Row(HINGNET, "POST", "/kling/v1/images/multi-image2image"),
    # 001 hingnet, multi-image2video: create, query one task, query the list.
    "001#1": Row(HINGNET, "POST", "/kling/v1/videos/multi-image2video"),
    "001#2": Row(HINGNET, "GET", "/kling/v1/videos/multi-image2video/{task_id}"),
    "001#3": Row(HINGNET, "GET", "/kling/v1/videos/multi-image2video", "pageNum=1&pageSize=30"),
    # 003 hingnet, images/generations: text, subject reference, face reference, batch of 4.
    "003#1": Row(HINGNET, "POST", "/kling/v1/images/generations"),
    "003#2": Row(HINGNET, "POST", "/kling/v1/images/generations"),
    "003#3": Row(HINGNET, "POST", "/kling/v1/images/generations"),
    "003#4": Row(HINGNET, "POST", "/kling/v1/images/generations"),
    # 004 CometAPI: a multi-image body (4 subjects, no prompt) posted to images/generations.
    "004#1": Row(COMETAPI, "POST", "/kling/v1/images/generations"),
    # 002 (official) has no curl: its rows are in PAGE_TABLE below.
}


def test_the_table_covers_every_curl_example_of_the_seed_pages() -> None:
    assert sorted(CURLS) == sorted(SEED_TABLE)
    for key, curl in CURLS.items():
        row = SEED_TABLE[key]
        assert (curl.method, urlsplit(curl.url).path) == (
            row.method,
            row.path.replace("{task_id}", "$TASK_ID"),
        )
        assert urlsplit(curl.url).query == row.query


# -- running a provider against the recording simulator -------------------------------------


@dataclass
class Kling:
    """A simulator running one provider's profile, and a client of it."""

    sim: Simulator
    client: KlingClient

    def requests(self, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.sim.requests if method in (None, r.method)]


@asynccontextmanager
async def kling(api_base: str, provider: Provider | None = None) -> AsyncIterator[Kling]:
    """The simulator with the profile ``provider`` (else the one inferred from ``api_base``)
    and its keys, and a client whose auth is the profile's (:func:`auth_for`). Tasks wait
    30 s before their first step, so no callback is ever sent."""
    profile = provider or infer(api_base)
    keys: dict[str, str] = (
        {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}
        if profile.auth is AuthKind.JWT
        else {"api_key": API_KEY}
    )
    sim = Simulator(provider=profile, delay_s=(30.0, 30.0), seed=3, **keys)
    client = KlingClient(
        api_base=api_base,
        auth=auth_for(profile, API_KEY, ACCESS_KEY, SECRET_KEY),
        provider=provider,
        tokens=TOKENS,
        public_url=PUBLIC_URL,
        transport=httpx.ASGITransport(app=sim.app),
        max_attempts=1,
    )
    try:
        yield Kling(sim, client)
    finally:
        await client.aclose()
        await sim.aclose()


def assert_auth(request: RecordedRequest, kind: AuthKind) -> None:
    """The request carries the provider's kind of ``Authorization``."""
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    if kind is AuthKind.BEARER:
        assert token == API_KEY
    else:
        claims = jwt.decode(token, SECRET_KEY, algorithms=["HS256"])
        assert claims["iss"] == ACCESS_KEY


def base_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def route_of(path: str) -> str:
    """``images/generations`` of ``/kling/v1/images/generations[/<id>]``."""
    family, route = path.split("/v1/", 1)[1].split("/")[:2]
    return f"{family}/{route}"


@pytest.mark.parametrize("key", sorted(SEED_TABLE))
async def test_every_curl_example_gets_the_wire_request_its_page_documents(key: str) -> None:
    curl, row = CURLS[key], SEED_TABLE[key]
    async with kling(base_of(curl.url)) as k:
        assert k.client.provider is row.provider  # inferred from the host, like the setting
        route = route_of(row.path)
        if curl.body is not None:
            submission = await k.client.submit(route, curl.body, external_task_id=EXT)
            (sent,) = k.requests()
            expected = {
                **curl.body,
                "external_task_id": EXT,
                "callback_url": submission.callback_url,
            }
            assert sent.json == expected
            assert submission.task_id in k.sim.tasks
        else:
            create = CURLS["001#1"].body
            assert create is not None
            created = await k.client.submit(route, create, external_task_id=EXT)
            if "{task_id}" in row.path:
                task = await k.client.query(route, created.task_id)
                assert task.task_id == created.task_id
            else:
                [task] = await k.client.list(route, page_num=1, page_size=30)
                assert task.external_task_id == EXT
            sent = k.requests("GET")[0]
            assert sent.json is None
        path = row.path.replace("{task_id}", submission.task_id if curl.body else created.task_id)
        assert (sent.method, sent.path, sent.query) == (row.method, path, row.query)
        assert_auth(sent, row.provider.auth)


# -- the documented requests of pages without a curl, and the pages' own field tables ---------

M2I_TABLE_BODY = {  # seed 002's field table, every optional field set
    "model_name": "kling-v2-1",
    "prompt": "two friends in a garden",
    "subject_image_list": SUBJECTS,
    "scene_image": "https://example.com/scene.jpg",
    "style_image": "https://example.com/style.jpg",
    "n": 9,
    "aspect_ratio": "21:9",
    "watermark_info": {"enabled": False},
}


async def test_002_official_create_query_by_either_id_and_list_use_its_paths_and_a_jwt() -> None:
    async with kling("https://api-singapore.klingai.com") as k:
        assert k.client.provider is OFFICIAL
        route = "images/multi-image2image"
        created = await k.client.submit(route, M2I_TABLE_BODY, external_task_id=EXT)
        by_task_id = await k.client.query(route, created.task_id)
        by_external = await k.client.query(route, EXT)
        listed = await k.client.list(route)
    assert by_task_id == by_external
    assert [t.task_id for t in listed] == [created.task_id]
    assert [(r.method, r.path, r.query) for r in k.requests()] == [
        ("POST", "/v1/images/multi-image2image", ""),
        ("GET", f"/v1/images/multi-image2image/{created.task_id}", ""),
        ("GET", f"/v1/images/multi-image2image/{EXT}", ""),
        ("GET", "/v1/images/multi-image2image", "pageNum=1&pageSize=30"),
    ]
    assert k.requests()[0].json == {
        **M2I_TABLE_BODY,
        "external_task_id": EXT,
        "callback_url": created.callback_url,
    }
    for request in k.requests():
        assert_auth(request, AuthKind.JWT)


async def test_004_multi_image_route_goes_to_images_generations_and_is_queried_there() -> None:
    async with kling("https://api.cometapi.com") as k:
        created = await k.client.submit(
            "images/multi-image2image", {"subject_image_list": SUBJECTS}
        )
        task = await k.client.query("images/multi-image2image", created.task_id)
        page = await k.client.list("images/generations", page_size=5)
    assert created.route == "images/multi-image2image"
    assert task.task_id == created.task_id == page[0].task_id
    assert [(r.method, r.path, r.query) for r in k.requests()] == [
        ("POST", "/kling/v1/images/generations", ""),
        ("GET", f"/kling/v1/images/generations/{created.task_id}", ""),
        ("GET", "/kling/v1/images/generations", "pageNum=1&pageSize=5"),
    ]


async def test_004_seed_body_given_to_images_generations_is_a_multi_image_task() -> None:
    body = CURLS["004#1"].body
    assert body is not None and "prompt" not in body
    async with kling("https://api.cometapi.com") as k:
        submission = await k.client.submit("images/generations", body)
    assert submission.route == "images/multi-image2image"
    [task] = k.sim.tasks.values()
    assert task.route.value == "images/multi-image2image"


@pytest.mark.parametrize("spelling", ["scene_image", "scence_image"])
@pytest.mark.parametrize(
    ("base", "wire_name"),
    [
        ("https://api-singapore.klingai.com", "scene_image"),
        ("https://models.hingnet.com.cn", "scene_image"),
        ("https://api.cometapi.com", "scence_image"),  # seed 004's parameter table
    ],
)
async def test_either_scene_spelling_is_accepted_and_sent_as_the_provider_spells_it(
    base: str, wire_name: str, spelling: str
) -> None:
    scene = "https://example.com/scene.jpg"
    async with kling(base) as k:
        await k.client.submit(
            "images/multi-image2image", {"subject_image_list": SUBJECTS, spelling: scene}
        )
    (sent,) = k.requests()
    assert sent.json[wire_name] == scene
    assert {"scene_image", "scence_image"} & set(sent.json) == {wire_name}


# -- documented violations: refused before any request -------------------------------------

LONG = "p" * 2501
ONE = [{"subject_image": URL}]
M2V_BODY = CURLS["001#1"].body or {}
GEN_BODY = CURLS["003#1"].body or {}
COMET_BODY = CURLS["004#1"].body or {}
V15 = {**GEN_BODY, "model_name": "kling-v1-5", "image": URL}

# fmt: off
VIOLATIONS: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (seed: rule, provider, route, body, the field named)
    ("000: subject_image_list required", "hingnet", M2I, {"prompt": "x"}, "subject_image_list"),
    ("000: at most 4", "hingnet", M2I, {"subject_image_list": ONE * 5}, "subject_image_list"),
    ("000: v2 or v2-1", "hingnet", M2I, {"subject_image_list": ONE, "model_name": "kling-v1"},
     "model_name"),
    ("000: aspect_ratio", "hingnet", M2I, {"subject_image_list": ONE, "aspect_ratio": "5:4"},
     "aspect_ratio"),
    ("000: n in [1, 9]", "hingnet", M2I, {"subject_image_list": ONE, "n": 10}, "n"),
    ("001: kling-v1-6 only", "hingnet", M2V, {**M2V_BODY, "model_name": "kling-v2"}, "model_name"),
    ("001: image_list required", "hingnet", M2V, {"prompt": "x"}, "image_list"),
    ("001: at most 4 images", "hingnet", M2V, {**M2V_BODY, "image_list": [{"image": URL}] * 5},
     "image_list"),
    ("001: prompt required", "hingnet", M2V, {"image_list": [{"image": URL}]}, "prompt"),
    ("001: mode std or pro", "hingnet", M2V, {**M2V_BODY, "mode": "fast"}, "mode"),
    ("001: duration 5 or 10", "hingnet", M2V, {**M2V_BODY, "duration": "7"}, "duration"),
    ("001: duration a string", "hingnet", M2V, {**M2V_BODY, "duration": 5}, "duration"),
    ("001: aspect_ratio", "hingnet", M2V, {**M2V_BODY, "aspect_ratio": "4:3"}, "aspect_ratio"),
    ("002: v2 or v2-1", "official", M2I, {"subject_image_list": ONE, "model_name": "kling-v1-6"},
     "model_name"),
    ("002: prompt <= 2500", "official", M2I, {"subject_image_list": ONE, "prompt": LONG},
     "prompt"),
    ("002: 1 to 4", "official", M2I, {"subject_image_list": []}, "subject_image_list"),
    ("002: n in [1, 9]", "official", M2I, {"subject_image_list": ONE, "n": 0}, "n"),
    ("002: watermark_info", "official", M2I,
     {"subject_image_list": ONE, "watermark_info": {"enabled": "yes"}}, "watermark_info.enabled"),
    ("002: URL or Base64", "official", M2I,
     {"subject_image_list": [{"subject_image": "data:image/png;base64,iVBO"}]},
     "subject_image_list.0.subject_image"),
    ("003: model_name", "hingnet", GEN, {**GEN_BODY, "model_name": "kling-v9"}, "model_name"),
    ("003: prompt required", "hingnet", GEN, {"n": 1}, "prompt"),
    ("003: prompt <= 2500", "hingnet", GEN, {**GEN_BODY, "prompt": LONG}, "prompt"),
    ("003: no negative_prompt with image", "hingnet", GEN,
     {**GEN_BODY, "image": URL, "negative_prompt": "x"}, "negative_prompt"),
    ("003: image_reference only v1-5", "hingnet", GEN,
     {**GEN_BODY, "image": URL, "image_reference": "face"}, "image_reference"),
    ("003: v1-5 image needs image_reference", "hingnet", GEN, V15, "image_reference"),
    ("003: subject or face", "hingnet", GEN, {**V15, "image_reference": "body"},
     "image_reference"),
    ("003: image_fidelity", "hingnet", GEN, {**GEN_BODY, "image_fidelity": 1.5}, "image_fidelity"),
    ("003: human_fidelity", "hingnet", GEN, {**GEN_BODY, "human_fidelity": -0.1},
     "human_fidelity"),
    ("003: resolution", "hingnet", GEN, {**GEN_BODY, "resolution": "4k"}, "resolution"),
    ("003: n in [1, 9]", "hingnet", GEN, {**GEN_BODY, "n": 10}, "n"),
    ("003: aspect_ratio", "hingnet", GEN, {**GEN_BODY, "aspect_ratio": "5:4"}, "aspect_ratio"),
    ("004: 2 to 4 (1)", "cometapi", GEN, {"subject_image_list": ONE}, "subject_image_list"),
    ("004: 2 to 4 (1, its route)", "cometapi", M2I, {"subject_image_list": ONE},
     "subject_image_list"),
    ("004: 2 to 4 (5)", "cometapi", GEN, {"subject_image_list": ONE * 5}, "subject_image_list"),
    ("004: kling-v2 only", "cometapi", GEN, {**COMET_BODY, "model_name": "kling-v2-1"},
     "model_name"),
    ("004: kling-v2 only (its route)", "cometapi", M2I,
     {**COMET_BODY, "model_name": "kling-v2-1"}, "model_name"),
    ("004: prompt <= 2500", "cometapi", GEN, {**COMET_BODY, "prompt": LONG}, "prompt"),
    ("004: aspect_ratio", "cometapi", GEN, {**COMET_BODY, "aspect_ratio": "5:4"}, "aspect_ratio"),
    ("004: one scene spelling", "cometapi", GEN,
     {**COMET_BODY, "scence_image": URL, "scene_image": URL}, "scence_image"),
]
# fmt: on
PROVIDER_BASES = {
    "official": "https://api-singapore.klingai.com",
    "hingnet": "https://models.hingnet.com.cn",
    "cometapi": "https://api.cometapi.com",
}


@pytest.mark.parametrize(
    ("base", "route", "body", "field"),
    [(PROVIDER_BASES[v[1]], *v[2:]) for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
async def test_every_documented_violation_is_refused_with_no_request_sent(
    base: str, route: str, body: dict[str, Any], field: str
) -> None:
    async with kling(base) as k:
        with pytest.raises(InvalidRequest) as info:
            await k.client.submit(route, body)
    assert field in [p.field for p in info.value.problems]
    assert k.sim.requests == []


def test_a_cometapi_rule_names_its_source_and_the_bad_value() -> None:
    with pytest.raises(InvalidRequest) as info:
        COMETAPI.check("images/generations", {**COMET_BODY, "model_name": "kling-v2-1"})
    assert str(info.value) == (
        "model_name: input should be 'kling-v2' (got 'kling-v2-1') [cometapi rule, seed 004]"
        " (images/multi-image2image)"
    )


@pytest.mark.parametrize("provider", [OFFICIAL, HINGNET])
def test_kling_v2_1_and_one_subject_stay_allowed_outside_cometapi(provider: Provider) -> None:
    route, checked = provider.check(
        "images/multi-image2image", {"subject_image_list": ONE, "model_name": "kling-v2-1"}
    )
    assert route.value == "images/multi-image2image"
    assert checked["model_name"] == "kling-v2-1"


@pytest.mark.parametrize("provider", [OFFICIAL, HINGNET])
def test_a_multi_image_body_for_images_generations_is_not_recognised_outside_cometapi(
    provider: Provider,
) -> None:
    with pytest.raises(InvalidRequest, match="prompt: is required"):
        provider.check("images/generations", COMET_BODY)


@pytest.mark.parametrize(
    ("page_num", "page_size", "field"),
    [
        (0, 30, "page_num"),
        (1001, 30, "page_num"),
        (1, 0, "page_size"),
        (1, 501, "page_size"),
        (True, 30, "page_num"),
        (1, "30", "page_size"),
    ],
)
async def test_list_bounds_from_seed_002_are_checked_before_any_request(
    page_num: Any, page_size: Any, field: str
) -> None:
    async with kling("https://api-singapore.klingai.com") as k:
        with pytest.raises(InvalidRequest) as info:
            await k.client.list("images/multi-image2image", page_num=page_num, page_size=page_size)
    assert [p.field for p in info.value.problems] == [field]
    assert k.sim.requests == []


async def test_list_bounds_are_inclusive() -> None:
    async with kling("https://models.hingnet.com.cn") as k:
        assert await k.client.list("videos/text2video", page_num=1000, page_size=500) == []
        assert await k.client.list("videos/text2video", page_num=1, page_size=1) == []
    assert [r.query for r in k.requests()] == [
        "pageNum=1000&pageSize=500",
        "pageNum=1&pageSize=1",
    ]


async def test_the_cometapi_simulator_applies_the_profiles_rules_to_what_it_receives() -> None:
    sim = Simulator(provider=COMETAPI, delay_s=(30.0, 30.0), seed=1)
    headers = {"Authorization": "Bearer any"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim.app)) as http:
        one = await http.post(
            "http://kling/kling/v1/images/generations",
            json={"subject_image_list": ONE},
            headers=headers,
        )
        prompt = await http.post(
            "http://kling/kling/v1/images/generations", json={"prompt": "x"}, headers=headers
        )
        own_path = await http.post(
            "http://kling/kling/v1/images/multi-image2image", json={}, headers=headers
        )
    await sim.aclose()
    assert (one.status_code, one.json()["code"]) == (400, 1201)
    assert "[cometapi rule, seed 004]" in one.json()["message"]
    assert prompt.json()["code"] == 0
    assert (own_path.status_code, own_path.json()["code"]) == (404, 1203)  # not CometAPI's


# -- choosing a profile, and base URLs --------------------------------------------------------


@pytest.mark.parametrize(
    ("api_base", "name"),
    [
        ("https://api-singapore.klingai.com", "official"),
        ("https://api-beijing.klingai.com", "official"),
        ("https://api.klingai.com/", "official"),
        ("https://models.hingnet.com.cn/kling", "hingnet"),
        ("https://MODELS.HINGNET.COM.CN", "hingnet"),
        ("https://api.cometapi.com", "cometapi"),
        ("https://cometapi.com.", "cometapi"),
        ("https://notcometapi.com", "official"),  # a domain, not a suffix of characters
        ("https://cometapi.com.example.org", "official"),
        ("http://127.0.0.1:9000/kling", "official"),
    ],
)
def test_provider_is_inferred_from_the_base_urls_host_else_official(
    api_base: str, name: str
) -> None:
    assert infer(api_base).name == name
    assert resolve(None, api_base).name == name


def test_a_named_provider_wins_over_the_host_and_names_are_checked() -> None:
    assert resolve("hingnet", "https://api.cometapi.com") is HINGNET
    assert resolve(" CometAPI ", None) is COMETAPI
    assert resolve(None, None) is OFFICIAL
    with pytest.raises(ValueError, match="'kling' is not a provider: one of official, hingnet"):
        by_name("kling")


@pytest.mark.parametrize(
    ("provider", "given", "normalised"),
    [
        (HINGNET, "https://models.hingnet.com.cn", "https://models.hingnet.com.cn/kling"),
        (HINGNET, "https://models.hingnet.com.cn/", "https://models.hingnet.com.cn/kling"),
        (HINGNET, "https://models.hingnet.com.cn/kling/", "https://models.hingnet.com.cn/kling"),
        (COMETAPI, "http://127.0.0.1:9000", "http://127.0.0.1:9000/kling"),
        (COMETAPI, "http://127.0.0.1:9000/proxy", "http://127.0.0.1:9000/proxy"),
        (OFFICIAL, "https://api-singapore.klingai.com/", "https://api-singapore.klingai.com"),
        (OFFICIAL, "http://127.0.0.1:9000/kling", "http://127.0.0.1:9000/kling"),
    ],
)
def test_a_base_url_without_a_path_gets_the_providers_prefix(
    provider: Provider, given: str, normalised: str
) -> None:
    assert provider.api_base(given) == normalised


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("https://host/kling/v1", "ends in /v1, which kling-hooks adds itself"),
        ("https://host/v1/", "give 'https://host'"),
        ("api.cometapi.com/kling", "is not an http(s) URL with a host"),
        ("ftp://host", "is not an http(s) URL with a host"),
        ("https://", "is not an http(s) URL with a host"),
        ("https://host:port", "has a bad port"),
        ("https://user:pw@host", "without credentials"),
        ("https://host/kling?x=1", "query or a fragment"),
        ("https://ho st", "is not a URL"),
        ("", "is not a URL"),
        ("http://xn--", "is not a URL"),
        ("http://[::1]x", "is not a URL"),
        ("https://host:0", "has a bad port"),
        ("https://host/KLING/V1", "ends in /v1"),
        ("https://host/kling/v1/images", "holds /v1"),
    ],
)
def test_a_bad_base_url_is_refused_naming_the_value(url: str, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        OFFICIAL.api_base(url)


def test_each_profile_declares_its_default_base_and_auth() -> None:
    assert [(p.name, p.default_api_base, p.auth) for p in PROVIDERS.values()] == [
        ("official", "https://api-singapore.klingai.com", AuthKind.JWT),
        ("hingnet", "https://models.hingnet.com.cn/kling", AuthKind.BEARER),
        ("cometapi", "https://api.cometapi.com/kling", AuthKind.BEARER),
    ]
    for provider in PROVIDERS.values():
        for seed in provider.seeds:
            assert list(SEEDS.glob(f"{seed}_*.txt")), (provider.name, seed)


def test_every_wire_spelling_is_an_accepted_input_spelling() -> None:
    for provider in PROVIDERS.values():
        for route, names in provider.wire_names.items():
            for name, wire in names.items():
                assert ALIASES[route][wire] == name, (provider.name, route, wire)


def test_a_new_provider_is_one_entry() -> None:
    acme = Provider(
        name="acme",
        seeds=(),
        base_url="https://kling.acme.example",
        prefix="/api/kling",
        hosts=("acme.example",),
        auth=AuthKind.BEARER,
        paths={Route.VIDEOS_TEXT2VIDEO: "videos/t2v"},
        rules={Route.VIDEOS_TEXT2VIDEO: {"mode": (Literal["std"], None)}},
    )
    assert acme.api_base("https://kling.acme.example") == "https://kling.acme.example/api/kling"
    assert acme.path(Route.VIDEOS_TEXT2VIDEO) == "videos/t2v"
    assert acme.check("videos/text2video", {"prompt": "x", "mode": "std"})[1]["mode"] == "std"
    with pytest.raises(InvalidRequest, match=r"mode: .* \[acme rule\]"):
        acme.check("videos/text2video", {"prompt": "x", "mode": "pro"})


# -- through the kling-hooks command ---------------------------------------------------------

KLING_HOOKS = Path(sys.executable).parent / "kling-hooks"
TREE = str(Path(__file__).resolve().parents[1])  # the console script imports this tree


async def kling_hooks(*args: str, **settings: str) -> tuple[int, str, str]:
    """Run the console script with no KLING_* variable but ``settings`` (names upper-cased);
    the event loop keeps serving meanwhile. Returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KLING_")}
    env.update({"PYTHONPATH": TREE, **{k.upper(): v for k, v in settings.items()}})
    proc = await asyncio.create_subprocess_exec(
        str(KLING_HOOKS), *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("command", ["submit", "serve"])
@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("kling_api_base", "api.cometapi.com/kling", "is not an http(s) URL with a host"),
        ("kling_api_base", "https://api.cometapi.com/kling/v1", "ends in /v1"),
        ("kling_api_base", "http://[::1", "is not a URL (Invalid IPv6 URL)"),
        ("kling_api_base", "http://xn--", "is not a URL"),
        ("kling_hooks_public_url", "http://[::1]x", "is not a URL"),
        ("kling_provider", "kling", "is not a provider: one of official, hingnet, cometapi"),
    ],
)
async def test_a_bad_base_url_or_provider_stops_the_command_with_one_line_exit_2(
    tmp_path: Path, command: str, name: str, value: str, named: str
) -> None:
    args = ["submit", GEN, "--data", '{"prompt": "x"}'] if command == "submit" else ["serve"]
    code, out, err = await kling_hooks(
        *args, **{name: value}, kling_api_key="k", kling_hooks_db=str(tmp_path / "k.db")
    )
    assert code == 2
    assert out == ""
    assert err.startswith(f"error: bad setting: {name.upper()}: ")
    assert named in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "k.db").exists()


async def test_submit_on_cometapi_sends_the_seed_004_body_as_given_and_names_the_profile(
    receiver: Receiver,
) -> None:
    body = CURLS["004#1"].body
    assert body is not None
    sim = Simulator(provider=COMETAPI, api_key=API_KEY, delay_s=(0.0, 0.01), seed=1)
    async with running(sim.app) as sim_url:
        code, out, err = await kling_hooks(
            "submit",
            GEN,
            "--data",
            json.dumps(body),
            "--external-task-id",
            EXT,
            kling_provider="cometapi",
            kling_api_base=sim_url,  # no path: the profile's /kling prefix is added
            kling_api_key=API_KEY,
            kling_hooks_public_url=receiver.url,
            kling_hooks_api_url=receiver.url,
            kling_hooks_secret=SECRET,
            kling_hooks_api_token=API_TOKEN,
            kling_hooks_db=str(receiver.services.settings.kling_hooks_db),
        )
        await sim.wait_idle()
    assert code == 0, err
    [line] = out.splitlines()
    printed = json.loads(line)
    assert printed["provider"] == "cometapi"
    assert printed["route"] == M2I
    assert printed["registered"] is True
    (created,) = [r for r in sim.requests if r.method == "POST"]
    assert created.path == "/kling/v1/images/generations"
    assert created.headers["authorization"] == f"Bearer {API_KEY}"
    assert created.json == {
        **body,
        "external_task_id": EXT,
        "callback_url": printed["callback_url"],
    }
    task = (await receiver.get_task(EXT)).json()
    assert (task["route"], task["task_status"]) == (M2I, "succeed")


async def test_submit_on_cometapi_refuses_one_subject_image_and_sends_nothing(
    tmp_path: Path,
) -> None:
    code, out, err = await kling_hooks(
        "submit",
        GEN,
        "--data",
        json.dumps({"subject_image_list": [{"subject_image": URL}]}),
        kling_api_base="https://api.cometapi.com",
        kling_api_key=API_KEY,
        kling_hooks_db=str(tmp_path / "k.db"),
    )
    assert code == 2
    assert out == ""
    assert err.startswith("invalid request, nothing sent: subject_image_list: ")
    assert "[cometapi rule, seed 004] (images/multi-image2image)" in err
