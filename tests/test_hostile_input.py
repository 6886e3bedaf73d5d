"""Hostile input found from outside (issue 10), each refused with a documented 4xx and nothing
stored, the server still serving: deep nesting, numbers out of range, lone surrogates, wrong
types in ``task_result``, non-ASCII and control characters in ``task_id``, timestamps no
plugin can format, non-ASCII callback tokens, junk query parameters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_TOKEN, Receiver, rows, task_body

pytestmark = pytest.mark.both_backends

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def post_raw(r: Receiver, ext: str, text: str) -> tuple[int, str]:
    answer = await r.http.post(
        r.callback_url(ext), content=text.encode(), headers={"content-type": "application/json"}
    )
    return answer.status_code, answer.json()["error"] if answer.status_code != 200 else ""


def stored(tmp_path: Path) -> int:
    return len(rows(tmp_path / "kling-hooks.db", "SELECT id FROM callbacks"))


BODY = json.dumps(task_body("1", "succeed", "kh-1"))


@pytest.mark.parametrize(
    ("text", "status", "error"),
    [
        ("[" * 100_000 + "]" * 100_000, 400, "body is not JSON: nested too deeply"),
        (BODY.replace('"succeed"', '"succeed", "x": 1e400'), 400, "1e400 is out of range"),
        (BODY.replace('"succeed"', '"succeed", "x": NaN'), 400, "NaN is not JSON"),
        (
            BODY.replace('"task_status_msg": ""', '"task_status_msg": "\\ud800"'),
            400,
            "lone UTF-16 surrogate",
        ),
        (
            BODY.replace("}", ', "final_unit_deduction": "\\udfff"}', 1),
            400,
            "lone UTF-16 surrogate",
        ),
    ],
    ids=["deep-nesting", "1e400", "NaN", "lone-surrogate-msg", "lone-surrogate-deduction"],
)
async def test_json_that_cannot_be_stored_or_forwarded_is_refused_at_parse_time(
    receiver: Receiver, tmp_path: Path, text: str, status: int, error: str
) -> None:
    assert (await post_raw(receiver, "kh-1", text))[0] == status
    assert error in (await post_raw(receiver, "kh-1", text))[1]
    assert stored(tmp_path) == 0
    assert (await receiver.get_task("kh-1")).status_code == 404
    assert (await receiver.post_callback("kh-1", task_body("1", "succeed", "kh-1"))).is_success


async def test_a_valid_surrogate_pair_is_kept(receiver: Receiver) -> None:
    text = BODY.replace('"task_status_msg": ""', '"task_status_msg": "\\ud83d\\ude00"')
    assert (await post_raw(receiver, "kh-1", text))[0] == 200
    assert (await receiver.get_task("kh-1")).json()["task_status_msg"] == "\U0001f600"


async def test_one_poisoned_body_beside_31_valid_ones_fails_only_itself(
    receiver: Receiver, tmp_path: Path
) -> None:
    poisoned = BODY.replace('"task_status_msg": ""', '"task_status_msg": "\\ud800"')
    valid = [json.dumps(task_body(f"v{i}", "succeed", f"kh-v{i}")) for i in range(31)]
    answers = await asyncio.gather(
        post_raw(receiver, "kh-1", poisoned),
        *(post_raw(receiver, f"kh-v{i}", text) for i, text in enumerate(valid)),
    )
    assert answers[0][0] == 400
    assert [a[0] for a in answers[1:]] == [200] * 31
    assert stored(tmp_path) == 31


@pytest.mark.parametrize(
    ("task_result", "field"),
    [
        ({"images": "nope"}, "task_result.images: Input should be a valid list"),
        ({"images": [{"index": "0", "url": "u"}]}, "images.0.index: Input should be a valid"),
        ({"images": [{"index": 0}]}, "images.0.url: Field required"),
        ({"videos": [{"url": 5}]}, "videos.0.url: Input should be a valid string"),
        ({"videos": [{"url": "u", "duration": 5.1}]}, "videos.0.duration: Input should be"),
    ],
)
async def test_documented_result_kinds_must_have_the_documented_types(
    receiver: Receiver, tmp_path: Path, task_result: object, field: str
) -> None:
    body = task_body("1", "succeed", "kh-1", task_result=task_result)
    answer = await receiver.post_callback("kh-1", body)
    assert answer.status_code == 422
    assert field in answer.json()["error"]
    assert stored(tmp_path) == 0


async def test_unknown_result_kinds_are_kept_as_sent(receiver: Receiver) -> None:
    # audios: named by PROTOCOL.md without a shape (Kling's carry url_mp3/url_wav, no url)
    result = {
        "images": [{"index": 0, "url": "u", "extra": [1]}],
        "videos": None,
        "audios": [{"id": "a", "url_mp3": "m", "url_wav": "w", "duration_mp3": "5"}],
        "voices": "anything",
    }
    body = task_body("1", "succeed", "kh-1", task_result=result)
    assert (await receiver.post_callback("kh-1", body)).status_code == 200
    assert (await receiver.get_task("kh-1")).json()["task_result"] == result


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"task_id": "t\u00e9"}, "task_id: String should match pattern"),
        ({"task_id": "t\x01"}, "task_id: String should match pattern"),
        ({"task_id": "t 1"}, "task_id: String should match pattern"),
        ({"updated_at": 9223372036854775807}, "updated_at: Input should be less than"),
        ({"created_at": 253_402_300_800_000}, "created_at: Input should be less than"),
    ],
)
async def test_values_no_plugin_could_deliver_are_refused_at_the_edge(
    receiver: Receiver, tmp_path: Path, values: dict[str, object], field: str
) -> None:
    body = {**task_body("1", "succeed", "kh-1"), **values}
    answer = await receiver.post_callback("kh-1", body)
    assert (answer.status_code, field in answer.json()["error"]) == (422, True), answer.text
    assert stored(tmp_path) == 0


@pytest.mark.parametrize("token", ["caf\u00e9", "%FF", "%C0%AF", "%E2%82%AC" * 3, "\u00ff" * 43])
async def test_a_non_ascii_callback_token_is_401_not_500(receiver: Receiver, token: str) -> None:
    answer = await receiver.http.post(f"{receiver.url}/callbacks/kh-1/{token}", json={})
    assert (answer.status_code, answer.json()) == (
        401,
        {"ok": False, "error": "invalid callback URL"},
    )


async def test_deep_json_or_nan_in_a_registration_is_400(receiver: Receiver) -> None:
    url = f"{receiver.url}/tasks"
    deep = await receiver.http.post(url, content=b"[" * 50_000 + b"]" * 50_000, headers=AUTH)
    doc = {
        "route": "images/generations",
        "task_id": "1",
        "external_task_id": "kh-1",
        "created_at": 1,
        "request": {"cfg_scale": float("nan")},
    }
    nan = await receiver.http.post(
        url, content=json.dumps(doc).encode(), headers={**AUTH, "content-type": "application/json"}
    )
    assert (deep.status_code, deep.json()["error"]) == (400, "body is not JSON: nested too deeply")
    assert (nan.status_code, nan.json()["error"]) == (400, "body is not JSON: NaN is not JSON")
    assert (await receiver.get_task("kh-1")).status_code == 404


async def test_junk_query_parameters_get_400(receiver: Receiver) -> None:
    for query in (
        "state=5_0&plugin=5_0&cursor=5_0",
        "task_status=5_0&route=5_0&cursor=5_0&limit=5_0",
        "transition_before=5_0",
    ):
        for path in ("/tasks", "/deliveries"):
            answer = await receiver.http.get(f"{receiver.url}{path}?{query}", headers=AUTH)
            assert answer.status_code == 400, (path, query, answer.text)
            assert answer.json()["ok"] is False


async def test_a_truncated_body_whose_client_went_away_is_refused_not_an_error(
    receiver: Receiver, tmp_path: Path
) -> None:
    host, port = receiver.url.removeprefix("http://").split(":")
    head = (
        f"POST {receiver.callback_url('kh-1').removeprefix(receiver.url)} HTTP/1.1\r\n"
        f"Host: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + BODY.encode()[:20])
    await writer.drain()
    writer.write_eof()  # the client is gone before the rest of the body
    await reader.read()
    writer.close()
    metrics = await receiver.http.get(f"{receiver.url}/metrics", headers=AUTH)
    assert 'kling_hooks_callback_rejections_total{reason="not_json"} 1.0' in metrics.text
    assert stored(tmp_path) == 0


@pytest.mark.parametrize(
    "query",
    [
        "state=junk&state=",  # the last value used to win: 200
        "state=dead&state=dead",
        "state=",
        "plugin=",
        "cursor=",
        "limit=",
        "colour=blue",
        "cursor=99999999999999999999",
        "cursor=9223372036854775808",
        "limit=%D9%A5",  # an Arabic-Indic digit: int() would take it
        "limit=+5",
        "limit=1.0",
    ],
)
async def test_unknown_repeated_empty_or_out_of_range_query_parameters_are_400(
    receiver: Receiver, query: str
) -> None:
    answer = await receiver.http.get(f"{receiver.url}/deliveries?{query}", headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert answer.json()["ok"] is False


async def test_transition_before_and_task_queries_are_checked_the_same_way(
    receiver: Receiver,
) -> None:
    for query in ("transition_before=", "task_status=succeed&task_status=", "state=dead"):
        answer = await receiver.http.get(f"{receiver.url}/tasks?{query}", headers=AUTH)
        assert answer.status_code == 400, (query, answer.text)
    ok = await receiver.http.get(f"{receiver.url}/tasks?limit=500&cursor=0", headers=AUTH)
    assert ok.status_code == 200


async def test_a_whole_number_written_5_0_is_an_integer_but_5_5_and_booleans_are_not(
    receiver: Receiver,
) -> None:
    def post(path: str, doc: dict[str, object]) -> Any:
        return receiver.http.post(f"{receiver.url}{path}", json=doc, headers=AUTH)

    registration = {"route": "images/generations", "task_id": "1", "external_task_id": "kh-1"}
    assert (await post("/tasks", {**registration, "created_at": 58800.0})).status_code == 200
    assert (await post("/prune", {"older_than_ms": 82394.0, "dry_run": True})).status_code == 200
    assert (await post("/deliveries/redeliver", {"since": 5.0})).status_code == 200
    assert (await post("/prune", {"older_than_ms": 5.5})).status_code == 422
    assert (await post("/prune", {"older_than_ms": 1, "vacuum": 0})).status_code == 422
    assert (await post("/prune", {"older_than_ms": True})).status_code == 422
    body = task_body("1", "succeed", "kh-1", created_at=1774805076166.0)
    assert (await receiver.post_callback("kh-1", body)).status_code == 200
    task = (await receiver.get_task("kh-1")).json()
    assert (task["created_at"], type(task["created_at"])) == (58800, int)  # the registration's
    assert task["task_status"] == "succeed"


async def test_a_registration_task_id_must_be_printable_ascii(receiver: Receiver) -> None:
    doc = {"route": "images/generations", "task_id": "t\u00e9", "external_task_id": "kh-1"}
    answer = await receiver.http.post(f"{receiver.url}/tasks", json=doc, headers=AUTH)
    assert answer.status_code == 422
    assert "task_id: String should match pattern" in answer.json()["error"]


async def test_a_405_on_tasks_lists_both_its_methods_in_allow(receiver: Receiver) -> None:
    answer = await receiver.http.request("OPTIONS", f"{receiver.url}/tasks", headers=AUTH)
    assert answer.status_code == 405
    assert {"GET", "POST"} <= {m.strip() for m in answer.headers["allow"].split(",")}


@pytest.mark.parametrize("suffix", ["/", "//"])
async def test_a_callback_url_with_a_trailing_slash_is_404_not_a_redirect(
    receiver: Receiver, tmp_path: Path, suffix: str
) -> None:
    answer = await receiver.http.post(
        receiver.callback_url("kh-1") + suffix, json=task_body("1", "succeed", "kh-1")
    )
    assert (answer.status_code, answer.json()["ok"]) == (404, False)
    assert stored(tmp_path) == 0


async def test_nesting_deeper_than_64_is_refused_so_that_every_stored_value_reads_back(
    receiver: Receiver, tmp_path: Path
) -> None:
    # 256 levels passed json.loads but broke every later read (pydantic's serializer limit)
    deep: object = 1
    for _ in range(256):
        deep = [deep]
    body = task_body("1", "succeed", "kh-1", task_result={"x": deep})
    refused = await receiver.post_callback("kh-1", body)
    shallow: object = 1
    for _ in range(60):
        shallow = [shallow]
    kept = await receiver.post_callback(
        "kh-2", task_body("2", "succeed", "kh-2", task_result={"x": shallow})
    )
    assert (refused.status_code, refused.json()["error"]) == (
        400,
        "body is not JSON: nested too deeply (over 64 levels)",
    )
    assert kept.status_code == 200
    assert (await receiver.get_task("kh-2")).status_code == 200
    assert (await receiver.http.get(f"{receiver.url}/tasks", headers=AUTH)).status_code == 200
