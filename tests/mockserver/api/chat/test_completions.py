"""End to end: the legacy POST /v1/completions of the mock, through the real `openai` SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import openai
import pytest

from proxy.wire.tokens import count_text, encoding_for_model
from tests.http import conforms, error_of, post, sse_payloads
from tests.openapi import requires_spec, validate

MODEL = "gpt-3.5-turbo-instruct"
VOLCANO = "Volcanoes erupt because"
SAXOPHONE = "The saxophone was invented by"


@pytest.fixture
def url(mock_url: str) -> str:
    return mock_url + "/completions"


def complete(url: str, **body: Any) -> dict[str, Any]:
    """A successful non-streamed completion, schema-checked."""
    reply = post(url, {"model": MODEL, **body})
    assert reply.status == 200, reply.body
    completion = reply.json()
    conforms("CreateCompletionResponse", completion)
    return completion


def as_spec_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    """A stream chunk in the shape the spec's CreateCompletionResponse describes.

    The spec says streamed and non-streamed completions share one shape, but OpenAI sends
    `finish_reason: null` on every chunk but the last of a choice and `usage: null` with
    `include_usage`; the spec allows neither, so those nulls are dropped or filled before validation.
    """
    chunk = copy.deepcopy(chunk)
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "length"
    if chunk.get("usage", ...) is None:
        del chunk["usage"]
    return chunk


def complete_stream(url: str, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a successful streamed completion, framing and schema checked."""
    reply = post(url, {"model": MODEL, "stream": True, **body})
    assert reply.status == 200, reply.body
    assert reply.headers.get_content_type() == "text/event-stream"
    chunks = sse_payloads(reply.body)
    for chunk in chunks:
        conforms("CreateCompletionResponse", as_spec_chunk(chunk))
    return chunks


def texts(completion: dict[str, Any]) -> list[str]:
    return [c["text"] for c in completion["choices"]]


def test_string_prompt_defaults_to_16_tokens(url: str) -> None:
    completion = complete(url, prompt=VOLCANO)

    assert completion["object"] == "text_completion" and completion["id"].startswith("cmpl-")
    (choice,) = completion["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert count_text(choice["text"], MODEL) == 16 == completion["usage"]["completion_tokens"]
    assert completion["usage"] == {"prompt_tokens": count_text(VOLCANO, MODEL), "completion_tokens": 16,
                                   "total_tokens": count_text(VOLCANO, MODEL) + 16}


def test_text_continues_the_prompt_topic(url: str) -> None:
    volcano = complete(url, prompt=VOLCANO, max_tokens=200)
    saxophone = complete(url, prompt=SAXOPHONE, max_tokens=200)

    assert volcano["choices"][0]["finish_reason"] == "stop"
    assert "volcanoes" in volcano["choices"][0]["text"].lower()
    assert "saxophone" in saxophone["choices"][0]["text"].lower()
    assert texts(volcano) != texts(saxophone)


def test_list_of_prompts_gives_prompt_major_choices(url: str) -> None:
    completion = complete(url, prompt=[VOLCANO, SAXOPHONE], n=2, max_tokens=200)

    assert [c["index"] for c in completion["choices"]] == [0, 1, 2, 3]
    first, second, third, fourth = (t.lower() for t in texts(completion))
    assert "volcanoes" in first and "volcanoes" in second and "saxophone" not in first + second
    assert "saxophone" in third and "saxophone" in fourth and "volcanoes" not in third + fourth
    assert first != second and third != fourth
    usage = completion["usage"]
    assert usage["prompt_tokens"] == count_text(VOLCANO, MODEL) + count_text(SAXOPHONE, MODEL)
    assert usage["completion_tokens"] == sum(count_text(t, MODEL) for t in texts(completion))


def test_token_array_prompts_are_decoded_and_counted_as_given(url: str) -> None:
    enc = encoding_for_model(MODEL)
    volcano = enc.encode(VOLCANO)
    # "saxophone" spelled one character per token: the prompt is billed as the tokens sent.
    spelled = [t for ch in "saxophone" for t in enc.encode(ch)]
    assert len(spelled) > len(enc.encode("saxophone"))

    single = complete(url, prompt=volcano, max_tokens=200)
    several = complete(url, prompt=[volcano, spelled], max_tokens=200)

    assert "volcanoes" in single["choices"][0]["text"].lower()
    assert single["usage"]["prompt_tokens"] == len(volcano)
    assert "volcanoes" in several["choices"][0]["text"].lower()
    assert "saxophone" in several["choices"][1]["text"].lower()
    assert several["usage"]["prompt_tokens"] == len(volcano) + len(spelled)


def test_null_prompt_is_a_fresh_document(url: str) -> None:
    completion = complete(url, prompt=None, max_tokens=200, echo=True)

    assert completion["usage"]["prompt_tokens"] == 1
    assert completion["choices"][0]["text"].startswith(" ")
    assert "endoftext" not in completion["choices"][0]["text"]


def test_max_tokens_and_stop_cut_the_same_text(url: str) -> None:
    full = complete(url, prompt=VOLCANO, max_tokens=200)["choices"][0]["text"]
    short = complete(url, prompt=VOLCANO, max_tokens=3)
    words = full.split(" ")
    stop = " " + words[4]
    stopped = complete(url, prompt=VOLCANO, max_tokens=200, stop=[stop])

    assert full.startswith(short["choices"][0]["text"]) and short["usage"]["completion_tokens"] == 3
    assert short["choices"][0]["finish_reason"] == "length"
    assert stopped["choices"][0]["text"] == full[: full.find(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_echo_prepends_the_prompt(url: str) -> None:
    plain = complete(url, prompt=[VOLCANO, SAXOPHONE])
    echoed = complete(url, prompt=[VOLCANO, SAXOPHONE], echo=True)

    assert texts(echoed) == [VOLCANO + texts(plain)[0], SAXOPHONE + texts(plain)[1]]
    assert echoed["usage"] == plain["usage"]


def test_suffix_is_accepted(url: str) -> None:
    completion = complete(url, prompt="def add(a, b):", suffix="\n    return total", max_tokens=10)

    assert completion["choices"][0]["text"]


def test_logprobs_describe_each_token(url: str) -> None:
    plain = complete(url, prompt=VOLCANO, max_tokens=20)
    completion = complete(url, prompt=VOLCANO, max_tokens=20, logprobs=3)

    (choice,) = completion["choices"]
    assert choice["text"] == plain["choices"][0]["text"]
    logprobs = choice["logprobs"]
    tokens = logprobs["tokens"]
    assert "".join(tokens) == choice["text"] and len(tokens) == 20
    assert len(logprobs["token_logprobs"]) == 20 and all(v <= 0 for v in logprobs["token_logprobs"])
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert logprobs["text_offset"] == offsets
    for token, value, top in zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=False):
        assert len(top) == 3 and top[token] == value
        assert all(v <= value for v in top.values())


def test_logprobs_with_echo_offset_past_the_prompt(url: str) -> None:
    completion = complete(url, prompt=VOLCANO, echo=True, logprobs=0)

    logprobs = completion["choices"][0]["logprobs"]
    assert logprobs["text_offset"][0] == len(VOLCANO)
    assert VOLCANO + "".join(logprobs["tokens"]) == completion["choices"][0]["text"]


def test_stream_matches_the_non_streamed_completion(url: str) -> None:
    body = {"prompt": [VOLCANO, SAXOPHONE], "n": 2, "max_tokens": 24}
    completion = complete(url, **body)
    chunks = complete_stream(url, **body, stream_options={"include_usage": True})

    *text_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == completion["usage"]
    assert all(c["usage"] is None for c in text_chunks)
    streamed: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in text_chunks:
        (choice,) = chunk["choices"]
        streamed[choice["index"]] = streamed.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            assert choice["index"] not in finishes
            finishes[choice["index"]] = choice["finish_reason"]
    assert streamed == dict(enumerate(texts(completion)))
    assert finishes == {c["index"]: c["finish_reason"] for c in completion["choices"]}
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (completion["id"], completion["created"], MODEL, "text_completion")
    }


def test_stream_without_include_usage_has_no_usage_field(url: str) -> None:
    chunks = complete_stream(url, prompt=VOLCANO)

    assert len(chunks) > 16 and all("usage" not in c for c in chunks)


def test_stream_logprobs_offsets_run_through_the_text(url: str) -> None:
    completion = complete(url, prompt=VOLCANO, echo=True, logprobs=2, max_tokens=8)
    chunks = complete_stream(url, prompt=VOLCANO, echo=True, logprobs=2, max_tokens=8)

    streamed = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"] is not None]
    expected = completion["choices"][0]["logprobs"]
    assert [lp["tokens"][0] for lp in streamed] == expected["tokens"]
    assert [lp["text_offset"][0] for lp in streamed] == expected["text_offset"]
    assert [lp["top_logprobs"][0] for lp in streamed] == expected["top_logprobs"]


def test_sdk_sync_and_async(client: openai.OpenAI, mock_url: str) -> None:
    completion = client.completions.create(model=MODEL, prompt=VOLCANO, max_tokens=30)
    with client.completions.create(model=MODEL, prompt=VOLCANO, max_tokens=30, stream=True) as stream:
        streamed = "".join(c.choices[0].text for c in stream)

    async def run() -> tuple[Any, str]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            result = await aclient.completions.create(model=MODEL, prompt=VOLCANO, max_tokens=30)
            astream = await aclient.completions.create(model=MODEL, prompt=VOLCANO, max_tokens=30, stream=True)
            async with astream:
                text = "".join([c.choices[0].text async for c in astream])
        return result, text

    async_completion, async_streamed = asyncio.run(run())
    assert completion.choices[0].text == streamed == async_streamed
    assert async_completion == completion
    assert completion.usage.completion_tokens == count_text(streamed, MODEL)


BASE = {"model": MODEL, "prompt": "hi"}


@pytest.mark.parametrize(("body", "status", "message", "param", "code"), [
    pytest.param({"model": MODEL}, 400, "Missing required parameter: 'prompt'.", "prompt",
                 "missing_required_parameter", id="no-prompt"),
    pytest.param({**BASE, "logprobs": 6}, 400,
                 "Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got 6 instead.",
                 "logprobs", "integer_above_max_value", id="logprobs-6"),
    pytest.param({**BASE, "prompt": ["a", 1]}, 400,
                 "Invalid 'prompt': an array must hold only strings or only tokens.", "prompt", "invalid_value",
                 id="mixed-prompt"),
    pytest.param({**BASE, "prompt": [[1, 2], [-5]]}, 400,
                 "Invalid token in 'prompt[1]': every token must be in the model's vocabulary.", "prompt[1]",
                 "invalid_value", id="bad-token"),
    pytest.param({**BASE, "stream_options": {"include_usage": True}}, 400,
                 "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options",
                 "invalid_value", id="stream-options-without-stream"),
    pytest.param({**BASE, "best_of": 1, "n": 2}, 400, "best_of must be greater than or equal to n.", "best_of",
                 "invalid_value", id="best-of-below-n"),
    pytest.param({**BASE, "messages": []}, 400, "Unrecognized request argument supplied: messages", None, None,
                 id="chat-parameter"),
    pytest.param({**BASE, "model": "davinci-003"}, 404,
                 "The model `davinci-003` does not exist or you do not have access to it.", None,
                 "model_not_found", id="unknown-model"),
])
def test_bad_requests_get_openai_errors(
    url: str, body: dict[str, Any], status: int, message: str, param: str | None, code: str | None
) -> None:
    assert error_of(post(url, body), status) == {"message": message, "type": "invalid_request_error",
                                                 "param": param, "code": code}


def test_chat_model_is_refused(url: str) -> None:
    assert error_of(post(url, {**BASE, "model": "gpt-4o"}), 404) == {
        "message": "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
                   "v1/chat/completions?",
        "type": "invalid_request_error", "param": "model", "code": None}


@requires_spec
def test_bodies_match_openapi(url: str) -> None:
    validate("CreateCompletionResponse", post(url, {**BASE, "n": 2, "logprobs": 5, "echo": True}).json())
    chunks = sse_payloads(post(url, {**BASE, "stream": True, "logprobs": 1}).body)
    validate("CreateCompletionResponse", chunks[-1])
    for chunk in chunks:
        validate("CreateCompletionResponse", as_spec_chunk(chunk))
    raw = post(url, {**BASE, "stream": True, "stream_options": {"include_usage": True}}).body
    validate("CreateCompletionResponse", sse_payloads(raw)[-1])
