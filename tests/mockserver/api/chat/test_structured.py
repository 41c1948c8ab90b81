"""Structured outputs of the mock's chat completions (`response_format` json_schema and json_object,
strict-schema rejections, refusals) through the real `openai` SDK and raw HTTP; `schemagen` directly;
and property tests: for random JSON Schemas, tool arguments and structured content always validate
(jsonschema, Draft 2020-12, with a checker for every format the mock generates).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import re
from typing import Any, Literal
from urllib.parse import urlsplit

import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from mockserver.engine import schemagen
from mockserver.engine.generation import REFUSAL, REFUSAL_TRIGGER
from mockserver.engine.rng import RequestRandom
from tests.http import conforms, error_of, post, sse_payloads
from tests.servers import ServerThread

# --- formats --------------------------------------------------------------------------------------

_TIME = r"\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})"
FORMATS = jsonschema.FormatChecker(["date", "email", "ipv4", "ipv6", "uuid"])


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(
        re.fullmatch(rf"\d{{4}}-\d{{2}}-\d{{2}}T{_TIME}", value) and dt.datetime.fromisoformat(value))


@FORMATS.checks("time")
def _time(value: object) -> bool:
    return not isinstance(value, str) or bool(re.fullmatch(_TIME, value))


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or (value.isascii() and " " not in value and bool(urlsplit(value).scheme)
                                          and bool(urlsplit(value).netloc))


@FORMATS.checks("hostname")
def _hostname(value: object) -> bool:
    return not isinstance(value, str) or bool(re.fullmatch(r"(?!-)[a-z0-9-]{1,63}(\.(?!-)[a-z0-9-]{1,63})*", value))


@FORMATS.checks("duration")
def _duration(value: object) -> bool:
    return not isinstance(value, str) or bool(
        re.fullmatch(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?", value))


def assert_valid(schema: dict[str, Any], value: Any) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=FORMATS).validate(value)


# --- the SDK's parse ---------------------------------------------------------------------------------

class Priority(enum.StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


class Address(BaseModel):
    city: str
    postcode: str | None


class Step(BaseModel):
    explanation: str
    minutes: int = Field(ge=5, le=120)


class Trip(BaseModel):
    destination: str
    travellers: int = Field(ge=1, le=9)
    budget: float = Field(gt=0, lt=10_000)
    priority: Priority
    kind: Literal["leisure", "business"]
    departure: dt.date
    stops: list[Address] = Field(min_length=1, max_length=3)
    return_address: Address | None
    steps: list[Step]
    tags: list[str]


TRIP = [{"role": "user", "content": "Plan a business trip to Lisbon for 3 travellers, high priority."}]


def test_parse_returns_the_model_with_values_from_the_prompt(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.parse(model="gpt-4o", messages=TRIP, response_format=Trip)
    conforms("CreateChatCompletionResponse", json.loads(raw.text))
    completion = raw.parse()

    message = completion.choices[0].message
    trip = message.parsed
    assert isinstance(trip, Trip) and message.refusal is None
    assert Trip.model_validate_json(message.content) == trip
    assert trip.destination == "Lisbon" and trip.travellers == 3
    assert trip.priority is Priority.high and trip.kind == "business"
    assert completion.choices[0].finish_reason == "stop"


def test_parse_async_and_streamed_agree_with_sync(client: openai.OpenAI, mock_url: str) -> None:
    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            return await aclient.chat.completions.parse(model="gpt-4o", messages=TRIP, response_format=Trip)

    sync = client.chat.completions.parse(model="gpt-4o", messages=TRIP, response_format=Trip)
    with client.chat.completions.stream(model="gpt-4o", messages=TRIP, response_format=Trip) as stream:
        streamed = stream.get_final_completion()

    assert asyncio.run(run()).choices[0].message.parsed == sync.choices[0].message.parsed
    assert streamed.choices[0].message.parsed == sync.choices[0].message.parsed
    assert streamed.choices[0].message.content == sync.choices[0].message.content


def test_a_cut_answer_makes_parse_raise(client: openai.OpenAI) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="gpt-4o", messages=TRIP, response_format=Trip, max_tokens=5)


RICH = {
    "type": "object",
    "$defs": {"item": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}$"},
        "quantity": {"type": "integer", "exclusiveMinimum": 0, "maximum": 50, "multipleOf": 5},
        "price": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 2, "multipleOf": 0.25}},
        "required": ["sku", "quantity", "price"]}},
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "email": {"type": "string", "format": "email"},
        "site": {"type": "string", "format": "uri"},
        "placed": {"type": "string", "format": "date-time"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2, "maxItems": 4},
        "note": {"type": ["string", "null"], "minLength": 3, "maxLength": 12},
        "status": {"const": "open"},
        "payment": {"oneOf": [{"type": "object", "properties": {"card": {"type": "string"}}, "required": ["card"],
                                "additionalProperties": False},
                               {"type": "object", "properties": {"iban": {"type": "string"}}, "required": ["iban"],
                                "additionalProperties": False}]},
    },
    "required": ["id", "email", "site", "placed", "items", "note", "status", "payment"],
}


def test_non_strict_schema_content_is_valid(mock_url: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o-mini", "messages": TRIP, "response_format": {
        "type": "json_schema", "json_schema": {"name": "order", "schema": RICH}}})

    assert reply.status == 200, reply.body
    conforms("CreateChatCompletionResponse", reply.json())
    assert_valid(RICH, json.loads(reply.json()["choices"][0]["message"]["content"]))


def test_structured_answer_after_tool_results_draws_on_them(mock_url: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
              "required": ["city", "celsius"], "additionalProperties": False}
    messages = [{"role": "user", "content": "How warm is it?"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Oslo: 17 degrees"}]
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": messages, "response_format": {
        "type": "json_schema", "json_schema": {"name": "w", "strict": True, "schema": schema}}})

    assert json.loads(reply.json()["choices"][0]["message"]["content"]) == {"city": "Oslo", "celsius": 17}


# --- json_object ----------------------------------------------------------------------------------------

def test_json_object_answers_a_json_object(mock_url: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "response_format": {"type": "json_object"},
                                                  "messages": [{"role": "system", "content": "Reply in JSON."},
                                                               {"role": "user", "content": "Tell me about otters"}]})

    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert isinstance(answer, dict) and "otters" in answer["answer"]


def test_json_object_needs_the_word_json(mock_url: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": TRIP,
                                                  "response_format": {"type": "json_object"}})

    assert error_of(reply, 400) == {
        "message": "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                   "'json_object'.", "type": "invalid_request_error", "param": "messages", "code": None}


# --- strict schemas OpenAI refuses -----------------------------------------------------------------------

def _strict(name: str, schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


OBJECT = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
REFUSED = [
    pytest.param({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                 "In context=(), 'additionalProperties' is required to be supplied and to be false.", id="open-root"),
    pytest.param({**OBJECT, "required": []}, "In context=(), 'required' is required to be supplied and to be an array "
                 "including every key in properties. Missing 'a'.", id="optional-property"),
    pytest.param({**OBJECT, "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}},
                                                 "required": ["b"]}}},
                 "In context=('properties', 'a'), 'additionalProperties' is required to be supplied and to be false.",
                 id="open-nested"),
    pytest.param({**OBJECT, "properties": {"a": {"type": "array", "items": {
                     "type": "object", "properties": {"b": {"type": "integer"}, "c": {"type": "integer"}},
                     "required": ["b"], "additionalProperties": False}}}},
                 "In context=('properties', 'a', 'items'), 'required' is required to be supplied and to be an array "
                 "including every key in properties. Missing 'c'.", id="items"),
    pytest.param({**OBJECT, "$defs": {"Step": {"type": "object", "properties": {}}}},
                 "In context=('$defs', 'Step'), 'additionalProperties' is required to be supplied and to be false.",
                 id="defs"),
    pytest.param({"type": "array", "items": OBJECT},
                 "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'.", id="array-root"),
    pytest.param({"anyOf": [OBJECT]}, "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'.",
                 id="anyof-root"),
]


@pytest.mark.parametrize(("schema", "reason"), REFUSED)
def test_strict_mode_refuses_schemas_like_openai(mock_url: str, schema: Any, reason: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": TRIP,
                                                  "response_format": _strict("trip_plan", schema)})

    assert error_of(reply, 400) == {"message": f"Invalid schema for response_format 'trip_plan': {reason}",
                                    "type": "invalid_request_error", "param": "response_format", "code": None}


def test_strict_false_accepts_what_strict_refuses(mock_url: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": TRIP, "response_format": {
        "type": "json_schema", "json_schema": {"name": "loose", "strict": False, "schema": schema}}})

    assert reply.status == 200
    assert isinstance(json.loads(reply.json()["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(("response_format", "message", "param", "code"), [
    ({"type": "json_schema"}, "Missing required parameter: 'response_format.json_schema'.",
     "response_format.json_schema", "missing_required_parameter"),
    ({"type": "json_schema", "json_schema": {"schema": OBJECT}},
     "Missing required parameter: 'response_format.json_schema.name'.", "response_format.json_schema.name",
     "missing_required_parameter"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": OBJECT}},
     ("Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches "
      "the pattern '^[a-zA-Z0-9_-]+$'."), "response_format.json_schema.name", "invalid_value"),
])
def test_malformed_response_format_is_400(mock_url: str, response_format: Any, message: str, param: str,
                                          code: str) -> None:
    reply = post(mock_url + "/chat/completions", {"model": "gpt-4o", "messages": TRIP,
                                                  "response_format": response_format})

    assert error_of(reply, 400) == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


# --- refusals -------------------------------------------------------------------------------------------

REFUSE = [{"role": "user", "content": f"Plan a trip {REFUSAL_TRIGGER}"}]


def test_refusal_trigger_gives_a_refusal(client: openai.OpenAI, mock_url: str) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=REFUSE, logprobs=True)
    parsed = client.chat.completions.parse(model="gpt-4o", messages=REFUSE, response_format=Trip)
    chunks = sse_payloads(post(mock_url + "/chat/completions",
                               {"model": "gpt-4o", "messages": REFUSE, "stream": True}).body)

    message = completion.choices[0].message
    assert message.content is None and message.refusal == REFUSAL
    assert "".join(e.token for e in completion.choices[0].logprobs.refusal) == REFUSAL
    assert completion.choices[0].logprobs.content is None
    assert parsed.choices[0].message.parsed is None and parsed.choices[0].message.refusal == REFUSAL
    for chunk in chunks:
        conforms("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": ""}
    assert "".join(d.get("refusal") or "" for d in deltas) == REFUSAL
    assert not any(d.get("content") for d in deltas)


# --- schemagen directly ------------------------------------------------------------------------------------

def generated(schema: Any, hint: str = "", seed: int = 0) -> Any:
    value = schemagen.generate(schema, RequestRandom("test", seed), hint)
    assert_valid(schema, value)
    return value


@pytest.mark.parametrize("schema", [
    {"type": "string", "format": fmt} for fmt in ("date", "date-time", "time", "duration", "email", "hostname",
                                                  "ipv4", "ipv6", "uri", "uuid")
] + [
    {"type": "string", "pattern": r"^(\+\d{1,3} )?\(\d{3}\) \d{3}-\d{4}$"},
    {"type": "string", "pattern": r"^([a-z]+)-\1$"},
    {"type": "string", "pattern": r"[^a-z0-9]{2}x"},
    {"type": "string", "minLength": 40, "maxLength": 41},
    {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12},
    {"type": "integer", "minimum": 1, "maximum": 10, "multipleOf": 0.1},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.001},
    {"type": "number", "minimum": -1e300, "maximum": 1e300},
    {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.1},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False, "minItems": 2},
    {"type": "object", "minProperties": 3, "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
               {"properties": {"b": {"const": True}}, "required": ["b"]}]},
    {"type": "string", "not": {"enum": ["alpha", "beta"]}},
    {"oneOf": [{"type": "number"}, {"type": "integer"}]},
    {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["children"]}}},
    {"$ref": "#/$defs/list", "$defs": {"list": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {
        "head": {"type": "integer"}, "tail": {"$ref": "#/$defs/list"}}, "required": ["head", "tail"]}]}}},
    {}, True,
], ids=lambda schema: json.dumps(schema)[:60])
def test_generated_values_are_valid(schema: Any) -> None:
    for seed in range(5):
        generated(schema, seed=seed)


def test_oneof_values_match_exactly_one_branch() -> None:
    schema = {"oneOf": [{"type": "number"}, {"type": "integer"}]}
    assert all(isinstance(generated(schema, seed=s), float) for s in range(10))


def test_values_come_from_the_hint() -> None:
    schema = {"type": "object", "properties": {
        "origin": {"type": "string"}, "destination": {"type": "string"}, "passengers": {"type": "integer"},
        "cabin": {"enum": ["economy", "business", "first"]}, "contact_email": {"type": "string"},
        "query": {"type": "string"}}, "required": ["origin", "destination", "passengers", "cabin", "contact_email",
                                                   "query"]}
    value = generated(schema, "Book 2 business seats from New York to Rome next week")

    assert value["origin"] == "New York" and value["destination"] == "Rome"
    assert value["passengers"] == 2 and value["cabin"] == "business"
    assert value["contact_email"].endswith("@example.com") and "seats" in value["query"]


def test_generation_is_deterministic() -> None:
    assert generated(RICH, "hint", seed=3) == generated(RICH, "hint", seed=3) != generated(RICH, "hint", seed=4)


# --- properties: random schemas ------------------------------------------------------------------------------

NAMES = st.sampled_from(["location", "city", "name", "email", "count", "price", "tags", "status", "id", "date",
                         "note", "items", "value", "score", "when", "x"])
PATTERNS = [r"^[A-Z]{3}-\d{4}$", r"^(red|green|blue)$", r"[a-z]+@[a-z]+\.com", r"^\+?\d{1,3}(-\d{3}){2}$",
            r"^[a-f0-9]{8}$", r"^\w+( \w+)*$"]


def _integer(low: int | None, span: int, exclusive: tuple[bool, bool], step: int | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    if low is not None:
        schema["exclusiveMinimum" if exclusive[0] else "minimum"] = low
        schema["exclusiveMaximum" if exclusive[1] else "maximum"] = low + span + 2 + 2 * (step or 1)
    if step:
        schema["multipleOf"] = step
    return schema


def _number(low: float | None, span: float, exclusive: tuple[bool, bool], step: float | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    if low is not None:
        schema["exclusiveMinimum" if exclusive[0] else "minimum"] = low
        schema["exclusiveMaximum" if exclusive[1] else "maximum"] = low + span + 1 + 2 * (step or 0)
    if step:
        schema["multipleOf"] = step
    return schema


def _string(low: int | None, extra: int | None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if low is not None:
        schema["minLength"] = low
    if extra is not None:
        schema["maxLength"] = (low or 0) + extra
    return schema


LEAVES = st.one_of(
    st.builds(_string, st.none() | st.integers(0, 8), st.none() | st.integers(0, 20)),
    st.sampled_from(["date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"])
    .map(lambda fmt: {"type": "string", "format": fmt}),
    st.sampled_from(PATTERNS).map(lambda p: {"type": "string", "pattern": p}),
    st.builds(_integer, st.none() | st.integers(-10**6, 10**6), st.integers(0, 1000), st.tuples(st.booleans(),
              st.booleans()), st.none() | st.sampled_from([2, 3, 5, 10])),
    st.builds(_number, st.none() | st.floats(-1e6, 1e6), st.floats(0, 1000), st.tuples(st.booleans(), st.booleans()),
              st.none() | st.sampled_from([0.5, 0.25, 0.1, 2.5])),
    st.lists(st.text("abcxyz", min_size=1, max_size=6) | st.integers(-5, 5), min_size=1, max_size=4, unique=True)
    .map(lambda values: {"enum": values}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.sampled_from(["fixed", 7, None]).map(lambda value: {"const": value}),
)


def _object(properties: dict[str, Any], required: list[str], closed: bool) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {**schema, "additionalProperties": False} if closed else schema


def _nullable(schema: dict[str, Any], as_type_list: bool) -> dict[str, Any]:
    if as_type_list and isinstance(schema.get("type"), str) and schema["type"] != "null":
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _tagged(first: Any, second: Any) -> dict[str, Any]:
    def branch(tag: str, data: Any) -> dict[str, Any]:
        return {"type": "object", "properties": {"kind": {"const": tag}, "data": data}, "required": ["kind", "data"]}
    return {"oneOf": [branch("a", first), branch("b", second)]}


def _strictly(schema: Any) -> Any:
    """`schema` as strict mode wants it: every object closed, with every property required."""
    if isinstance(schema, list):
        return [_strictly(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "allOf" in schema:
        properties = {k: v for part in schema["allOf"] for k, v in part["properties"].items()}
        schema = {"type": "object", "properties": properties}
    out = {k: v if k in ("enum", "const") else _strictly(v) for k, v in schema.items()}
    if "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    objects = st.dictionaries(NAMES, children, min_size=1, max_size=4).flatmap(
        lambda props: st.builds(_object, st.just(props), st.lists(st.sampled_from(sorted(props)), unique=True),
                                st.booleans()))
    return st.one_of(
        objects,
        st.builds(lambda items, low, extra: {"type": "array", "items": items, "minItems": low, "maxItems": low + extra},
                  children, st.integers(0, 3), st.integers(0, 3)),
        st.builds(_nullable, children, st.booleans()),
        st.lists(children, min_size=2, max_size=3).map(lambda branches: {"anyOf": branches}),
        st.builds(_tagged, children, children),
        st.builds(lambda a, b: {"allOf": [{"type": "object", "properties": {"p": a}, "required": ["p"]},
                                          {"type": "object", "properties": {"q": b}}]}, children, children),
    )


SCHEMAS = st.recursive(LEAVES, _extend, max_leaves=10)
ROOTS = st.builds(
    lambda props, definition, required: {
        "type": "object", "properties": {**props, "shared": {"$ref": "#/$defs/shared"}},
        "required": [*required, "shared"], "$defs": {"shared": definition}},
    st.dictionaries(NAMES, SCHEMAS, min_size=1, max_size=4), SCHEMAS, st.lists(NAMES, unique=True, max_size=3),
).map(lambda root: {**root, "required": [k for k in root["required"] if k in root["properties"]]})
HINTS = st.sampled_from(["", "Weather in Paris and Tokyo for 3 days", "Email ada@example.com about order 42",
                         "Book 2 seats from New York to Rome"])
FAST = settings(max_examples=150, deadline=None)
HTTP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(schema=ROOTS, hint=HINTS, seed=st.integers(0, 2**32))
def test_property_generated_values_always_validate(schema: dict[str, Any], hint: str, seed: int) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert generated(schema, hint, seed) == generated(schema, hint, seed)


def _content_and_arguments(url: str, schema: dict[str, Any], hint: str, strict: bool) -> tuple[Any, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": hint or "anything"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                                       "strict": strict}}}
    answer = post(url, body)
    called = post(url, {**body, "tools": [{"type": "function", "function": {
        "name": "act", "parameters": schema, "strict": strict}}], "tool_choice": "required"})
    assert answer.status == called.status == 200, answer.body + called.body
    conforms("CreateChatCompletionResponse", answer.json())
    [call] = called.json()["choices"][0]["message"]["tool_calls"]
    return json.loads(answer.json()["choices"][0]["message"]["content"]), json.loads(call["function"]["arguments"])


@HTTP
@given(schema=ROOTS, hint=HINTS)
def test_property_content_and_arguments_validate(mock_server: ServerThread, schema: dict[str, Any], hint: str) -> None:
    content, arguments = _content_and_arguments(mock_server.url + "/v1/chat/completions", schema, hint, False)

    assert_valid(schema, content)
    assert_valid(schema, arguments)


@HTTP
@given(schema=ROOTS.map(_strictly), hint=HINTS)
def test_property_strict_content_and_arguments_validate(mock_server: ServerThread, schema: dict[str, Any],
                                                        hint: str) -> None:
    content, arguments = _content_and_arguments(mock_server.url + "/v1/chat/completions", schema, hint, True)

    assert_valid(schema, content)
    assert_valid(schema, arguments)
