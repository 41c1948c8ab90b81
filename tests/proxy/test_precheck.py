"""Spending nothing on what cannot succeed: the context-window pre-check, a model the upstream does not
serve (404 `model_not_found`, from its `/v1/models` list), and `finish_reason` in the ledger.

Every test runs the gateway in front of a standalone mock whose request journal shows what reached it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.stages.estimate import context_error
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_chat_prompt
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, Gateway, fetch
from .mocks import MockUpstream

BIG = "hello " * 200_000  # over 200,000 tokens


@pytest.fixture
def mock(upstream: Callable[[web.Application], ServerThread]) -> MockUpstream:
    return MockUpstream.start(upstream, models=["house-model"])


def chat(gw: Gateway, **body: Any) -> tuple[int, dict[str, Any]]:
    reply = fetch("POST", gw.url + "/chat/completions",
                  json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], **body})
    return reply.status, json.loads(reply.body)


def test_a_200k_prompt_to_a_128k_model_is_refused_before_any_upstream_call(
        gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = gateway(mock.url)
    with gw.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": BIG}])
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    counted = count_chat_prompt([{"role": "user", "content": BIG}], "gpt-4o")
    assert counted > 200_000
    assert error["message"] == ("This model's maximum context length is 128000 tokens. However, your messages "
                                f"resulted in {counted} tokens. Please reduce the length of the messages.")
    assert mock.calls("/v1/chat/completions") == []
    [row] = gw.rows(expect=1)
    assert (row["status"], row["error_type"], row["cost_microusd"]) == (400, "context_length_exceeded", 0)


def test_the_requested_output_counts_against_the_window(gateway: Callable[..., Gateway],
                                                        mock: MockUpstream) -> None:
    gw = gateway(mock.url)
    status, body = chat(gw, model="gpt-4", max_tokens=8190)
    assert status == 400
    assert body["error"]["message"] == (
        "This model's maximum context length is 8192 tokens. However, you requested 8198 tokens (8 in the "
        "messages, 8190 in the completion). Please reduce the length of the messages or completion.")
    status, _ = chat(gw, model="gpt-4", max_tokens=8184)  # 8 + 8184 = 8192 fits
    assert status == 200
    assert len(mock.calls("/v1/chat/completions")) == 1


def test_windows_are_overridable_per_model_and_the_check_can_be_off(gateway: Callable[..., Gateway],
                                                                    mock: MockUpstream) -> None:
    gw = gateway(mock.url, limits={"context_windows": {"gpt-4o-mini": 20}})
    assert chat(gw, model="gpt-4o-mini")[0] == 200
    status, body = chat(gw, model="gpt-4o-mini", messages=[{"role": "user", "content": "one two " * 10}])
    assert status == 400 and "maximum context length is 20 tokens" in body["error"]["message"]
    off = gateway(mock.url, limits={"check_context_window": False, "context_windows": {"gpt-4o-mini": 20}})
    assert chat(off, model="gpt-4o-mini", messages=[{"role": "user", "content": "one two " * 10}])[0] == 200


def test_the_responses_api_gets_its_own_message(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = gateway(mock.url, limits={"context_windows": {"gpt-4o-mini": 10}})
    with gw.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o-mini", input="one two three four five six seven eight nine ten eleven")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["param"] == "input"
    assert caught.value.body["message"] == context_error("/v1/responses", 10, 11, 0).message
    assert mock.calls("/v1/responses") == []


def test_budgeted_requests_are_checked_too(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = gateway(mock.url, keys=[{"name": "team", "key": CLIENT_KEY, "budget_usd": 100}])
    status, body = chat(gw, model="gpt-4", max_tokens=9000)
    assert (status, body["error"]["code"]) == (400, "context_length_exceeded")
    with gw.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": BIG}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "context_length_exceeded"
    assert f" {count_chat_prompt([{'role': 'user', 'content': BIG}], 'gpt-4o')} tokens" in caught.value.message
    assert mock.calls("/v1/chat/completions") == []


def test_a_model_the_upstream_does_not_serve_is_404_not_a_price_hint(gateway: Callable[..., Gateway],
                                                                     mock: MockUpstream) -> None:
    gw = gateway(mock.url, keys=[{"name": "team", "key": CLIENT_KEY, "budget_usd": 1}])
    with gw.client() as client:
        for _ in range(2):
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "Hi"}])
            assert caught.value.body == {"message": "The model `gpt-nope` does not exist or you do not have access "
                                         "to it.", "type": "invalid_request_error", "param": None,
                                         "code": "model_not_found"}
        # served upstream, but no price: the hint to add one
        with pytest.raises(openai.BadRequestError) as hint:
            client.chat.completions.create(model="house-model", messages=[{"role": "user", "content": "Hi"}])
    assert isinstance(hint.value.body, dict) and hint.value.body["code"] == "unknown_model_price"
    assert '[prices."house-model"]' in hint.value.body["message"]
    assert len(mock.calls("/v1/models", "GET")) == 1  # fetched once, then kept
    assert mock.calls("/v1/chat/completions") == []


def test_a_list_that_cannot_be_had_keeps_the_price_hint(gateway: Callable[..., Gateway],
                                                        upstream: Callable[[web.Application], ServerThread]) -> None:
    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=500)

    app = web.Application()
    app.router.add_get("/v1/models", broken)
    server = upstream(app)
    gw = gateway(server.url + "/v1", keys=[{"name": "team", "key": CLIENT_KEY, "budget_usd": 1}])
    status, body = chat(gw, model="gpt-nope")
    assert (status, body["error"]["code"]) == (400, "unknown_model_price")


@pytest.mark.parametrize("stream", [False, True])
def test_finish_reason_is_in_the_ledger(gateway: Callable[..., Gateway], mock: MockUpstream, stream: bool) -> None:
    gw = gateway(mock.url)
    with gw.client() as client:
        messages: Any = [{"role": "user", "content": "Tell me a long story."}]
        cut = client.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=2, stream=stream)
        whole = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=stream)
        if stream:
            list(cut), list(whole)
        short = client.responses.create(model="gpt-4o-mini", input="Tell me a long story.", max_output_tokens=16,
                                        stream=stream)
        if stream:
            list(short)
    rows = gw.rows(expect=3)
    assert [r["finish_reason"] for r in rows] == ["length", "stop", "max_output_tokens"]


@given(st.lists(st.tuples(st.sampled_from(["user", "system", "assistant"]), st.text(max_size=200)), min_size=1,
                max_size=5),
       st.sampled_from(["gpt-4o", "gpt-4", "gpt-3.5-turbo"]))
@settings(max_examples=200, deadline=None)
def test_a_text_body_never_has_more_tokens_than_bytes(messages: list[tuple[str, str]], model: str) -> None:
    """What lets the pre-check skip counting a body smaller than the window: each token of text is at
    least one byte of it, and the JSON around the messages outweighs their framing tokens."""
    body = {"model": model, "messages": [{"role": role, "content": text} for role, text in messages]}
    assert count_chat_prompt(body["messages"], model) <= len(dumps(body))
