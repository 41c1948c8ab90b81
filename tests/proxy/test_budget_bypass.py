"""Budgets that cannot be bypassed, and each call charged once (issue 15): through a running gateway,
with the real SDK or raw HTTP, against the bundled mock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """The key's own large response (~28k tokens, ~$0.0043 of its $0.005): each chained request's real
    prompt holds all of it, more than what is left. Another key's response, or an id the gateway never
    saw, is refused too (by the budget, or by the ownership check where it runs first)."""
    db = tmp_path / "chain.db"
    keys = [{"name": "tiny", "key": TINY_KEY, "budget_usd": 0.005}, {"name": "big", "key": BIG_KEY}]
    gw = gateway(keys=keys, db=db)
    with gw.client(TINY_KEY) as tiny:
        own = tiny.responses.create(model="gpt-4o-mini", input=WORDS * 2000, max_output_tokens=16)
    with gw.client(BIG_KEY) as big:
        other = big.responses.create(model="gpt-4o-mini", input=WORDS * 2000, max_output_tokens=16)
    assert own.usage.input_tokens > 25_000
    statuses = []
    for previous in [own.id] * 15 + [other.id] * 15 + ["resp_" + "0" * 32]:
        reply = fetch("POST", gw.url + "/responses", key=TINY_KEY,
                      json={"model": "gpt-4o-mini", "input": "and then?", "max_output_tokens": 16,
                            "previous_response_id": previous})
        statuses.append(reply.status)
    rows = gw.rows(expect=33)
    assert 200 not in statuses and set(statuses) <= {404, 429}, statuses
    assert statuses[:15] == [429] * 15
    assert spent(rows, "tiny") <= 5_000
    gw.stop()
    # after a restart the stored response's size comes from the ledger
    again = gateway(keys=keys, db=db)
    with again.client(TINY_KEY) as tiny, pytest.raises(openai.RateLimitError) as caught:
        tiny.responses.create(model="gpt-4o-mini", input="and then?", max_output_tokens=16,
                              previous_response_id=own.id)
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
    unknown = fetch("POST", gw.url + "/responses", key=TINY_KEY, json={
        "model": "gpt-4o-mini", "input": "More", "max_output_tokens": 30, "previous_response_id": "resp_" + "1" * 32})
    assert unknown.status in (404, 429)  # 429: counted as 128k tokens (404 where an ownership check runs first)
    assert second.usage.input_tokens > first.usage.total_tokens
    rows = gw.rows(expect=3)
    assert spent(rows, "tiny") == int(float(budget_of(gw, TINY_KEY)["spent_usd"]) * 1e6)
    gw.stop()
    with gateway(mock, keys=tiny_keys, db=db).client(TINY_KEY) as tiny:
        third = tiny.responses.create(model="gpt-4o-mini", input="And?", max_output_tokens=30,
                                      previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.total_tokens


def estimate_of(body: dict[str, Any], bound: int | None = None, chains: dict[str, int] | None = None) -> Any:
    """The estimator alone, on a request a budget applies to (`bound`: the prompt tokens it can pay for)."""
    import asyncio

    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.exchange import Exchange
    from proxy.stages.estimate import Estimator
    from proxy.wire.pricing import PriceTable

    ex = Exchange("POST", "/v1/responses", "", CIMultiDictProxy(CIMultiDict()), json.dumps(body).encode())
    estimator = Estimator(4096, prices=PriceTable(), chains=(chains or {}).get, budgeted=lambda _: (True, bound))
    asyncio.run(estimator.request(ex))
    return ex.estimate


def test_what_a_chained_request_carries_is_estimated() -> None:
    from proxy.stages.estimate import Unestimable

    plain = estimate_of({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16})
    known = estimate_of({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16,
                         "previous_response_id": "resp_a"}, chains={"resp_a": 5_000})
    assert known.prompt == plain.prompt + 5_000 and known.completion == plain.completion == 16
    for extra in ({"previous_response_id": "resp_unseen"}, {"conversation": "conv_1"},
                  {"prompt": {"id": "pmpt_1"}}):
        bounded = estimate_of({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16, **extra})
        assert bounded.prompt == plain.prompt + 128_000  # gpt-4o-mini's context window
    with pytest.raises(Unestimable, match="previous_response_id"):  # no window known: refused
        estimate_of({"model": "house-model", "input": "hi", "previous_response_id": "resp_unseen"})


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
        if content_type is not None:  # JSON, whatever the Content-Type says: estimated, admitted, charged
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
    if "training_file" in body:  # a file the key owns
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("purpose", "fine-tune")
        form.add_field("file", b'{"messages": []}\n', filename="train.jsonl")
        body = {**body, "training_file": json.loads(fetch("POST", gw.url + "/files", key=TINY_KEY,
                                                          data=form).body)["id"]}
    reply = fetch("POST", gw.url + path, key=TINY_KEY, json=body)
    assert reply.status == 400 and json.loads(reply.body)["error"]["code"] == "unestimable_request"
    unbudgeted = fetch("POST", gw.url + path, key=BIG_KEY, json=body)
    # forwarded: the mock answers (images, speech) or refuses (another key's file, the Realtime API) itself
    assert b"unestimable_request" not in unbudgeted.body
    assert unbudgeted.headers.get("x-request-id") or unbudgeted.status in (403, 404)


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
                  json={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user",
                                                                               "content": WORDS * 12_000}]})
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
    assert refused.status in (404, 429)  # 128k tokens of context cost more than $0.001
    forwarded = fetch("POST", gw.url + "/responses", key=BIG_KEY, json=body)
    assert forwarded.status == 404  # admitted (or refused by an ownership check); the mock has no conversations
    gw.rows(expect=2)
    (mid,) = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=BIG_KEY).body)["budgets"]
    assert mid["reserved_usd"] == "0.000000" and mid["spent_usd"] == "0.000000"


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/octet-stream"])
def test_a_model_budget_cannot_be_skipped_by_an_upload_content_type(gateway: Callable[..., Gateway],
                                                                     content_type: str) -> None:
    """A JSON body sent as an upload is read and parsed (found in review): its model's budget applies."""
    gw = gateway(budgets=[{"model": "gpt-4o-mini", "budget_usd": 0.000001}])
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 50,
                       "messages": [{"role": "user", "content": "Tell me about rivers"}]}).encode()
    assert fetch("POST", gw.url + "/chat/completions", json=json.loads(body)).status == 429
    reply = fetch("POST", gw.url + "/chat/completions", data=body, headers={"Content-Type": content_type})
    assert reply.status == 429, reply.body


@pytest.mark.parametrize("part", [
    {"type": "item_reference", "id": "msg_0123"},
    {"role": "user", "content": [{"type": "input_file", "file_id": "file-abc"}]},
], ids=["item_reference", "input_file"])
def test_inputs_the_gateway_cannot_count_are_bounded_by_the_context_window(gateway: Callable[..., Gateway],
                                                                          part: dict[str, Any]) -> None:
    """The upstream expands an item reference or a file into tokens the body does not show (found in
    review: 20 references to a 3k-token item spent 3x a token budget in one request)."""
    gw = gateway(limits={"budget_tokens": 20_000})
    body = {"model": "gpt-4o-mini", "input": [part] * 20, "max_output_tokens": 16}
    reply = fetch("POST", gw.url + "/responses", json=body)
    assert reply.status == 429, reply.body  # its bound, the model's 128k window, does not fit 20k tokens
    assert json.loads(reply.body)["error"]["code"] == "budget_exceeded"
