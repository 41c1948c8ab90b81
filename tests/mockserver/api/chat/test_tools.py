"""End to end: tool calls of the mock's chat completions (`tools`, `tool_choice`, `parallel_tool_calls`,
legacy `functions`), through the real `openai` SDK (sync and async) and raw HTTP.

Bodies and stream chunks are checked against OpenAI's published schemas when the OpenAPI file is
present; arguments are checked against each function's `parameters` with `jsonschema`.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jsonschema
import openai
import pytest

from proxy.wire.tokens import count_chat_prompt, count_text
from tests.http import conforms, error_of, post, sse_payloads
from tests.openapi import requires_spec, validate_sse_events

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location.",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city, e.g. San Francisco"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["location", "unit"],
    },
}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "description": "The local time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"],
                   "additionalProperties": False},
    "strict": True,
}}
NOTIFY = {"type": "function", "function": {
    "name": "notify_team",
    "description": "Send an email to the engineering team.",
    "parameters": {"type": "object", "properties": {"subject": {"type": "string"}, "urgent": {"type": "boolean"}},
                   "required": ["subject"]},
}}
TOOLS = [WEATHER, TIME, NOTIFY]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
BOTH = "What's the weather in Lisbon, in fahrenheit, and what time is it in Tokyo?"
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(url: str, **body: Any) -> dict[str, Any]:
    """A successful non-streamed chat completion, schema-checked."""
    reply = post(url + "/chat/completions", {"model": "gpt-4o", **body})
    assert reply.status == 200, reply.body
    completion = reply.json()
    conforms("CreateChatCompletionResponse", completion)
    return completion


def chunks_of(url: str, **body: Any) -> list[dict[str, Any]]:
    """The chunks of a successful streamed chat completion, schema-checked."""
    reply = post(url + "/chat/completions", {"model": "gpt-4o", "stream": True, **body})
    assert reply.status == 200, reply.body
    chunks = sse_payloads(reply.body)
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    return chunks


def tool_calls(completion: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    return completion["choices"][index]["message"].get("tool_calls") or []


def names(completion: dict[str, Any]) -> list[str]:
    return [c["function"]["name"] for c in tool_calls(completion)]


def check_arguments(name: str, arguments: str) -> dict[str, Any]:
    """The parsed arguments, after checking them against the function's parameters."""
    value = json.loads(arguments)
    jsonschema.Draft202012Validator(PARAMETERS[name], format_checker=jsonschema.FormatChecker()).validate(value)
    return value


# --- which tools are called -----------------------------------------------------------------------

def test_required_calls_a_tool_with_valid_arguments_from_the_prompt(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user("Weather in Paris?"), tools=[WEATHER],
                                                tool_choice="required")

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.refusal is None
    [call] = choice.message.tool_calls
    assert CALL_ID.fullmatch(call.id) and call.type == "function"
    arguments = check_arguments(call.function.name, call.function.arguments)
    assert call.function.name == "get_current_weather" and arguments["location"] == "Paris"


@pytest.mark.parametrize(("message", "expected"), [
    ("What's the weather in Paris?", ["get_current_weather"]),
    ("Please run get_time for Asia/Tokyo.", ["get_time"]),
    ("Could you get current weather for Oslo", ["get_current_weather"]),
    ("What time is it in Tokyo?", ["get_time"]),
    ("Email the engineering folks about the outage.", ["notify_team"]),
    (BOTH, ["get_current_weather", "get_time"]),
    ("Tell me a story about penguins.", []),
])
def test_auto_calls_the_tools_the_message_asks_for(mock_url: str, message: str, expected: list[str]) -> None:
    completion = chat(mock_url, messages=user(message), tools=TOOLS)

    assert names(completion) == expected
    choice = completion["choices"][0]
    if expected:
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        for call in tool_calls(completion):
            check_arguments(call["function"]["name"], call["function"]["arguments"])
    else:
        assert choice["finish_reason"] == "stop" and "penguins" in choice["message"]["content"]


def test_arguments_take_what_the_prompt_says(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS)

    weather, time = (json.loads(c["function"]["arguments"]) for c in tool_calls(completion))
    assert weather["location"] == "Lisbon" and weather["unit"] == "fahrenheit"
    assert time == {"timezone": "Tokyo"}


def test_parallel_tool_calls_false_keeps_the_best_match(mock_url: str) -> None:
    single = chat(mock_url, messages=user(BOTH), tools=TOOLS, parallel_tool_calls=False)
    named = chat(mock_url, messages=user("Call get_time, and tell me the weather"), tools=TOOLS,
                 parallel_tool_calls=False)

    assert names(single) == ["get_current_weather"]
    assert names(named) == ["get_time"]


def test_named_choice_calls_that_function_alone(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS,
                      tool_choice={"type": "function", "function": {"name": "notify_team"}})

    [call] = tool_calls(completion)
    assert call["function"]["name"] == "notify_team"
    check_arguments("notify_team", call["function"]["arguments"])


def test_required_without_a_match_calls_the_first_tool(mock_url: str) -> None:
    completion = chat(mock_url, messages=user("Hello there"), tools=TOOLS, tool_choice="required")

    assert names(completion) == ["get_current_weather"]


def test_none_never_calls(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS, tool_choice="none")

    assert "tool_calls" not in completion["choices"][0]["message"]
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert "weather" in completion["choices"][0]["message"]["content"].lower()


def test_allowed_tools_narrow_the_choice(mock_url: str) -> None:
    allowed = {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "notify_team"}}]}}
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS, tool_choice=allowed)

    assert names(completion) == ["notify_team"]


def test_each_choice_has_its_own_calls(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS, n=2)

    first, second = tool_calls(completion, 0), tool_calls(completion, 1)
    assert [c["function"]["name"] for c in first] == [c["function"]["name"] for c in second]
    assert {c["id"] for c in first}.isdisjoint(c["id"] for c in second)


def test_usage_counts_the_tools_and_each_call(mock_url: str) -> None:
    messages = user(BOTH)
    completion = chat(mock_url, messages=messages, tools=TOOLS)

    usage = completion["usage"]
    assert usage["prompt_tokens"] == count_chat_prompt(messages, "gpt-4o", TOOLS)
    assert usage["prompt_tokens"] > count_chat_prompt(messages, "gpt-4o")
    assert usage["completion_tokens"] == sum(count_text(c["function"]["name"], "gpt-4o")
                                             + count_text(c["function"]["arguments"], "gpt-4o")
                                             for c in tool_calls(completion))


def test_token_limit_cuts_the_arguments(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS, max_tokens=6)

    [call] = tool_calls(completion)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 6
    with pytest.raises(json.JSONDecodeError):
        json.loads(call["function"]["arguments"])


def test_identical_requests_get_identical_calls(mock_url: str) -> None:
    body = {"model": "gpt-4o", "messages": user(BOTH), "tools": TOOLS}
    first, second = post(mock_url + "/chat/completions", body), post(mock_url + "/chat/completions", body)

    assert first.body == second.body


# --- follow-up turns --------------------------------------------------------------------------------

def test_follow_up_answer_uses_the_tool_results(client: openai.OpenAI) -> None:
    messages: list[Any] = user(BOTH)
    first = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    outputs = {"get_current_weather": json.dumps({"temperature": 64, "conditions": "foggy"}), "get_time": "09:30 JST"}
    for call in first.choices[0].message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": outputs[call.function.name]})

    final = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)

    answer = final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None
    assert "get_current_weather" in answer and "64" in answer and "foggy" in answer
    assert '"09:30 JST"' in answer


def test_tool_message_must_answer_a_tool_call(mock_url: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_1", "content": "4"}]})

    assert error_of(reply, 400) == {
        "message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                   "'tool_calls'.",
        "type": "invalid_request_error", "param": "messages.[1].role", "code": None}


# --- streaming ---------------------------------------------------------------------------------------

@requires_spec
def test_streamed_calls_look_like_openai_and_join_to_the_non_streamed(mock_url: str) -> None:
    completion = chat(mock_url, messages=user(BOTH), tools=TOOLS, stream_options=None)
    raw = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": user(BOTH), "tools": TOOLS,
                                                "stream": True, "stream_options": {"include_usage": True}}).body
    chunks = validate_sse_events("CreateChatCompletionStreamResponse", raw)

    *choice_chunks, usage_chunk = chunks
    first, *deltas, last = (c["choices"][0] for c in choice_chunks)
    assert first["delta"] == {"role": "assistant", "content": None, "refusal": None}
    heads = [d["delta"]["tool_calls"][0] for d in deltas if "id" in d["delta"]["tool_calls"][0]]
    assert [(h["index"], h["id"], h["type"], h["function"]) for h in heads] == [
        (i, c["id"], "function", {"name": c["function"]["name"], "arguments": ""})
        for i, c in enumerate(tool_calls(completion))]
    joined: dict[int, str] = {}
    for delta in deltas:
        [part] = delta["delta"]["tool_calls"]
        if "id" not in part:
            assert set(part) == {"index", "function"} and set(part["function"]) == {"arguments"}
        joined[part["index"]] = joined.get(part["index"], "") + part["function"]["arguments"]
    assert joined == {i: c["function"]["arguments"] for i, c in enumerate(tool_calls(completion))}
    assert last == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert usage_chunk["usage"] == completion["usage"]


def test_sdk_stream_helper_reassembles_the_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user(BOTH), tools=TOOLS)
    with client.chat.completions.stream(model="gpt-4o", messages=user(BOTH), tools=TOOLS) as stream:
        done = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()

    assert done == ["get_current_weather", "get_time"]
    streamed = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in streamed] == [
        (c.id, c.function.name, c.function.arguments) for c in completion.choices[0].message.tool_calls]
    assert final.choices[0].finish_reason == "tool_calls"


def test_async_sdk_matches_sync(client: openai.OpenAI, mock_url: str) -> None:
    async def run() -> tuple[Any, list[Any]]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            completion = await aclient.chat.completions.create(model="gpt-4o", messages=user(BOTH), tools=TOOLS)
            stream = await aclient.chat.completions.create(model="gpt-4o", messages=user(BOTH), tools=TOOLS,
                                                           stream=True)
            async with stream:
                chunks = [chunk async for chunk in stream]
        return completion, chunks

    completion, chunks = asyncio.run(run())

    assert completion == client.chat.completions.create(model="gpt-4o", messages=user(BOTH), tools=TOOLS)
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or []:
            arguments[part.index] = arguments.get(part.index, "") + (part.function.arguments or "")
    assert arguments == {i: c.function.arguments for i, c in enumerate(completion.choices[0].message.tool_calls)}


# --- legacy functions -------------------------------------------------------------------------------

FUNCTIONS = [WEATHER["function"], TIME["function"] | {"strict": None}]


def test_legacy_functions_answer_with_a_function_call(client: openai.OpenAI, mock_url: str) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user(BOTH), functions=FUNCTIONS)
    named = client.chat.completions.create(model="gpt-4o", messages=user(BOTH), functions=FUNCTIONS,
                                           function_call={"name": "get_time"})
    none = client.chat.completions.create(model="gpt-4o", messages=user(BOTH), functions=FUNCTIONS,
                                          function_call="none")

    choice = completion.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.content is None and choice.message.function_call.name == "get_current_weather"
    check_arguments("get_current_weather", choice.message.function_call.arguments)
    assert named.choices[0].message.function_call.name == "get_time"
    assert none.choices[0].message.function_call is None and none.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == count_chat_prompt(user(BOTH), "gpt-4o", FUNCTIONS)

    chunks = chunks_of(mock_url, messages=user(BOTH), functions=FUNCTIONS)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"function_call": {"name": "get_current_weather", "arguments": ""}}
    assert "".join(d["function_call"]["arguments"] for d in deltas[1:-1]) == choice.message.function_call.arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"

    follow_up = user(BOTH) + [choice.message.model_dump(exclude_none=True),
                              {"role": "function", "name": "get_current_weather", "content": "Sunny, 24 C"}]
    final = client.chat.completions.create(model="gpt-4o", messages=follow_up, functions=FUNCTIONS)
    assert 'get_current_weather returned "Sunny, 24 C"' in final.choices[0].message.content


# --- errors ------------------------------------------------------------------------------------------

NOT_OBJECT = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
LOOSE = {"type": "function", "function": {"name": "loose", "strict": True, "parameters": {
    "type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                                           "required": ["b"]}}, "required": ["a"], "additionalProperties": False}}}
BAD_REQUESTS = [
    pytest.param({"tool_choice": "auto"}, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                 "'tools' are specified.", "tool_choice", "invalid_value", id="choice-without-tools"),
    pytest.param({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                 "Invalid value for 'tool_choice': function 'nope' not found in 'tools'.", "tool_choice",
                 "invalid_value", id="unknown-named-function"),
    pytest.param({"tools": [{"type": "function"}]}, "Missing required parameter: 'tools[0].function'.",
                 "tools[0].function", "missing_required_parameter", id="tool-without-function"),
    pytest.param({"tools": [{"type": "function", "function": {"name": "get weather"}}]},
                 "Invalid 'tools[0].function.name': string does not match pattern. Expected a string that matches "
                 "the pattern '^[a-zA-Z0-9_-]+$'.", "tools[0].function.name", "invalid_value", id="bad-name"),
    pytest.param({"tools": [NOT_OBJECT]}, "Invalid schema for function 'f': schema must be a JSON Schema of "
                 "'type: \"object\"', got 'type: \"array\"'.", "tools[0].function.parameters",
                 "invalid_function_parameters", id="parameters-not-object"),
    pytest.param({"tools": [WEATHER, LOOSE]}, "Invalid schema for function 'loose': In context=('properties', 'a'), "
                 "'additionalProperties' is required to be supplied and to be false.", "tools[1].function.parameters",
                 "invalid_function_parameters", id="strict-nested-open-object"),
    pytest.param({"function_call": "auto"}, "Invalid value for 'function_call': 'function_call' is only allowed "
                 "when 'functions' are specified.", "function_call", "invalid_value", id="function-call-alone"),
    pytest.param({"functions": FUNCTIONS, "function_call": {"name": "nope"}},
                 "Invalid value for 'function_call': function 'nope' not found in 'functions'.", "function_call",
                 "invalid_value", id="unknown-legacy-function"),
]


@pytest.mark.parametrize(("extra", "message", "param", "code"), BAD_REQUESTS)
def test_bad_tool_requests_get_openai_errors(mock_url: str, extra: dict[str, Any], message: str, param: str,
                                             code: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": user("hi"), **extra})

    assert error_of(reply, 400) == {"message": message, "type": "invalid_request_error", "param": param, "code": code}
