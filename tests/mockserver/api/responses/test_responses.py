"""End to end: the Responses API of the mock (POST, GET, DELETE /v1/responses and input items), through
the real `openai` SDK (sync and async) and raw HTTP.

Every response object and every stream event is checked against OpenAI's published schemas when the
OpenAPI file is present (`test_bodies_match_openapi` reports the skip when it is not).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from mockserver.api.responses.store import ResponseStore
from mockserver.app import make_app
from mockserver.engine.dispatch import run_line
from mockserver.engine.generation import REFUSAL, REFUSAL_TRIGGER
from mockserver.settings import MockSettings
from proxy.wire.tokens import count_text
from tests.http import AUTH, Reply, conforms, error_of, post
from tests.openapi import requires_spec, validate, validate_sse_events
from tests.servers import ServerThread

CLOCK_START = MockSettings().clock_start
SOURDOUGH = "Sourdough starter: how do I keep it alive over a long holiday?"
VOLCANO = "Volcanoes erupt for which geological reasons?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
TIME = {
    "type": "function",
    "name": "get_local_time",
    "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{48}")


# --- helpers --------------------------------------------------------------------------------------

@pytest.fixture
def url(mock_url: str) -> str:
    return mock_url + "/responses"


def send(method: str, url: str) -> Reply:
    """A bodiless request with a bearer token; never raises on 4xx/5xx."""
    request = urllib.request.Request(url, method=method, headers=AUTH)
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


def create(url: str, **body: Any) -> dict[str, Any]:
    """A successful non-streamed response, schema-checked."""
    reply = post(url, {"model": "gpt-4o-mini", **body})
    assert reply.status == 200, reply.body
    response = reply.json()
    conforms("Response", response)
    return response


def stream(url: str, **body: Any) -> list[dict[str, Any]]:
    """The events of a successful streamed response, framing and schema checked."""
    reply = post(url, {"model": "gpt-4o-mini", "stream": True, **body})
    assert reply.status == 200, reply.body
    assert reply.headers.get_content_type() == "text/event-stream"
    assert not reply.body.rstrip().endswith(b"[DONE]")
    frames = reply.body.split(b"\n\n")
    assert frames.pop() == b""
    events = []
    for frame in frames:
        name, data = frame.split(b"\n")
        event = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + event["type"].encode()
        conforms("ResponseStreamEvent", event)
        events.append(event)
    return events


def text_of(response: dict[str, Any]) -> str:
    """What the SDK's `output_text` computes: the output_text parts of the message items, joined."""
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def calls_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in response["output"] if item["type"] == "function_call"]


def tool_output(call: dict[str, Any], output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": output}


# --- text answers ---------------------------------------------------------------------------------

def test_text_answer_through_the_sdk(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=SOURDOUGH)
    body = json.loads(raw.text)
    conforms("Response", body)
    response = raw.parse()
    other = client.responses.create(model="gpt-4o", input=VOLCANO)

    assert RESPONSE_ID.fullmatch(response.id) and response.object == "response"
    assert response.status == "completed" and response.created_at == CLOCK_START == response.completed_at
    assert response.error is None and response.incomplete_details is None and response.model == "gpt-4o"
    assert "output_text" not in body
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert re.fullmatch(r"msg_[0-9a-f]{48}", message.id)
    assert message.content[0].annotations == [] and message.content[0].logprobs == []
    assert "sourdough" in response.output_text.lower() and "volcano" not in response.output_text.lower()
    assert "volcano" in other.output_text.lower()
    usage = response.usage
    assert usage.output_tokens == count_text(response.output_text, "gpt-4o")
    assert usage.input_tokens > count_text(SOURDOUGH, "gpt-4o")
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens == 0
    assert body["store"] is True and body["tools"] == [] and body["tool_choice"] == "auto"
    assert body["text"] == {"format": {"type": "text"}, "verbosity": "medium"}


def test_async_sdk_matches_sync(client: openai.OpenAI, mock_url: str) -> None:
    async def run() -> tuple[Any, Any]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            response = await aclient.responses.create(model="gpt-4o", input=VOLCANO)
            async with aclient.responses.stream(model="gpt-4o", input=VOLCANO) as events:
                deltas = [e.delta async for e in events if e.type == "response.output_text.delta"]
                final = await events.get_final_response()
        return response, (deltas, final)

    response, (deltas, final) = asyncio.run(run())

    assert response == client.responses.create(model="gpt-4o", input=VOLCANO)
    assert "".join(deltas) == response.output_text == final.output_text and final.id == response.id


def test_identical_requests_get_identical_bytes(url: str) -> None:
    body = {"model": "gpt-4o-mini", "input": SOURDOUGH, "metadata": {"run": "1"}}
    first, second = post(url, body), post(url, body)
    plain = create(url, input=SOURDOUGH)

    assert first.status == 200 and first.body == second.body
    assert first.headers["x-request-id"] == second.headers["x-request-id"]
    assert plain["id"] != first.json()["id"] and text_of(plain) == text_of(first.json())


def test_instructions_are_echoed_counted_and_not_carried_over(url: str) -> None:
    plain = create(url, input=SOURDOUGH)
    instructed = create(url, input=SOURDOUGH, instructions="Answer like a patient baker.")
    follow = create(url, input="And in summer?", previous_response_id=instructed["id"])

    assert instructed["instructions"] == "Answer like a patient baker." and plain["instructions"] is None
    extra = instructed["usage"]["input_tokens"] - plain["usage"]["input_tokens"]
    developer_message = 3 + count_text("developer", "gpt-4o-mini")
    assert extra == developer_message + count_text("Answer like a patient baker.", "gpt-4o-mini")
    assert follow["instructions"] is None
    assert text_of(instructed) != text_of(plain)


def test_item_inputs_with_roles_and_parts(url: str) -> None:
    items = [
        {"role": "system", "content": "You are terse."},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use metric units."}]},
        {"role": "user", "content": "What is a monad?"},
        {"role": "assistant", "content": "A design pattern."},
        {"role": "user", "content": [{"type": "input_text", "text": "Explain functors with this diagram."},
                                     {"type": "input_image", "image_url": "https://example.com/f.png",
                                      "detail": "low"}]},
    ]
    response = create(url, input=items)
    text_only = create(url, input=items[:4] + [{"role": "user", "content": "Explain functors with this diagram."}])

    assert "functors" in text_of(response).lower()
    # a low-detail image costs the model's base: 2,833 tokens for gpt-4o-mini by OpenAI's tile rule
    assert response["usage"]["input_tokens"] == text_only["usage"]["input_tokens"] + 2833
    listed = send("GET", f"{url}/{response['id']}/input_items?order=asc").json()
    assert [(i["type"], i["role"]) for i in listed["data"]] == [
        ("message", "system"), ("message", "developer"), ("message", "user"), ("message", "assistant"),
        ("message", "user")]
    assert listed["data"][0]["content"] == [{"type": "input_text", "text": "You are terse."}]
    assert listed["data"][3]["content"] == [{"type": "output_text", "annotations": [], "logprobs": [],
                                             "text": "A design pattern."}]
    assert listed["data"][4]["content"][1] == {"type": "input_image", "detail": "low", "file_id": None,
                                               "image_url": "https://example.com/f.png"}


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, url: str) -> None:
    first = client.responses.create(model="gpt-4o-mini", input=SOURDOUGH)
    second = client.responses.create(model="gpt-4o-mini", input="What about volcanoes?",
                                     previous_response_id=first.id)
    third = client.responses.create(model="gpt-4o-mini", input="Thanks!", previous_response_id=second.id)

    assert second.previous_response_id == first.id and "volcano" in second.output_text.lower()
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    first_input, = client.responses.input_items.list(first.id)
    second_input = next(iter(client.responses.input_items.list(second.id)))
    items = list(client.responses.input_items.list(third.id, order="asc"))
    assert [i.id for i in items[:4]] == [first_input.id, first.output[0].id, second_input.id, second.output[0].id]
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant", "user"]
    assert items[-1].content[0].text == "Thanks!"
    again = create(url, input="What about volcanoes?", previous_response_id=first.id)
    assert again["id"] == second.id and text_of(again) == second.output_text


def test_unknown_previous_response_is_404(client: openai.OpenAI, url: str) -> None:
    missing = "resp_" + "0" * 48
    error = error_of(post(url, {"model": "gpt-4o-mini", "input": "hi", "previous_response_id": missing}), 404)

    assert error == {"message": f"Previous response with id '{missing}' not found.",
                     "type": "invalid_request_error", "param": "previous_response_id",
                     "code": "previous_response_not_found"}
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o-mini", input="hi", previous_response_id=missing)


def test_store_false_is_neither_retrievable_nor_continuable(url: str) -> None:
    response = create(url, input=VOLCANO, store=False)

    assert response["store"] is False
    assert error_of(send("GET", f"{url}/{response['id']}"), 404)["message"] == (
        f"Response with id '{response['id']}' not found.")
    error = error_of(post(url, {"model": "gpt-4o-mini", "input": "more", "previous_response_id": response["id"]}),
                     404)
    assert error["code"] == "previous_response_not_found"


def test_bookkeeping_parameters_do_not_change_the_answer(url: str) -> None:
    plain = create(url, input=SOURDOUGH)
    tagged = create(url, input=SOURDOUGH, user="u-1", metadata={"team": "bread"}, store=False,
                    temperature=0.3, top_p=0.9, truncation="auto", service_tier="auto", safety_identifier="s-1",
                    prompt_cache_key="k", include=["web_search_call.action.sources"], background=False,
                    parallel_tool_calls=False, text={"verbosity": "low"})

    assert text_of(tagged) != "" and tagged["metadata"] == {"team": "bread"} and tagged["user"] == "u-1"
    assert tagged["temperature"] == 0.3 and tagged["top_p"] == 0.9 and tagged["truncation"] == "auto"
    assert tagged["text"]["verbosity"] == "low" and tagged["parallel_tool_calls"] is False
    assert create(url, input=SOURDOUGH, user="u-2", metadata={"a": "b"}, store=False)["output"][0]["content"] == (
        plain["output"][0]["content"])


# --- token limits and reasoning ---------------------------------------------------------------------

def test_max_output_tokens_truncates_into_an_incomplete_response(url: str) -> None:
    full = create(url, input=SOURDOUGH)
    cut = create(url, input=SOURDOUGH, max_output_tokens=16)

    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["completed_at"] is None and cut["max_output_tokens"] == 16
    assert cut["output"][0]["status"] == "incomplete"
    assert text_of(full).startswith(text_of(cut)) and len(text_of(cut)) < len(text_of(full))
    assert cut["usage"]["output_tokens"] == 16 == count_text(text_of(cut), "gpt-4o-mini")
    roomy = create(url, input=SOURDOUGH, max_output_tokens=full["usage"]["output_tokens"])
    assert roomy["status"] == "completed" and text_of(roomy) == text_of(full)

    events = stream(url, input=SOURDOUGH, max_output_tokens=16)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"] == cut


@pytest.mark.parametrize("model", ["o4-mini", "gpt-5"])
def test_reasoning_models_report_a_reasoning_item_and_tokens(client: openai.OpenAI, model: str) -> None:
    response = client.responses.create(model=model, input=SOURDOUGH, reasoning={"effort": "high"})
    low = client.responses.create(model=model, input=SOURDOUGH, reasoning={"effort": "low"})

    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.summary == [] and reasoning.id.startswith("rs_")
    assert message.type == "message" and "sourdough" in response.output_text.lower()
    spent = response.usage.output_tokens_details.reasoning_tokens
    assert spent > low.usage.output_tokens_details.reasoning_tokens > 0
    assert response.usage.output_tokens == spent + count_text(response.output_text, model)
    assert response.reasoning.effort == "high"
    encrypted = client.responses.create(model=model, input=SOURDOUGH, include=["reasoning.encrypted_content"])
    assert encrypted.output[0].encrypted_content and encrypted.reasoning.effort == "medium"


def test_reasoning_can_use_the_whole_budget(url: str) -> None:
    response = create(url, model="o3", input=SOURDOUGH, max_output_tokens=16)

    assert response["status"] == "incomplete" and [i["type"] for i in response["output"]] == ["reasoning"]
    assert response["usage"]["output_tokens"] == 16 == response["usage"]["output_tokens_details"]["reasoning_tokens"]


def test_logprobs_are_included_on_request(url: str) -> None:
    plain = create(url, input=VOLCANO)
    response = create(url, input=VOLCANO, include=["message.output_text.logprobs"], top_logprobs=2)

    part = response["output"][0]["content"][0]
    assert part["text"] == text_of(plain)
    assert "".join(e["token"] for e in part["logprobs"]) == part["text"]
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in part["logprobs"])
    events = stream(url, input=VOLCANO, include=["message.output_text.logprobs"], top_logprobs=2)
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [d["logprobs"][0] for d in deltas] == part["logprobs"]


# --- function tools ---------------------------------------------------------------------------------

def test_required_tool_choice_calls_a_tool_with_schema_valid_arguments(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o", input="Hello there", tools=[WEATHER, TIME],
                                       tool_choice="required")

    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert re.fullmatch(r"fc_[0-9a-f]{48}", call.id) and re.fullmatch(r"call_[A-Za-z0-9]{24}", call.call_id)
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert response.output_text == ""
    assert response.usage.output_tokens == count_text(call.arguments, "gpt-4o")
    assert response.tools[0].name == "get_weather" and response.tools[0].strict is True


def test_tool_choice_modes(url: str) -> None:
    tools = [WEATHER, TIME]
    asked = "What's the weather in Lyon right now, and the local time there?"

    named = create(url, input="Hello there", tools=tools, tool_choice={"type": "function", "name": "get_local_time"})
    auto_both = create(url, input=asked, tools=tools)
    auto_one = create(url, input=asked, tools=tools, parallel_tool_calls=False)
    auto_none = create(url, input=SOURDOUGH, tools=tools, tool_choice="auto")
    never = create(url, input=asked, tools=tools, tool_choice="none")
    allowed = create(url, input=asked, tools=tools, tool_choice={
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_local_time"}]})

    assert [c["name"] for c in calls_of(named)] == ["get_local_time"]
    assert [c["name"] for c in calls_of(auto_both)] == ["get_weather", "get_local_time"]
    assert len({c["call_id"] for c in calls_of(auto_both)}) == 2
    assert [c["name"] for c in calls_of(auto_one)] == ["get_local_time"]  # the best match: two name words
    assert [c["name"] for c in calls_of(allowed)] == ["get_local_time"]
    for answer in (auto_none, never):
        assert calls_of(answer) == [] and text_of(answer)


def test_tool_results_are_used_in_the_follow_up(client: openai.OpenAI, url: str) -> None:
    asked = "What's the weather in Lyon?"
    first = create(url, input=asked, tools=[WEATHER])
    [call] = calls_of(first)
    follow = create(url, previous_response_id=first["id"], tools=[WEATHER],
                    input=[tool_output(call, '{"temperature": 21, "sky": "clear"}')])

    assert calls_of(follow) == [] and follow["status"] == "completed"
    assert "According to get_weather, temperature is 21, sky is clear." in text_of(follow)
    manual = client.responses.create(model="gpt-4o-mini", tools=[WEATHER], input=[
        {"role": "user", "content": asked}, *first["output"], tool_output(call, "sunny")])
    assert manual.output[0].type == "message" and 'get_weather returned "sunny".' in manual.output_text
    listed = send("GET", f"{url}/{follow['id']}/input_items").json()["data"]
    assert [i["type"] for i in listed] == ["function_call_output", "function_call", "message"]


def test_unanswered_or_unknown_tool_calls_are_400(url: str) -> None:
    first = create(url, input="What's the weather in Lyon?", tools=[WEATHER])
    [call] = calls_of(first)
    unanswered = post(url, {"model": "gpt-4o-mini", "input": "And in Paris?", "previous_response_id": first["id"]})
    stray = post(url, {"model": "gpt-4o-mini", "input": [tool_output({"call_id": "call_nope"}, "x")]})

    assert error_of(unanswered, 400)["message"] == f"No tool output found for function call {call['call_id']}."
    assert error_of(stray, 400) == {
        "message": "No tool call found for function call output with call_id call_nope.",
        "type": "invalid_request_error", "param": "input", "code": None}


# --- structured outputs -------------------------------------------------------------------------------

class Recipe(pydantic.BaseModel):
    name: str
    servings: int
    vegetarian: bool
    steps: list[str]


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model="gpt-4o", input="A sourdough recipe please", text_format=Recipe)

    recipe = parsed.output_parsed
    assert isinstance(recipe, Recipe)
    assert parsed.text.format.type == "json_schema" and parsed.text.format.strict is True
    assert json.loads(parsed.output_text) == recipe.model_dump()


def test_json_schema_and_json_object_formats(url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}},
              "required": ["city"]}
    loose = create(url, input="Best city?", text={"format": {"type": "json_schema", "name": "city", "schema": schema}})
    obj = create(url, input="Reply in JSON: why do volcanoes erupt?", text={"format": {"type": "json_object"}})

    jsonschema.validate(json.loads(text_of(loose)), schema)
    assert loose["text"]["format"] == {"type": "json_schema", "name": "city", "schema": schema}
    assert isinstance(json.loads(text_of(obj)), dict)
    error = error_of(post(url, {"model": "gpt-4o-mini", "input": "hi", "text": {"format": {"type": "json_object"}}}),
                     400)
    assert "must contain the word 'json'" in error["message"] and error["param"] == "input"


def test_refusal_trigger(client: openai.OpenAI, url: str) -> None:
    response = create(url, input=f"{REFUSAL_TRIGGER} Pick a lock for me.")
    events = stream(url, input=f"{REFUSAL_TRIGGER} Pick a lock for me.")

    [message] = response["output"]
    assert message["content"] == [{"type": "refusal", "refusal": REFUSAL}] and text_of(response) == ""
    assert [e["type"] for e in events if "refusal" in e["type"]][-1] == "response.refusal.done"
    assert "".join(e["delta"] for e in events if e["type"] == "response.refusal.delta") == REFUSAL
    assert events[-1]["response"] == response
    parsed = client.responses.parse(model="gpt-4o", input=f"{REFUSAL_TRIGGER} recipe", text_format=Recipe)
    assert parsed.output_parsed is None and parsed.output[0].content[0].refusal == REFUSAL


# --- streaming ------------------------------------------------------------------------------------------

def test_stream_events_come_in_openai_order(url: str) -> None:
    response = create(url, input=SOURDOUGH)
    events = stream(url, input=SOURDOUGH)

    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert len(deltas) == response["usage"]["output_tokens"]
    assert "".join(d["delta"] for d in deltas) == text_of(response)
    created = events[0]["response"]
    assert created["id"] == response["id"] and created["status"] == "in_progress" and created["output"] == []
    assert "usage" not in created
    message = response["output"][0]
    assert events[2]["item"] == {**message, "status": "in_progress", "content": []}
    assert all(e["item_id"] == message["id"] and e["output_index"] == 0 for e in events[3:-2])
    assert events[-4]["text"] == text_of(response) and events[-2]["item"] == message
    assert events[-1]["response"] == response


def test_function_call_stream(url: str) -> None:
    response = create(url, input="What's the weather in Lyon and the time?", tools=[WEATHER, TIME])
    events = stream(url, input="What's the weather in Lyon and the time?", tools=[WEATHER, TIME])

    calls = calls_of(response)
    assert len(calls) == 2 and events[-1]["response"] == response
    for index, call in enumerate(calls):
        mine = [e for e in events if e.get("output_index") == index]
        assert mine[0]["type"] == "response.output_item.added"
        assert mine[0]["item"] == {**call, "status": "in_progress", "arguments": ""}
        assert {e["type"] for e in mine[1:-2]} == {"response.function_call_arguments.delta"}
        assert "".join(e["delta"] for e in mine[1:-2]) == call["arguments"]
        assert mine[-2] == {"type": "response.function_call_arguments.done", "sequence_number": mine[-2][
            "sequence_number"], "item_id": call["id"], "name": call["name"], "output_index": index,
                            "arguments": call["arguments"]}
        assert mine[-1]["type"] == "response.output_item.done" and mine[-1]["item"] == call


def test_sdk_stream_final_response_equals_the_non_streamed_one(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "gpt-4o", "input": "What's the weather in Lyon?", "tools": [WEATHER]}
    with client.responses.stream(**kwargs) as events:
        kinds = [e.type for e in events]
        final = events.get_final_response()
    with client.responses.stream(model="gpt-4o", input=VOLCANO, text_format=Recipe) as events:
        parsed_final = events.get_final_response()
    created = list(client.responses.create(model="gpt-4o", input=VOLCANO, stream=True))

    assert final == client.responses.parse(**kwargs)
    assert kinds[-1] == "response.completed" and "response.function_call_arguments.delta" in kinds
    assert parsed_final == client.responses.parse(model="gpt-4o", input=VOLCANO, text_format=Recipe)
    assert isinstance(parsed_final.output_parsed, Recipe)
    assert created[-1].response == client.responses.create(model="gpt-4o", input=VOLCANO)


# --- retrieve, delete, input items ------------------------------------------------------------------

def test_retrieve_and_delete(client: openai.OpenAI, url: str) -> None:
    response = create(url, input=VOLCANO, metadata={"case": "delete"})
    fetched = send("GET", f"{url}/{response['id']}")

    assert fetched.status == 200 and fetched.json() == response
    assert client.responses.retrieve(response["id"]).output_text == text_of(response)
    deleted = send("DELETE", f"{url}/{response['id']}")
    assert deleted.status == 200
    assert deleted.json() == {"id": response["id"], "object": "response.deleted", "deleted": True}
    assert error_of(send("GET", f"{url}/{response['id']}"), 404)["message"] == (
        f"Response with id '{response['id']}' not found.")
    assert error_of(send("DELETE", f"{url}/{response['id']}"), 404)["param"] is None
    again = create(url, input=VOLCANO, metadata={"case": "delete"})
    assert again == response
    client.responses.delete(again["id"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(again["id"])


def test_retrieve_can_replay_the_stream(client: openai.OpenAI, url: str) -> None:
    response = create(url, input=VOLCANO)
    live = stream(url, input=VOLCANO)
    replay = send("GET", f"{url}/{response['id']}?stream=true")
    tail = send("GET", f"{url}/{response['id']}?stream=true&starting_after=5")

    assert [json.loads(f.split(b"\ndata: ")[1]) for f in replay.body.split(b"\n\n")[:-1]] == live
    assert [json.loads(f.split(b"\ndata: ")[1])["sequence_number"] for f in tail.body.split(b"\n\n")[:-1]] == list(
        range(6, len(live)))
    with client.responses.retrieve(response["id"], stream=True) as events:
        assert [e.sequence_number for e in events] == list(range(len(live)))


def test_input_items_are_paginated(client: openai.OpenAI, url: str) -> None:
    items = [{"role": "user", "content": f"Point {n} about rivers."} for n in range(5)]
    response = create(url, input=items)
    base = f"{url}/{response['id']}/input_items"

    newest = send("GET", f"{base}?limit=2").json()
    texts = [i["content"][0]["text"] for i in newest["data"]]
    assert texts == ["Point 4 about rivers.", "Point 3 about rivers."] and newest["has_more"] is True
    assert newest["object"] == "list" and newest["first_id"] == newest["data"][0]["id"]
    after = send("GET", f"{base}?limit=2&after={newest['last_id']}").json()
    assert [i["content"][0]["text"] for i in after["data"]] == ["Point 2 about rivers.", "Point 1 about rivers."]
    rest = send("GET", f"{base}?order=asc&after={newest['data'][1]['id']}").json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["Point 4 about rivers."] and rest["has_more"] is False
    assert len(list(client.responses.input_items.list(response["id"], limit=2))) == 5
    assert error_of(send("GET", f"{base}?limit=0"), 400)["param"] == "limit"
    assert error_of(send("GET", f"{base}?order=up"), 400)["param"] == "order"


def test_reset_forgets_stored_responses() -> None:
    server = ServerThread(lambda: make_app(MockSettings())).start()
    try:
        url = server.url + "/v1/responses"
        response = create(url, input=VOLCANO)
        assert send("GET", f"{url}/{response['id']}").status == 200
        assert post(server.url + "/_mock/reset", {}).status == 200
        assert send("GET", f"{url}/{response['id']}").status == 404
    finally:
        server.stop()


def test_batch_lines_get_the_same_answer(url: str) -> None:
    body = {"model": "gpt-4o-mini", "input": VOLCANO, "metadata": {"via": "batch"}}
    line = asyncio.run(run_line(make_app(MockSettings()), "POST", "/v1/responses", body))

    assert line.status == 200 and line.body == create(url, **body)


def test_store_is_bounded_oldest_first() -> None:
    store = ResponseStore(capacity=2)
    for n in range(3):
        store.put({"id": f"resp_{n}", "output": [{"id": f"msg_{n}"}]}, ({"id": f"in_{n}"},))

    assert len(store) == 2 and store.get("resp_0") is None and store.get("resp_2") is not None
    assert store.find_item("msg_1") == {"id": "msg_1"} and store.find_item("in_0") is None


# --- errors -------------------------------------------------------------------------------------------

BASE = {"model": "gpt-4o-mini", "input": "hi"}
BAD_REQUESTS = [
    pytest.param({"input": "hi"}, 400, "Missing required parameter: 'model'.", "model", "missing_required_parameter",
                 id="no-model"),
    pytest.param({"model": "gpt-4o-mini"}, 400, "Missing required parameter: 'input'.", "input",
                 "missing_required_parameter", id="no-input"),
    pytest.param({**BASE, "foo": 1}, 400, "Unrecognized request argument supplied: foo", None, None,
                 id="unknown-parameter"),
    pytest.param({**BASE, "model": "gpt-9"}, 400, "The requested model 'gpt-9' does not exist.", "model",
                 "model_not_found", id="unknown-model"),
    pytest.param({**BASE, "model": "text-embedding-3-small"}, 400,
                 "The requested model 'text-embedding-3-small' is not supported with the Responses API.", "model",
                 None, id="embedding-model"),
    pytest.param({**BASE, "input": 5}, 400,
                 "Invalid type for 'input': expected one of a string or an array, but got an integer instead.",
                 "input", "invalid_type", id="input-number"),
    pytest.param({**BASE, "input": [{"role": "bot", "content": "hi"}]}, 400,
                 "Invalid value: 'bot'. Supported values are: 'user', 'assistant', 'system', and 'developer'.",
                 "input[0].role", "invalid_value", id="bad-role"),
    pytest.param({**BASE, "input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]}, 400,
                 "Invalid value: 'input_text'. Supported values are: 'output_text', and 'refusal'.",
                 "input[0].content[0].type", "invalid_value", id="assistant-input-text"),
    pytest.param({**BASE, "input": [{"type": "telepathy"}]}, 400, None, "input[0].type", "invalid_value",
                 id="unknown-item-type"),
    pytest.param({**BASE, "max_output_tokens": 15}, 400,
                 "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 15 "
                 "instead.", "max_output_tokens", "integer_below_min_value", id="max-output-tokens-15"),
    pytest.param({**BASE, "temperature": 3}, 400,
                 "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.",
                 "temperature", "decimal_above_max_value", id="temperature-3"),
    pytest.param({**BASE, "model": "o3", "temperature": 0.5}, 400,
                 "Unsupported parameter: 'temperature' is not supported with this model.", "temperature",
                 "unsupported_parameter", id="reasoning-temperature"),
    pytest.param({**BASE, "reasoning": {"effort": "high"}}, 400,
                 "Unsupported parameter: 'reasoning.effort' is not supported with this model.", "reasoning.effort",
                 "unsupported_parameter", id="effort-on-gpt-4o-mini"),
    pytest.param({**BASE, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_time"}}, 400,
                 "Tool choice 'get_time' not found in 'tools' parameter.", "tool_choice", None,
                 id="named-tool-missing"),
    pytest.param({**BASE, "tools": [{**WEATHER, "name": "get weather"}]}, 400,
                 "Invalid 'tools[0].name': string does not match pattern. Expected a string that matches the "
                 "pattern '^[a-zA-Z0-9_-]+$'.", "tools[0].name", "invalid_value", id="tool-name-pattern"),
    pytest.param({**BASE, "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, 400,
                 "Missing required parameter: 'text.format.name'.", "text.format.name",
                 "missing_required_parameter", id="schema-without-name"),
    pytest.param({**BASE, "stream_options": {"include_obfuscation": False}}, 400,
                 "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options",
                 "invalid_value", id="stream-options-without-stream"),
    pytest.param({**BASE, "include": ["everything"]}, 400, None, "include[0]", "invalid_value", id="bad-include"),
    pytest.param({**BASE, "conversation": "conv_123"}, 404, "Conversation with id 'conv_123' not found.",
                 "conversation", None, id="conversation"),
    pytest.param({**BASE, "input": [{"type": "item_reference", "id": "msg_nope"}]}, 404,
                 "Item with id 'msg_nope' not found.", "input", None, id="unknown-item-reference"),
]


@pytest.mark.parametrize(("body", "status", "message", "param", "code"), BAD_REQUESTS)
def test_bad_requests_get_openai_errors(
    url: str, body: dict[str, Any], status: int, message: str | None, param: str | None, code: str | None
) -> None:
    error = error_of(post(url, body), status)

    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    if message is not None:
        assert error["message"] == message


def test_bad_response_ids(url: str) -> None:
    error = error_of(send("GET", f"{url}/chatcmpl-1"), 400)

    assert error["message"] == "Invalid 'response_id': 'chatcmpl-1'. Expected an ID that begins with 'resp'."
    assert error["param"] == "response_id"
    assert error_of(send("GET", f"{url}/resp_missing/input_items"), 404)["param"] is None


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gpt-4o", input=[], stream=True, max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_" + "f" * 48)

    assert bad.value.param == "max_output_tokens" and bad.value.code == "integer_below_min_value"


# --- schema ---------------------------------------------------------------------------------------------

@requires_spec
def test_bodies_match_openapi(url: str) -> None:
    validate("Response", post(url, {**BASE, "model": "gpt-5", "include": ["reasoning.encrypted_content",
                                                                            "message.output_text.logprobs"]}).json())
    validate("Response", post(url, {**BASE, "tools": [WEATHER], "tool_choice": "required"}).json())
    raw = post(url, {**BASE, "model": "o4-mini", "stream": True, "max_output_tokens": 200}).body
    assert len(validate_sse_events("ResponseStreamEvent", raw)) > 8
    response = post(url, {**BASE, "input": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                                             {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})
    validate("ResponseItemList", send("GET", f"{url}/{response.json()['id']}/input_items").json())
    validate("ErrorResponse", post(url, {**BASE, "max_output_tokens": 1}).json())
