"""Scripted answers (`mockserver.engine.rules`): rules files, `[[mock.rules]]`, the `/_mock/rules` control API,
and their answers through the real `openai` SDK on chat, responses and legacy completions.

Bodies and stream chunks are checked against OpenAI's published schemas when the OpenAPI file is present.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from mockserver.app import make_app
from mockserver.engine.generation import REFUSAL, REFUSAL_TRIGGER
from mockserver.engine.rules import Rule, load_file
from mockserver.settings import MockSettings
from proxy.wire.configfile import ConfigError
from proxy.wire.tokens import count_text
from tests.http import AUTH, Reply, call, conforms, error_of, joined_deltas, post, sse_payloads
from tests.servers import ServerThread

RULES_TOML = r'''
[[rules]]
name = "greeting"
match = { last_user = "Say hello" }
answer = { text = "Hello from a rule! How can I help today?" }

[[rules]]
match = { last_user = "weather", has_tool_results = false }
answer.tool_calls = [{ name = "get_weather", arguments = { city = "Paris", unit = "celsius" } }]

[[rules]]
match = { last_user = "weather", has_tool_results = true }
answer.text = "It is sunny in Paris."

[[rules]]
match.last_user_regex = "(?i)pick a lock"
answer.refusal = true

[[rules]]
match.last_user = "[custom refusal]"
answer.refusal = "No, I won't."

[[rules]]
match = { last_user = "[agent]", turn = 1, has_tool_results = false }
answer.tool_calls = [{ name = "lookup", arguments = '{"q": "first"}' }]

[[rules]]
match = { last_user = "[agent]", has_tool_results = true }
answer.text = "Looked it up."

[[rules]]
match = { last_user = "[agent]", turn = 2 }
answer.text = "Second turn."

[[rules]]
match = { model = "gpt-4.1*", last_user = "[model]" }
answer.text = "A 4.1 model."

[[rules]]
match.last_user = "[model]"
answer.text = "Another model."

[[rules]]
match = { endpoint = "/v1/responses", last_user = "[endpoint]" }
answer.text = "Responses only."

[[rules]]
match = { endpoint = "/v1/completions", last_user = "Once upon" }
answer.text = " a time, scripted."

[[rules]]
match.last_user = "[slow]"
answer.pacing = { ttft_ms = 250, chunk_ms = 40 }

[[rules]]
match.last_user = "[slow text]"
answer = { text = "Slowly.", pacing = { ttft_ms = 100, chunk_ms = 10 } }

[[rules]]
match.last_user = "[once]"
answer.text = "Only once."
times = 1

[[rules]]
match.last_user = "[source]"
answer.text = "From the file."
'''
CONFIG_RULES = [
    {"match": {"last_user": "[source]"}, "answer": {"text": "From the config."}},
    {"match": {"last_user": "[config only]"}, "answer": {"text": "Only the config knows this."}},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False},
    },
}
LOOKUP_TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {
    "q": {"type": "string"}}}}}
HELLO = [{"role": "user", "content": "Say hello to the team"}]
SCRIPTED = "Hello from a rule! How can I help today?"


# --- fixtures and helpers ---------------------------------------------------------------------------

class Recorder:
    """An injected `sleep` that notes each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[ServerThread]:
    path = tmp_path_factory.mktemp("rules") / "rules.toml"
    path.write_text(RULES_TOML)
    settings = MockSettings(rules_file=str(path), rules=CONFIG_RULES)
    thread = ServerThread(lambda: make_app(settings, sleep=recorder)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerThread]:
    """A mock with no rules, to compare unmatched answers with."""
    thread = ServerThread(lambda: make_app(MockSettings())).start()
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def fresh(server: ServerThread, recorder: Recorder) -> Iterator[None]:
    """Each test starts with no posted rules, zeroed use counts and no recorded delays."""
    reset(server)
    recorder.delays.clear()
    yield


@pytest.fixture
def client(server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def reset(server: ServerThread) -> None:
    assert call("POST", server.url + "/_mock/reset").status == 200


def listed(server: ServerThread) -> list[dict[str, Any]]:
    reply = call("GET", server.url + "/_mock/rules")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["object"] == "list"
    return body["data"]


def post_rules(server: ServerThread, body: Any) -> list[dict[str, Any]]:
    reply = call("POST", server.url + "/_mock/rules", body)
    assert reply.status == 200, reply.body
    return reply.json()["data"]


def chat(server: ServerThread, **body: Any) -> Reply:
    reply = post(server.url + "/v1/chat/completions", {"model": "gpt-4o-mini", **body})
    assert reply.status == 200, reply.body
    conforms("CreateChatCompletionResponse", reply.json())
    return reply


def chat_stream(server: ServerThread, **body: Any) -> list[dict[str, Any]]:
    reply = post(server.url + "/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True, **body})
    assert reply.status == 200, reply.body
    chunks = sse_payloads(reply.body)
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    return chunks


def create_response(server: ServerThread, **body: Any) -> dict[str, Any]:
    reply = post(server.url + "/v1/responses", {"model": "gpt-4o-mini", **body})
    assert reply.status == 200, reply.body
    conforms("Response", reply.json())
    return reply.json()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# --- chat completions --------------------------------------------------------------------------------

def test_a_file_rule_answers_chat_with_its_text(client: openai.OpenAI, plain: ServerThread) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    completion = raw.parse()
    conforms("CreateChatCompletionResponse", json.loads(raw.text))

    assert raw.headers["x-mock-rule"] == "greeting"
    assert completion.choices[0].message.content == SCRIPTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == count_text(SCRIPTED, "gpt-4o")
    # the id and prompt usage still derive from the request: what the mock without rules answers
    generated = post(plain.url + "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}).json()
    assert completion.id == generated["id"] and generated["choices"][0]["message"]["content"] != SCRIPTED
    assert completion.usage.prompt_tokens == generated["usage"]["prompt_tokens"]
    assert raw.headers["x-request-id"].startswith("req_")


def test_scripted_text_streams_token_by_token(server: ServerThread, client: openai.OpenAI) -> None:
    chunks = chat_stream(server, messages=HELLO, stream_options={"include_usage": True})
    whole = chat(server, messages=HELLO).json()

    assert joined_deltas(chunks) == {0: SCRIPTED}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get(
        "content")]
    assert len(pieces) == count_text(SCRIPTED, "gpt-4o-mini") > 5
    assert chunks[-1]["usage"] == whole["usage"] and chunks[0]["id"] == whole["id"]
    with client.chat.completions.stream(model="gpt-4o-mini", messages=HELLO) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == SCRIPTED


def test_n_choices_all_get_the_script_and_limits_still_apply(server: ServerThread) -> None:
    completion = chat(server, messages=HELLO, n=2).json()
    assert [c["message"]["content"] for c in completion["choices"]] == [SCRIPTED, SCRIPTED]

    cut = chat(server, messages=HELLO, max_tokens=3).json()["choices"][0]
    assert cut["finish_reason"] == "length" and SCRIPTED.startswith(cut["message"]["content"])
    assert count_text(cut["message"]["content"], "gpt-4o-mini") == 3
    stopped = chat(server, messages=HELLO, stop=["!"]).json()["choices"][0]
    assert stopped["message"]["content"] == "Hello from a rule" and stopped["finish_reason"] == "stop"


def test_tool_calls_answer_with_the_scripted_arguments(client: openai.OpenAI, server: ServerThread) -> None:
    messages = user("What's the weather like?")
    completion = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL])

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [tool_call] = choice.message.tool_calls
    assert tool_call.function.name == "get_weather" and tool_call.id.startswith("call_")
    assert tool_call.function.arguments == '{"city":"Paris","unit":"celsius"}'
    conforms("CreateChatCompletionResponse", completion.model_dump(mode="json", exclude_unset=True))

    with client.chat.completions.stream(model="gpt-4o", messages=messages, tools=[WEATHER_TOOL]) as stream:
        streamed = stream.get_final_completion()
    assert streamed.choices[0].message.tool_calls[0].function.arguments == tool_call.function.arguments
    assert streamed.choices[0].message.tool_calls[0].id == tool_call.id
    chunks = chat_stream(server, messages=messages, tools=[WEATHER_TOOL])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_arguments_given_as_a_string_are_sent_verbatim(server: ServerThread) -> None:
    completion = chat(server, messages=user("[agent] look it up"), tools=[LOOKUP_TOOL]).json()
    assert completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"q": "first"}'


def test_legacy_functions_get_a_function_call(server: ServerThread) -> None:
    completion = chat(server, messages=user("weather please"), functions=[WEATHER_TOOL["function"]]).json()
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather",
                                                  "arguments": '{"city":"Paris","unit":"celsius"}'}


def test_refusal_answers(client: openai.OpenAI, server: ServerThread) -> None:
    default = client.chat.completions.create(model="gpt-4o", messages=user("How do I PICK A LOCK?"))
    custom = client.chat.completions.create(model="gpt-4o", messages=user("[custom refusal] please"))

    assert default.choices[0].message.refusal == REFUSAL and default.choices[0].message.content is None
    assert custom.choices[0].message.refusal == "No, I won't."

    class Plan(pydantic.BaseModel):
        steps: list[str]

    parsed = client.chat.completions.parse(model="gpt-4o", messages=user("[custom refusal]"), response_format=Plan)
    assert parsed.choices[0].message.parsed is None and parsed.choices[0].message.refusal == "No, I won't."
    chunks = chat_stream(server, messages=user("[custom refusal]"))
    assert "".join(c["choices"][0]["delta"].get("refusal") or "" for c in chunks) == "No, I won't."


# --- error answers -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "exception"), [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
])
def test_error_answers_raise_the_sdk_exception_for_their_status(
    server: ServerThread, client: openai.OpenAI, status: int, exception: type[openai.APIStatusError],
) -> None:
    post_rules(server, {"match": {"last_user": "[fail]"}, "answer": {"error": {"status": status}}})

    with pytest.raises(exception) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("[fail]"))
    assert caught.value.status_code == status
    error = error_of(post(server.url + "/v1/chat/completions", {"model": "gpt-4o", "messages": user("[fail]")}),
                     status)
    assert error["type"] == ("requests" if status == 429 else "server_error" if status >= 500
                             else "invalid_request_error")
    assert caught.value.response.headers["x-mock-rule"] == "posted[0]"
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["retry-after-ms"] == "1000"
        assert error["code"] == "rate_limit_exceeded"
    else:
        assert "retry-after" not in caught.value.response.headers


def test_error_answers_carry_the_given_envelope(server: ServerThread, client: openai.OpenAI) -> None:
    post_rules(server, {"match": {"last_user": "[quota]"}, "answer": {"error": {
        "status": 429, "message": "You exceeded your current quota.", "type": "insufficient_quota",
        "code": "insufficient_quota", "retry_after_ms": 2500}}})

    reply = post(server.url + "/v1/responses", {"model": "gpt-4o", "input": "[quota]"})
    assert error_of(reply, 429) == {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                                    "param": None, "code": "insufficient_quota"}
    assert reply.headers["retry-after"] == "3" and reply.headers["retry-after-ms"] == "2500"
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="[quota]")
    assert caught.value.code == "insufficient_quota"


def test_invalid_requests_are_rejected_before_rules_apply(server: ServerThread) -> None:
    reply = post(server.url + "/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO, "n": 0})
    assert error_of(reply, 400)["param"] == "n"
    assert next(r for r in listed(server) if r.get("name") == "greeting")["used"] == 0


# --- the Responses API and legacy completions -----------------------------------------------------

def test_responses_api_text_tool_calls_and_refusal(client: openai.OpenAI, server: ServerThread) -> None:
    text = client.responses.create(model="gpt-4o", input="Say hello please")
    called = create_response(server, input="weather?", tools=[{"type": "function", **WEATHER_TOOL["function"]}])
    refused = create_response(server, input="[custom refusal]")

    assert text.output_text == SCRIPTED and text.status == "completed"
    assert text.usage.output_tokens == count_text(SCRIPTED, "gpt-4o")
    [function_call] = called["output"]
    assert function_call["type"] == "function_call" and function_call["name"] == "get_weather"
    assert function_call["arguments"] == '{"city":"Paris","unit":"celsius"}'
    assert refused["output"][0]["content"] == [{"type": "refusal", "refusal": "No, I won't."}]


def test_responses_api_stream_matches_the_scripted_response(client: openai.OpenAI, server: ServerThread) -> None:
    reply = post(server.url + "/v1/responses", {"model": "gpt-4o", "input": "Say hello", "stream": True})
    events = [json.loads(frame.split(b"\n")[1].removeprefix(b"data: "))
              for frame in reply.body.split(b"\n\n") if frame]
    for event in events:
        conforms("ResponseStreamEvent", event)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == SCRIPTED and len(deltas) == count_text(SCRIPTED, "gpt-4o")

    with client.responses.stream(model="gpt-4o", input="Say hello", store=False) as stream:
        final = stream.get_final_response()
    assert final.output_text == SCRIPTED
    tools = [{"type": "function", **WEATHER_TOOL["function"]}]
    with client.responses.stream(model="gpt-4o", input="weather", tools=tools, store=False) as stream:
        final = stream.get_final_response()
    assert final.output[0].arguments == '{"city":"Paris","unit":"celsius"}'


def test_completions_answer_scripted_text(client: openai.OpenAI, server: ServerThread) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon", max_tokens=50)
    assert completion.choices[0].text == " a time, scripted."
    assert completion.usage.completion_tokens == count_text(" a time, scripted.", "gpt-3.5-turbo-instruct")
    reply = post(server.url + "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon",
                                                 "stream": True, "max_tokens": 50})
    chunks = sse_payloads(reply.body)
    assert "".join(c["choices"][0]["text"] for c in chunks) == " a time, scripted."
    # a list of prompts: each is matched on its own
    both = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Once upon", "Volcanoes erupt"])
    assert both.choices[0].text == " a time, scripted." and both.choices[1].text != " a time, scripted."


def test_tool_call_and_refusal_rules_never_answer_completions(client: openai.OpenAI, plain: ServerThread) -> None:
    for prompt in ("the weather", "pick a lock"):
        scripted = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt)
        generated = post(plain.url + "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": prompt})
        assert scripted.model_dump(mode="json", exclude_unset=True) == generated.json()


# --- matching --------------------------------------------------------------------------------------------

def test_turn_and_tool_results_drive_an_agent_loop_in_chat(server: ServerThread) -> None:
    messages = user("[agent] look it up")
    first = chat(server, messages=messages, tools=[LOOKUP_TOOL]).json()["choices"][0]["message"]
    assert first["tool_calls"][0]["function"]["name"] == "lookup"

    messages += [{"role": "assistant", "content": None, "tool_calls": first["tool_calls"]},
                 {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "found it"}]
    second = chat(server, messages=messages, tools=[LOOKUP_TOOL]).json()["choices"][0]["message"]
    assert second["content"] == "Looked it up."

    messages += [{"role": "assistant", "content": "Looked it up."}, *user("[agent] and now?")]
    third = chat(server, messages=messages, tools=[LOOKUP_TOOL]).json()["choices"][0]["message"]
    assert third["content"] == "Second turn."


def test_turn_and_tool_results_across_previous_response_id(server: ServerThread) -> None:
    tools = [{"type": "function", **LOOKUP_TOOL["function"]}]
    first = create_response(server, input="[agent] look it up", tools=tools)
    [function_call] = first["output"]
    assert function_call["arguments"] == '{"q": "first"}'

    second = create_response(server, previous_response_id=first["id"], tools=tools, input=[
        {"type": "function_call_output", "call_id": function_call["call_id"], "output": "found it"}])
    assert second["output"][0]["content"][0]["text"] == "Looked it up."
    third = create_response(server, previous_response_id=second["id"], tools=tools, input="[agent] and now?")
    assert third["output"][0]["content"][0]["text"] == "Second turn."


def test_model_globs_endpoints_and_first_match_wins(server: ServerThread) -> None:
    def text(model: str, message: str) -> str:
        return chat(server, model=model, messages=user(message)).json()["choices"][0]["message"]["content"]

    assert text("gpt-4.1-mini", "[model]") == "A 4.1 model."
    assert text("gpt-4o", "[model]") == "Another model."  # the glob fails; the next rule matches
    assert text("gpt-4o", "[source]") == "From the file."  # the file's rules come before the config's
    assert text("gpt-4o", "[config only]") == "Only the config knows this."
    assert text("gpt-4o", "[endpoint]") != "Responses only."
    assert create_response(server, input="[endpoint]")["output"][0]["content"][0]["text"] == "Responses only."


def test_a_rule_with_times_answers_that_many_requests(server: ServerThread) -> None:
    first = chat(server, messages=user("[once]")).json()
    again = chat(server, messages=user("[once]"))
    assert first["choices"][0]["message"]["content"] == "Only once."
    assert again.json()["choices"][0]["message"]["content"] != "Only once."
    assert "x-mock-rule" not in again.headers
    reset(server)  # zeroes the count
    assert chat(server, messages=user("[once]")).json()["choices"][0]["message"]["content"] == "Only once."


def test_unmatched_requests_are_generated_unchanged(server: ServerThread, plain: ServerThread) -> None:
    for path, body in [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": user("Volcanoes erupt for which reasons?")}),
        ("/v1/chat/completions", {"model": "gpt-4o", "stream": True, "messages": user("Tell me about tides")}),
        ("/v1/responses", {"model": "gpt-4o", "input": "Sourdough starter care", "store": False}),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "The sea"}),
    ]:
        scripted, generated = post(server.url + path, body), post(plain.url + path, body)
        assert scripted.status == generated.status == 200
        assert scripted.body == generated.body
        assert "x-mock-rule" not in scripted.headers


def test_pacing_rules_pace_generated_answers(server: ServerThread, plain: ServerThread, recorder: Recorder) -> None:
    body = {"model": "gpt-4o", "stream": True, "messages": user("[slow] Tell me about tides")}
    paced = post(server.url + "/v1/chat/completions", body)
    frames = [f for f in paced.body.split(b"\n\n") if f]

    assert paced.body == post(plain.url + "/v1/chat/completions", body).body  # generated as usual
    assert recorder.delays == [0.25] + [0.04] * (len(frames) - 1)
    assert paced.headers["x-mock-rule"] == "file[12]"
    recorder.delays.clear()
    post(server.url + "/v1/chat/completions", body, headers={**AUTH, "x-mock-latency": "ttft_ms=5"})
    assert recorder.delays == [0.005]  # the header wins over the rule


def test_pacing_combines_with_an_answer(server: ServerThread, recorder: Recorder) -> None:
    completion = chat(server, messages=user("[slow text]")).json()
    assert completion["choices"][0]["message"]["content"] == "Slowly."
    chunks = chat_stream(server, messages=user("[slow text]"))
    assert recorder.delays[0] == pytest.approx(0.1 + 0.01 * (len(chunks) - 1))  # non-streamed: one sleep
    assert recorder.delays[1:] == [0.1] + [0.01] * len(chunks)  # streamed: ttft, then each chunk and [DONE]

    recorder.delays.clear()
    post_rules(server, {"match": {"last_user": "[slow fail]"},
                        "answer": {"error": {"status": 503}, "pacing": {"ttft_ms": 300}}})
    error_of(post(server.url + "/v1/chat/completions", {"model": "gpt-4o", "messages": user("[slow fail]")}), 503)
    assert recorder.delays == [0.3]


def test_batch_lines_are_scripted_too(client: openai.OpenAI) -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": HELLO}}
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    output = json.loads(client.files.content(batch.output_file_id).text)
    assert output["response"]["body"]["choices"][0]["message"]["content"] == SCRIPTED


# --- the control API -------------------------------------------------------------------------------

def test_listing_shows_every_rule_with_its_source_and_use(server: ServerThread) -> None:
    chat(server, messages=HELLO)
    rules = listed(server)

    assert len(rules) == RULES_TOML.count("[[rules]]") + len(CONFIG_RULES)
    assert rules[0] == {"id": "file[0]", "source": "file", "used": 1, "name": "greeting",
                        "match": {"last_user": "Say hello"}, "answer": {"text": SCRIPTED}}
    assert rules[-1]["id"] == "config[1]" and rules[-1]["used"] == 0
    assert rules[2]["match"] == {"last_user": "weather", "has_tool_results": True}


def test_posted_rules_come_first_and_delete_removes_only_them(server: ServerThread) -> None:
    listing = post_rules(server, {"match": {"last_user": "Say hello"}, "answer": {"text": "Overridden."}})
    assert listing[0]["id"] == "posted[0]" and listing[0]["source"] == "posted"
    reply = chat(server, messages=HELLO)
    assert reply.json()["choices"][0]["message"]["content"] == "Overridden."
    assert reply.headers["x-mock-rule"] == "posted[0]"

    listing = post_rules(server, [{"match": {"last_user": "a"}, "answer": {"text": "A"}},
                                  {"name": "b", "match": {"last_user": "b"}, "answer": {"text": "B"}}])
    assert [r["id"] for r in listing[:3]] == ["posted[0]", "posted[1]", "posted[2]"]
    listing = post_rules(server, {"rules": [{"match": {"last_user": "c"}, "answer": {"refusal": True}}]})
    assert listing[3]["answer"] == {"refusal": True}

    remaining = call("DELETE", server.url + "/_mock/rules")
    assert remaining.status == 200 and [r["source"] for r in remaining.json()["data"]][0] == "file"
    assert chat(server, messages=HELLO).json()["choices"][0]["message"]["content"] == SCRIPTED


def test_reset_forgets_posted_rules(server: ServerThread) -> None:
    post_rules(server, {"match": {"last_user": "Say hello"}, "answer": {"text": "Overridden."}})
    reset(server)
    assert all(r["source"] != "posted" for r in listed(server))
    assert chat(server, messages=HELLO).json()["choices"][0]["message"]["content"] == SCRIPTED


@pytest.mark.parametrize(("body", "param", "reason"), [
    ({"match": {"last_user": "x"}, "answer": {"text": "a", "refusal": True}}, "rules[0].answer",
     "not text and refusal"),
    ([{"answer": {"text": "ok"}}, {"match": {"last_user_regex": "("}, "answer": {"text": "a"}}],
     "rules[1].match.last_user_regex", "not a valid regular expression"),
    ({"rules": [{"match": {"modle": "gpt-4o"}, "answer": {"text": "a"}}]}, "rules[0].match.modle", "unknown key"),
    ({"match": {"last_user": "x"}}, "rules[0].answer", "Field required"),
    ({"answer": {"error": {"status": 200}}}, "rules[0].answer.error.status", "greater than or equal to 400"),
    ({"match": {"endpoint": "/v1/completions"}, "answer": {"tool_calls": [{"name": "f"}]}}, "rules[0]",
     "legacy completions can only answer text"),
])
def test_invalid_posted_rules_are_a_400_and_nothing_is_added(server: ServerThread, body: Any, param: str,
                                                             reason: str) -> None:
    error = error_of(call("POST", server.url + "/_mock/rules", body), 400)
    assert error["param"] == param and reason in error["message"], error
    assert error["code"] == "invalid_value"
    assert all(r["source"] != "posted" for r in listed(server))


def test_a_body_that_is_not_json_is_a_400(server: ServerThread) -> None:
    error = error_of(call("POST", server.url + "/_mock/rules", raw=b"{nope"), 400)
    assert "must be JSON" in error["message"]
    error = error_of(call("POST", server.url + "/_mock/rules", 3), 400)
    assert "a rule, a list of rules" in error["message"]


# --- rules files ----------------------------------------------------------------------------------------

YAML_RULES = """
rules:
  - match: {last_user: "Say hello"}
    answer:
      text: From YAML.
  - match: {model: "gpt-4o*"}
    answer:
      tool_calls:
        - name: get_weather
          arguments: {city: Oslo, unit: celsius}
"""


def test_yaml_and_json_rules_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "rules.yaml"
    yaml_file.write_text(YAML_RULES)
    json_file = tmp_path / "rules.json"
    json_file.write_text(json.dumps({"rules": [{"match": {"turn": 1}, "answer": {"text": "From JSON."}}]}))

    [hello, weather] = load_file(yaml_file)
    assert hello.answer.text == "From YAML." and weather.match.model == "gpt-4o*"
    assert weather.answer.tool_calls[0].arguments == {"city": "Oslo", "unit": "celsius"}
    thread = ServerThread(lambda: make_app(MockSettings(rules_file=str(yaml_file)))).start()
    try:
        with openai.OpenAI(base_url=thread.url + "/v1", api_key="sk-test", max_retries=0) as client:
            assert client.chat.completions.create(model="o3", messages=HELLO).choices[0].message.content == (
                "From YAML.")
            called = client.chat.completions.create(model="gpt-4o-mini", messages=user("anything"))
            assert called.choices[0].message.tool_calls[0].function.arguments == '{"city":"Oslo","unit":"celsius"}'
    finally:
        thread.stop()
    assert load_file(json_file)[0].answer.text == "From JSON."
    assert load_file(_write(tmp_path / "empty.yaml", "")) == []


def test_yaml_rules_without_pyyaml_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    with pytest.raises(ConfigError) as caught:
        load_file(_write(tmp_path / "rules.yml", YAML_RULES))
    assert "PyYAML" in str(caught.value) and "TOML" in str(caught.value)
    assert load_file(_write(tmp_path / "rules.toml", RULES_TOML))  # TOML needs nothing


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "text", "key", "reason"), [
    ("two.toml", '[[rules]]\nanswer = { text = "a", error = { status = 500 } }\n', "rules[0].answer",
     "give one of text, tool_calls, refusal or error, not text and error"),
    ("regex.toml", '[[rules]]\nanswer.text = "a"\n[[rules]]\nmatch.last_user_regex = "[a-"\nanswer.text = "b"\n',
     "rules[1].match.last_user_regex", "not a valid regular expression"),
    ("empty.toml", '[[rules]]\nmatch.last_user = "a"\nanswer = {}\n', "rules[0].answer",
     "give one of text, tool_calls, refusal, error or pacing"),
    ("unknown.toml", '[[rules]]\nanswer.txt = "a"\n', "rules[0].answer.txt", "unknown key"),
    ("turn.toml", '[[rules]]\nmatch.turn = "1"\nanswer.text = "a"\n', "rules[0].match.turn", "valid integer"),
    ("endpoint.toml", '[[rules]]\nmatch.endpoint = "/v1/embeddings"\nanswer.text = "a"\n',
     "rules[0].match.endpoint[0]", "'/v1/chat/completions', '/v1/responses' or '/v1/completions'"),
    ("refusal.toml", '[[rules]]\nanswer.refusal = false\n', "rules[0].answer.refusal",
     "a string, or true for the default refusal"),
    ("args.yaml", "rules:\n  - answer: {tool_calls: [{name: f, arguments: 3}]}\n",
     "rules[0].answer.tool_calls[0].arguments", "an object or a string"),
    ("name.yaml", "rules:\n  - answer: {tool_calls: [{name: 'not a name'}]}\n",
     "rules[0].answer.tool_calls[0].name", "should match pattern"),
    ("retry.toml", '[[rules]]\nanswer.error = { status = 500, retry_after_ms = 5 }\n', "rules[0].answer.error",
     "retry_after_ms applies to status 429 only"),
    ("top.toml", 'rule = []\n', "rule", "unknown key"),
    ("list.yaml", "- answer: {text: a}\n", None, "expected a table with a `rules` list"),
    ("syntax.toml", "[[rules]\n", None, "not valid TOML"),
    ("syntax.yaml", "rules: [\n", None, "not valid YAML"),
    ("syntax.json", "{", None, "not valid JSON"),
    ("rules.txt", "", None, "must end in .toml, .yaml, .yml or .json"),
])
def test_bad_rules_files_name_file_rule_and_reason(tmp_path: Path, name: str, text: str, key: str | None,
                                                   reason: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert caught.value.file == str(path) and caught.value.key == key
    assert reason in caught.value.reason, caught.value.reason


def test_a_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_file(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="file not found"):
        make_app(MockSettings().model_copy(update={"rules_file": str(tmp_path / "nope.toml")}))


def test_config_rules_are_validated_with_the_config(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.toml", '[[rules]]\nanswer = { text = "a", refusal = "b" }\n')
    with pytest.raises(pydantic.ValidationError, match="rules\\[0\\].answer: give one of"):
        MockSettings(rules_file=str(bad))
    with pytest.raises(pydantic.ValidationError, match="give one of"):
        MockSettings(rules=[{"answer": {"text": "a", "refusal": "b"}}])
    assert MockSettings(rules=[{"answer": {"text": "a"}}]).rules == [Rule.model_validate({"answer": {"text": "a"}})]


@pytest.mark.parametrize("args", [["--rules", "{bad}"], ["--config", "{config}"], ["--rules", "{missing}"]])
def test_the_command_line_refuses_bad_rules_with_exit_2(tmp_path: Path, args: list[str]) -> None:
    bad = _write(tmp_path / "bad.toml", '[[rules]]\nmatch.last_user_regex = "("\nanswer.text = "a"\n')
    config = _write(tmp_path / "config.toml", f'[mock]\nrules_file = "{bad.as_posix()}"\n')
    args = [a.format(bad=bad, config=config, missing=tmp_path / "missing.toml") for a in args]
    result = subprocess.run([sys.executable, "-m", "mockserver", "--port", "0", *args], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    if "missing" in args[1]:
        assert "does not exist" in result.stderr
    else:
        assert f"{bad}: rules[0].match.last_user_regex: not a valid regular expression" in result.stderr


# --- the refusal trigger -----------------------------------------------------------------------------

def test_the_refusal_trigger_is_a_setting() -> None:
    thread = ServerThread(lambda: make_app(MockSettings(refusal_trigger="<<no>>"))).start()
    off = ServerThread(lambda: make_app(MockSettings(refusal_trigger=""))).start()
    try:
        def message(server: ServerThread, text: str) -> dict[str, Any]:
            return chat(server, messages=user(text)).json()["choices"][0]["message"]

        assert message(thread, "Plan a trip <<no>>")["refusal"] == REFUSAL
        assert message(thread, f"Plan a trip {REFUSAL_TRIGGER}")["refusal"] is None
        assert message(off, f"Plan a trip {REFUSAL_TRIGGER}")["refusal"] is None
        refused = create_response(thread, input="Plan a trip <<no>>")
        assert refused["output"][0]["content"] == [{"type": "refusal", "refusal": REFUSAL}]
        assert create_response(off, input=f"Plan {REFUSAL_TRIGGER}")["output"][0]["content"][0]["type"] == (
            "output_text")
    finally:
        thread.stop()
        off.stop()
    assert MockSettings().refusal_trigger == REFUSAL_TRIGGER


def test_the_readme_example_is_a_valid_rules_file(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme[readme.index("**Scripted answers.**"):]
    example = section[section.index("```toml\n") + len("```toml\n"):section.index("```\n", 8)]
    rules = load_file(_write(tmp_path / "readme.toml", example))
    assert [r.answer.kind for r in rules] == ["tool_calls", "text", "error"]
