"""End to end: POST /v1/chat/completions of the mock, through the real `openai` SDK and raw HTTP.

Every body and stream chunk is checked against OpenAI's published schemas when the OpenAPI file is
present (`test_bodies_match_openapi` reports the skip when it is not).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from mockserver.settings import MockSettings
from proxy.wire.tokens import count_chat_prompt, count_text
from tests.http import conforms, error_of, joined_deltas, post, sse_payloads
from tests.openapi import requires_spec, validate, validate_sse_events

CLOCK_START = MockSettings().clock_start
SOURDOUGH = [{"role": "user", "content": "Sourdough starter: how do I keep it alive over a long holiday?"}]
VOLCANO = [{"role": "user", "content": "Volcanoes erupt for which geological reasons?"}]


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def chat_url(mock_url: str) -> str:
    return mock_url + "/chat/completions"


def chat(chat_url: str, **body: Any) -> dict[str, Any]:
    """A successful non-streamed chat completion, schema-checked."""
    reply = post(chat_url, {"model": "gpt-4o-mini", **body})
    assert reply.status == 200, reply.body
    completion = reply.json()
    conforms("CreateChatCompletionResponse", completion)
    return completion


def chat_stream(chat_url: str, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a successful streamed chat completion, framing and schema checked."""
    reply = post(chat_url, {"model": "gpt-4o-mini", "stream": True, **body})
    assert reply.status == 200, reply.body
    assert reply.headers.get_content_type() == "text/event-stream"
    chunks = sse_payloads(reply.body)
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    return chunks


def content(completion: dict[str, Any], index: int = 0) -> str:
    return completion["choices"][index]["message"]["content"]


# --- non-streamed answers -------------------------------------------------------------------------

def test_answer_is_readable_text_about_the_prompt(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=SOURDOUGH)
    conforms("CreateChatCompletionResponse", json.loads(raw.text))
    completion = raw.parse()
    other = client.chat.completions.create(model="gpt-4o", messages=VOLCANO)

    answer = completion.choices[0].message.content
    assert completion.object == "chat.completion" and completion.model == "gpt-4o"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert "sourdough" in answer.lower() and "volcano" not in answer.lower()
    assert "volcano" in other.choices[0].message.content.lower()
    assert answer != other.choices[0].message.content
    assert len(answer.split()) >= 10 and answer.endswith((".", "!", "?"))
    assert "lorem" not in answer.lower()


def test_n_choices_are_indexed_and_differ(chat_url: str) -> None:
    completion = chat(chat_url, messages=SOURDOUGH, n=3)

    assert [c["index"] for c in completion["choices"]] == [0, 1, 2]
    texts = [content(completion, i) for i in range(3)]
    assert len(set(texts)) == 3
    assert all("sourdough" in t.lower() for t in texts)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "gpt-3.5-turbo"])
def test_usage_counts_prompt_like_openai_and_completion_by_tokenizer(chat_url: str, model: str) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ada", "content": "What is a monad?"},
        {"role": "assistant", "content": "A design pattern."},
        {"role": "user", "content": [{"type": "text", "text": "Explain functors with an example."}]},
    ]
    completion = chat(chat_url, model=model, messages=messages, n=2)

    usage = completion["usage"]
    assert usage["prompt_tokens"] == count_chat_prompt(messages, model)
    assert usage["completion_tokens"] == sum(count_text(content(completion, i), model) for i in range(2))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert "functors" in content(completion, 0).lower()


@pytest.mark.parametrize("limit", [
    {"max_tokens": 5},
    {"max_completion_tokens": 5},
    {"max_completion_tokens": None, "max_tokens": 5},
    {"max_tokens": None, "max_completion_tokens": 5},
])
def test_token_limit_truncates_the_same_answer(chat_url: str, limit: dict[str, Any]) -> None:
    full = chat(chat_url, messages=SOURDOUGH)
    cut = chat(chat_url, messages=SOURDOUGH, **limit)

    text = content(cut)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 5 == count_text(text, "gpt-4o-mini")
    assert content(full).startswith(text) and len(text) < len(content(full))
    assert cut["id"] != full["id"]


def test_token_limit_above_the_answer_changes_nothing(chat_url: str) -> None:
    full = chat(chat_url, messages=SOURDOUGH)
    roomy = chat(chat_url, messages=SOURDOUGH, max_tokens=full["usage"]["completion_tokens"])

    assert content(roomy) == content(full)
    assert roomy["choices"][0]["finish_reason"] == "stop"


def test_stop_cuts_before_the_earliest_stop_string(chat_url: str) -> None:
    full = content(chat(chat_url, messages=SOURDOUGH))
    words = full.split(" ")
    early, late = " " + words[3], " " + words[-2]
    assert 0 < full.find(early) < full.find(late)

    single = chat(chat_url, messages=SOURDOUGH, stop=late)
    several = chat(chat_url, messages=SOURDOUGH, stop=[late, "no such text", early])
    absent = chat(chat_url, messages=SOURDOUGH, stop="no such text")

    assert content(single) == full[: full.find(late)]
    assert content(several) == full[: full.find(early)]
    assert content(absent) == full
    for completion in (single, several, absent):
        assert completion["choices"][0]["finish_reason"] == "stop"
        assert completion["usage"]["completion_tokens"] == count_text(content(completion), "gpt-4o-mini")


def test_sampling_and_bookkeeping_parameters_are_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=SOURDOUGH, temperature=0.2, top_p=0.9, seed=42, user="user-1234",
        metadata={"team": "search"}, store=True, frequency_penalty=0.5, presence_penalty=-0.5,
        logit_bias={"1734": -100}, service_tier="auto", parallel_tool_calls=True,
    )
    assert "sourdough" in completion.choices[0].message.content.lower()


def test_bookkeeping_parameters_do_not_change_the_answer(chat_url: str) -> None:
    plain = chat(chat_url, messages=SOURDOUGH)
    tagged = chat(chat_url, messages=SOURDOUGH, user="u-1", metadata={"k": "v"}, store=False)
    seeded = chat(chat_url, messages=SOURDOUGH, seed=7)

    assert content(tagged) == content(plain)
    assert content(seeded) != content(plain)


def test_logprobs_follow_the_tokens_of_the_answer(chat_url: str) -> None:
    plain = chat(chat_url, messages=SOURDOUGH)
    completion = chat(chat_url, messages=SOURDOUGH, logprobs=True, top_logprobs=3)

    assert content(completion) == content(plain)
    logprobs = completion["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    entries = logprobs["content"]
    assert "".join(e["token"] for e in entries) == content(completion)
    assert len(entries) == completion["usage"]["completion_tokens"]
    for entry in entries:
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        top = entry["top_logprobs"]
        assert len(top) == 3 and len({t["token"] for t in top}) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)
    assert plain["choices"][0]["logprobs"] is None


def test_logprobs_without_top_logprobs_have_empty_alternatives(chat_url: str) -> None:
    completion = chat(chat_url, messages=SOURDOUGH, logprobs=True)

    entries = completion["choices"][0]["logprobs"]["content"]
    assert entries and all(e["top_logprobs"] == [] for e in entries)


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5"])
def test_reasoning_models_report_reasoning_tokens(chat_url: str, model: str) -> None:
    completion = chat(chat_url, model=model, messages=SOURDOUGH, temperature=1)

    usage = completion["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert usage["completion_tokens"] == count_text(content(completion), model) + reasoning
    assert "sourdough" in content(completion).lower()


def test_reasoning_can_use_the_whole_budget(chat_url: str) -> None:
    completion = chat(chat_url, model="o3-mini", messages=SOURDOUGH, max_completion_tokens=10)

    assert content(completion) == ""
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 10
    assert completion["usage"]["completion_tokens_details"]["reasoning_tokens"] == 10


@pytest.mark.parametrize("model", ["o3-mini", "gpt-5"])
def test_reasoning_models_reject_max_tokens_and_temperature(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as max_tokens:
        client.chat.completions.create(model=model, messages=SOURDOUGH, max_tokens=100)
    with pytest.raises(openai.BadRequestError) as temperature:
        client.chat.completions.create(model=model, messages=SOURDOUGH, temperature=0.5)

    assert max_tokens.value.status_code == 400
    assert max_tokens.value.body == {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                   "'max_completion_tokens' instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
    }
    assert temperature.value.body == {
        "message": "Unsupported value: 'temperature' does not support 0.5 with this model. Only the default (1) "
                   "value is supported.",
        "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value",
    }


def test_identical_requests_get_identical_bytes_and_ids(chat_url: str) -> None:
    body = {"model": "gpt-4o", "messages": SOURDOUGH, "n": 2}
    first, second = post(chat_url, body), post(chat_url, body)
    other = post(chat_url, {**body, "messages": VOLCANO})

    assert first.body == second.body
    assert first.headers["x-request-id"] == second.headers["x-request-id"] != other.headers["x-request-id"]
    one, two = first.json(), other.json()
    assert one["id"].startswith("chatcmpl-") and one["id"] != two["id"]
    assert one["created"] == two["created"] == CLOCK_START
    assert one["system_fingerprint"].startswith("fp_")
    assert one["system_fingerprint"] == two["system_fingerprint"]


# --- streaming ------------------------------------------------------------------------------------

def test_stream_is_openai_sse_with_usage_chunk(chat_url: str) -> None:
    body = {"messages": SOURDOUGH, "stream_options": {"include_usage": True}}
    completion = chat(chat_url, messages=SOURDOUGH)
    chunks = chat_stream(chat_url, **body)

    *choice_chunks, usage_chunk = chunks
    first, *deltas, last = choice_chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["delta"].get("content") in ("", None)
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in deltas)
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *deltas])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in choice_chunks)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == completion["usage"]
    assert len(deltas) == completion["usage"]["completion_tokens"]
    assert joined_deltas(chunks) == {0: content(completion)}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({(c["id"], c["created"], c["model"], c["system_fingerprint"]) for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_field(chat_url: str) -> None:
    chunks = chat_stream(chat_url, messages=SOURDOUGH)

    assert chunks and all("usage" not in c for c in chunks)
    assert all(len(c["choices"]) == 1 for c in chunks)


def test_stream_of_n_choices_matches_the_non_streamed_choices(chat_url: str) -> None:
    completion = chat(chat_url, messages=SOURDOUGH, n=3, max_tokens=12)
    chunks = chat_stream(chat_url, messages=SOURDOUGH, n=3, max_tokens=12)

    assert joined_deltas(chunks) == {i: content(completion, i) for i in range(3)}
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"][0]["finish_reason"]}
    assert finishes == {i: completion["choices"][i]["finish_reason"] for i in range(3)}
    assert set(finishes.values()) == {"length"}


def test_stream_logprobs_come_with_each_delta(chat_url: str) -> None:
    completion = chat(chat_url, messages=SOURDOUGH, logprobs=True, top_logprobs=2)
    chunks = chat_stream(chat_url, messages=SOURDOUGH, logprobs=True, top_logprobs=2)

    deltas = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert [d["logprobs"]["content"][0]["token"] for d in deltas] == [d["delta"]["content"] for d in deltas]
    assert [d["logprobs"]["content"][0] for d in deltas] == completion["choices"][0]["logprobs"]["content"]


def test_sdk_streams_sync(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=VOLCANO)
    with client.chat.completions.create(model="gpt-4o", messages=VOLCANO, stream=True,
                                        stream_options={"include_usage": True}) as stream:
        chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == completion.usage
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_sdk_async_matches_sync(client: openai.OpenAI, mock_url: str) -> None:
    async def run() -> tuple[Any, list[Any]]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            completion = await aclient.chat.completions.create(model="gpt-4o", messages=SOURDOUGH, n=2)
            stream = await aclient.chat.completions.create(model="gpt-4o", messages=SOURDOUGH, n=2, stream=True)
            async with stream:
                chunks = [chunk async for chunk in stream]
        return completion, chunks

    completion, chunks = asyncio.run(run())
    sync = client.chat.completions.create(model="gpt-4o", messages=SOURDOUGH, n=2)

    assert completion == sync
    streamed = {0: "", 1: ""}
    for chunk in chunks:
        streamed[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert streamed == {i: sync.choices[i].message.content for i in range(2)}


# --- errors ---------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
BASE = {"model": "gpt-4o-mini", "messages": MESSAGES}
PARSE_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)

BAD_REQUESTS = [
    pytest.param(b'{"model": "gpt-4o-mini", "messages": [', 400, PARSE_ERROR, None, None, id="malformed-json"),
    pytest.param(b"", 400, PARSE_ERROR, None, None, id="empty-body"),
    pytest.param(b"[1, 2]", 400, "Invalid type for request body: expected an object, but got an array instead.",
                 None, "invalid_type", id="array-body"),
    pytest.param({"model": "gpt-4o-mini"}, 400, "Missing required parameter: 'messages'.", "messages",
                 "missing_required_parameter", id="no-messages"),
    pytest.param({"messages": MESSAGES}, 400, "Missing required parameter: 'model'.", "model",
                 "missing_required_parameter", id="no-model"),
    pytest.param({**BASE, "n": "2"}, 400, "Invalid type for 'n': expected an integer, but got a string instead.",
                 "n", "invalid_type", id="n-string"),
    pytest.param({**BASE, "temperature": "hot"}, 400,
                 "Invalid type for 'temperature': expected a decimal, but got a string instead.", "temperature",
                 "invalid_type", id="temperature-string"),
    pytest.param({**BASE, "messages": "hi"}, 400,
                 "Invalid type for 'messages': expected an array, but got a string instead.", "messages",
                 "invalid_type", id="messages-string"),
    pytest.param({**BASE, "messages": [{"role": "bot", "content": "hi"}]}, 400,
                 "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', "
                 "and 'developer'.", "messages[0].role", "invalid_value", id="bad-role"),
    pytest.param({**BASE, "messages": []}, 400,
                 "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                 "array instead.", "messages", "empty_array", id="empty-messages"),
    pytest.param({**BASE, "temperature": 3}, 400,
                 "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.",
                 "temperature", "decimal_above_max_value", id="temperature-3"),
    pytest.param({**BASE, "top_p": -1}, 400,
                 "Invalid 'top_p': decimal below minimum value. Expected a value >= 0, but got -1 instead.",
                 "top_p", "decimal_below_min_value", id="top_p-negative"),
    pytest.param({**BASE, "n": 0}, 400,
                 "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.", "n",
                 "integer_below_min_value", id="n-0"),
    pytest.param({**BASE, "n": 129}, 400,
                 "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead.", "n",
                 "integer_above_max_value", id="n-129"),
    pytest.param({**BASE, "foo": 1}, 400, "Unrecognized request argument supplied: foo", None, None,
                 id="unknown-parameter"),
    pytest.param({**BASE, "messages": [{"role": "user"}]}, 400,
                 "Missing required parameter: 'messages[0].content'.", "messages[0].content",
                 "missing_required_parameter", id="user-without-content"),
    pytest.param({**BASE, "stream_options": {"include_usage": True}}, 400,
                 "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options",
                 "invalid_value", id="stream-options-without-stream"),
    pytest.param({**BASE, "top_logprobs": 2}, 400,
                 "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
                 "top_logprobs", "invalid_value", id="top-logprobs-without-logprobs"),
    pytest.param({**BASE, "top_logprobs": 21, "logprobs": True}, 400,
                 "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 21 "
                 "instead.", "top_logprobs", "integer_above_max_value", id="top-logprobs-21"),
    pytest.param({**BASE, "max_tokens": 0}, 400,
                 "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.",
                 "max_tokens", "integer_below_min_value", id="max-tokens-0"),
    pytest.param({**BASE, "model": "gpt-4o", "max_tokens": 16385}, 400,
                 "max_tokens is too large: 16385. This model supports at most 16384 completion tokens, whereas "
                 "you provided 16385.", "max_tokens", "invalid_value", id="max-tokens-too-large"),
    pytest.param({**BASE, "stop": ["a", "b", "c", "d", "e"]}, 400,
                 "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with "
                 "length 5 instead.", "stop", "array_above_max_length", id="five-stops"),
    pytest.param({**BASE, "model": "gpt-4o-nonexistent"}, 404,
                 "The model `gpt-4o-nonexistent` does not exist or you do not have access to it.", None,
                 "model_not_found", id="unknown-model"),
    pytest.param({**BASE, "model": "text-embedding-3-small"}, 404,
                 "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you "
                 "mean to use v1/embeddings?", "model", None, id="embedding-model"),
    pytest.param({**BASE, "model": "gpt-3.5-turbo-instruct"}, 404,
                 "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you "
                 "mean to use v1/completions?", "model", None, id="completion-model"),
]


@pytest.mark.parametrize(("body", "status", "message", "param", "code"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(
    chat_url: str, body: Any, status: int, message: str, param: str | None, code: str | None
) -> None:
    reply = post(chat_url, raw=body) if isinstance(body, bytes) else post(chat_url, body)

    assert error_of(reply, status) == {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}


def test_bad_stream_request_is_answered_with_json_not_sse(chat_url: str) -> None:
    reply = post(chat_url, {**BASE, "stream": True, "temperature": 9})

    assert error_of(reply, 400)["param"] == "temperature"


def test_missing_authorization_is_401(chat_url: str) -> None:
    reply = post(chat_url, BASE, headers={})

    error = error_of(reply, 401)
    assert error["message"].startswith("You didn't provide an API key.")
    assert error["type"] == "invalid_request_error" and error["param"] is None and error["code"] is None


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o", messages=[], stream=True)

    assert missing.value.code == "model_not_found"
    assert bad.value.param == "messages" and bad.value.code == "empty_array"


# --- schema ---------------------------------------------------------------------------------------

@requires_spec
def test_bodies_match_openapi(chat_url: str) -> None:
    validate("CreateChatCompletionResponse",
             post(chat_url, {**BASE, "n": 2, "logprobs": True, "top_logprobs": 20, "max_tokens": 30}).json())
    validate("CreateChatCompletionResponse", post(chat_url, {**BASE, "model": "gpt-5"}).json())
    raw = post(chat_url, {**BASE, "stream": True, "n": 2, "logprobs": True, "top_logprobs": 1,
                          "stream_options": {"include_usage": True}}).body
    assert len(validate_sse_events("CreateChatCompletionStreamResponse", raw)) > 4
    validate("ErrorResponse", post(chat_url, {**BASE, "n": 0}).json())
