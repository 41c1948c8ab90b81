"""Budgets that cannot be bypassed, and each call charged once (issue 15): through a running gateway,
with the real SDK or raw HTTP, against the bundled mock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import openai
import pytest

from .conftest import Gateway, fetch

TINY_KEY, BIG_KEY = "sk-tiny-0a1b", "sk-big-9z8y"
KEYS = [{"name": "tiny", "key": TINY_KEY, "budget_usd": 0.001}, {"name": "big", "key": BIG_KEY}]
BUDGET_MICROS = 1_000
WORDS = "the river bends past the old mill and carries leaves toward the sea "


def spent(rows: list[dict[str, Any]], key: str) -> int:
    return sum(r["cost_microusd"] or 0 for r in rows if r["key_name"] == key)


def budget_of(gw: Gateway, key: str) -> dict[str, Any]:
    (budget,) = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=key).body)["budgets"]
    return budget


def test_chaining_onto_a_large_stored_response_is_charged_for_its_context(
        gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    db = tmp_path / "chain.db"
    gw = gateway(keys=KEYS, db=db)
    with gw.client(BIG_KEY) as big:
        stored = big.responses.create(model="gpt-4o-mini", input=WORDS * 2000, max_output_tokens=20)
    assert stored.usage.input_tokens > 20_000  # ~$0.003 of context at gpt-4o-mini's input price
    admitted = 0
    with gw.client(TINY_KEY) as tiny:
        for _ in range(30):
            try:
                tiny.responses.create(model="gpt-4o-mini", input="and then?", max_output_tokens=5,
                                      previous_response_id=stored.id)
                admitted += 1
            except openai.RateLimitError as exc:
                assert exc.response.json()["error"]["code"] == "budget_exceeded"
    rows = gw.rows(expect=31)
    assert admitted == 0 and spent(rows, "tiny") <= BUDGET_MICROS
    # an id the gateway never saw is bounded by the context window (128k tokens): refused too
    with gw.client(TINY_KEY) as tiny, pytest.raises(openai.RateLimitError):
        tiny.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5,
                              previous_response_id="resp_" + "0" * 32)
    gw.stop()
    # after a restart the stored response's size comes from the ledger
    again = gateway(keys=KEYS, db=db)
    with again.client(TINY_KEY) as tiny, pytest.raises(openai.RateLimitError) as caught:
        tiny.responses.create(model="gpt-4o-mini", input="and then?", max_output_tokens=5,
                              previous_response_id=stored.id)
    assert "Budget exceeded" in caught.value.message


def test_a_small_chain_is_admitted_and_charged_what_the_upstream_bills(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any], tmp_path: Path) -> None:
    """$0.002 pays for ~13k tokens: a chain on a response the gateway knows (a few hundred tokens) is
    admitted, before and after a restart; one it does not know counts as 128k tokens and is refused."""
    from mockserver.app import make_app as make_mock
    from mockserver.settings import MockSettings

    mock = upstream(make_mock(MockSettings())).url + "/v1"  # outlives the gateway's restart
    db, tiny_keys = tmp_path / "small.db", [{"name": "tiny", "key": TINY_KEY, "budget_usd": 0.002}]
    gw = gateway(mock, keys=tiny_keys, db=db)
    with gw.client(TINY_KEY) as tiny:
        first = tiny.responses.create(model="gpt-4o-mini", input="Tell me about rivers", max_output_tokens=30)
        second = tiny.responses.create(model="gpt-4o-mini", input="More", max_output_tokens=30,
                                       previous_response_id=first.id)
        with pytest.raises(openai.RateLimitError):
            tiny.responses.create(model="gpt-4o-mini", input="More", max_output_tokens=30,
                                  previous_response_id="resp_" + "1" * 32)
    assert second.usage.input_tokens > first.usage.total_tokens
    rows = gw.rows(expect=3)
    assert spent(rows, "tiny") == int(float(budget_of(gw, TINY_KEY)["spent_usd"]) * 1e6)
    gw.stop()
    with gateway(mock, keys=tiny_keys, db=db).client(TINY_KEY) as tiny:
        third = tiny.responses.create(model="gpt-4o-mini", input="And?", max_output_tokens=30,
                                      previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.total_tokens


def test_unknown_chain_without_a_context_window_is_refused_with_a_400(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=[{"name": "tiny", "key": TINY_KEY, "budget_usd": 1.0}], mock={"models": ["house-model"]},
                 prices={"house-model": {"input_per_mtok": 1, "output_per_mtok": 1}})
    reply = fetch("POST", gw.url + "/responses", key=TINY_KEY,
                  json={"model": "house-model", "input": "hi", "previous_response_id": "resp_unknown"})
    assert reply.status == 400
    error = json.loads(reply.body)["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == "unestimable_request"
    assert "previous_response_id" in error["message"]


def test_a_completions_prompt_list_reserves_every_prompts_output(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=KEYS)
    admitted = 0
    with gw.client(TINY_KEY) as tiny:
        for _ in range(3):
            try:
                tiny.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Say something long"] * 100,
                                        max_tokens=50)
                admitted += 1
            except openai.RateLimitError:
                pass
        with pytest.raises(openai.RateLimitError):  # n and best_of multiply it too, token arrays count
            tiny.completions.create(model="gpt-3.5-turbo-instruct", prompt=[[1, 2, 3]] * 4, max_tokens=60,
                                    n=2, best_of=3)
    rows = gw.rows(expect=4)
    assert admitted == 0 and spent(rows, "tiny") <= BUDGET_MICROS


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "text/plain", None])
def test_a_body_the_gateway_cannot_read_is_refused_on_a_budgeted_key(
        gateway: Callable[..., Gateway], content_type: str | None) -> None:
    gw = gateway(keys=KEYS)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi " * 500}],
                       "max_tokens": 400}).encode()
    if content_type is None:
        body = b"\xff" + body  # not JSON at all
    headers = {} if content_type is None else {"Content-Type": content_type}
    for _ in range(3):
        reply = fetch("POST", gw.url + "/chat/completions", key=TINY_KEY, data=body, headers=headers)
        if content_type == "text/plain":  # read as JSON anyway: estimated, admitted, charged
            assert reply.status == 200 or json.loads(reply.body)["error"]["code"] == "budget_exceeded"
            continue
        error = json.loads(reply.body)["error"]
        assert reply.status == 400 and error["code"] == "unestimable_request", reply.body
        assert error["type"] == "invalid_request_error"
    rows = gw.rows(expect=3)
    assert spent(rows, "tiny") <= BUDGET_MICROS
    assert budget_of(gw, TINY_KEY)["spent_usd"] == f"{spent(rows, 'tiny') / 1e6:.6f}"


@pytest.mark.parametrize(("path", "body"), [
    ("/images/generations", {"model": "gpt-image-1", "prompt": "a river"}),
    ("/audio/speech", {"model": "gpt-4o-mini-tts", "input": "hello", "voice": "alloy"}),
    ("/fine_tuning/jobs", {"model": "gpt-4o-mini", "training_file": "file-abc"}),
    ("/realtime/sessions", {"model": "gpt-realtime"}),
])
def test_endpoints_that_are_not_estimated_are_refused_on_a_budgeted_key(
        gateway: Callable[..., Gateway], path: str, body: dict[str, Any]) -> None:
    gw = gateway(keys=KEYS)
    reply = fetch("POST", gw.url + path, key=TINY_KEY, json=body)
    assert reply.status == 400 and json.loads(reply.body)["error"]["code"] == "unestimable_request"
    unbudgeted = fetch("POST", gw.url + path, key=BIG_KEY, json=body)
    assert unbudgeted.status == 404  # forwarded: the mock has no such endpoint


def test_each_call_is_charged_once_and_a_restart_rebuilds_the_same_spend(
        gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    db = tmp_path / "once.db"
    keys = [{"name": "tiny", "key": TINY_KEY, "budget_usd": 1.0}]
    gw = gateway(keys=keys, db=db)
    with gw.client(TINY_KEY) as client:
        response = client.responses.create(model="gpt-4o-mini", input="Tell me about rivers", max_output_tokens=40)
        chat = client.chat.completions.create(model="gpt-4o-mini", store=True, max_tokens=40,
                                              messages=[{"role": "user", "content": "Tell me about lakes"}])
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        for _ in range(10):
            client.responses.retrieve(response.id)
            client.chat.completions.retrieve(chat.id)
    rows = gw.rows(expect=23)
    charged = [r for r in rows if r["cost_microusd"]]
    assert [r["endpoint"] for r in charged] == ["/v1/responses", "/v1/chat/completions", "/v1/embeddings"]
    live = budget_of(gw, TINY_KEY)
    assert live["spent_usd"] == f"{spent(rows, 'tiny') / 1e6:.6f}"
    gw.stop()
    rebuilt = budget_of(gateway(keys=keys, db=db), TINY_KEY)
    assert (rebuilt["spent_usd"], rebuilt["spent_tokens"]) == (live["spent_usd"], live["spent_tokens"])


def test_a_huge_prompt_on_a_budgeted_key_is_refused_after_counting_only_what_it_could_pay(
        gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=KEYS)
    reply = fetch("POST", gw.url + "/chat/completions", key=TINY_KEY,
                  json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": WORDS * 12_000}]})
    assert reply.status == 429 and json.loads(reply.body)["error"]["code"] == "budget_exceeded"


def test_bounded_counting_stops_soon_after_the_limit() -> None:
    from proxy.wire.tokens import PIECE_CHARS, PromptTooLong, count_request_prompt, get_encoding

    text = WORDS * 200_000  # ~14 MB, ~2.6M tokens
    with pytest.raises(PromptTooLong) as caught:
        count_request_prompt({"messages": [{"role": "user", "content": text}]}, "gpt-4o-mini", limit=5_000)
    assert 5_000 < caught.value.counted <= 5_000 + PIECE_CHARS  # stopped within one piece
    short = WORDS * 2_000  # longer than a piece: counted piece by piece, within a token per cut of the whole
    assert abs(count_request_prompt({"input": short}, "gpt-4o-mini")
               - count_request_prompt({"input": short}, "gpt-4o-mini", limit=10**9)) == 0
    whole = len(get_encoding("o200k_base").encode_ordinary(short))
    assert abs(count_request_prompt({"input": short}, "gpt-4o-mini") - whole) <= len(short) // PIECE_CHARS + 1


def test_a_conversation_counts_as_the_whole_context_window(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=[{"name": "tiny", "key": TINY_KEY, "budget_usd": 0.001},
                       {"name": "mid", "key": BIG_KEY, "budget_usd": 1.0}])
    body = {"model": "gpt-4o-mini", "input": "hi", "conversation": "conv_123", "max_output_tokens": 16}
    refused = fetch("POST", gw.url + "/responses", key=TINY_KEY, json=body)
    assert refused.status == 429  # 128k tokens of context cost more than $0.001
    forwarded = fetch("POST", gw.url + "/responses", key=BIG_KEY, json=body)
    assert forwarded.status == 404  # admitted; the mock has no conversations
    gw.rows(expect=2)
    (mid,) = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=BIG_KEY).body)["budgets"]
    assert mid["reserved_usd"] == "0.000000" and mid["spent_usd"] == "0.000000"
