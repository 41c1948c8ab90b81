"""The OpenAPI test helper (tests/openapi.py) must both pass valid bodies and fail invalid ones."""

from __future__ import annotations

import copy
import json

import pytest

from tests.openapi import _normalise, requires_spec, validate, validate_sse_events

CREATED = 1_741_570_283


def chat_completion() -> dict:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 1,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def chunk(**overrides) -> dict:
    body = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}],
    }
    body.update(overrides)
    return body


def sse(*payloads, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
    return out + (b"data: [DONE]\n\n" if done else b"")


def assert_invalid(component: str, instance, *needles: str) -> str:
    with pytest.raises(AssertionError) as info:
        validate(component, instance)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


# ----------------------------------------------------------------------------------------
# Chat completions
# ----------------------------------------------------------------------------------------

@requires_spec
def test_valid_chat_completion_passes():
    validate("CreateChatCompletionResponse", chat_completion())


@requires_spec
def test_minimal_chat_completion_passes():
    body = chat_completion()
    for optional in ("usage", "service_tier", "system_fingerprint"):
        del body[optional]
    validate("CreateChatCompletionResponse", body)


@requires_spec
def test_wrong_object_fails_naming_the_path():
    body = chat_completion()
    body["object"] = "nope"
    message = assert_invalid("CreateChatCompletionResponse", body, "$.object", "'nope'")
    assert "1 schema error" in message


@requires_spec
def test_missing_choices_fails():
    body = chat_completion()
    del body["choices"]
    assert_invalid("CreateChatCompletionResponse", body, "$:", "'choices' is a required property")


@requires_spec
def test_nested_errors_are_all_listed_with_paths():
    body = chat_completion()
    del body["choices"][0]["message"]["refusal"]
    body["choices"][0]["finish_reason"] = "done"
    body["usage"]["total_tokens"] = "10"
    message = assert_invalid(
        "CreateChatCompletionResponse", body,
        "$.choices[0].message: 'refusal' is a required property",
        "$.choices[0].finish_reason: 'done' is not one of",
        "$.usage.total_tokens: '10' is not of type 'integer'",
    )
    assert "3 schema error(s)" in message


@requires_spec
def test_errors_are_capped():
    body = chat_completion()
    body["choices"] = [{"index": str(i)} for i in range(20)]
    message = assert_invalid("CreateChatCompletionResponse", body, "showing the first 10")
    assert message.count("\n  - ") == 10


@requires_spec
def test_nullable_fields_accept_null():
    body = chat_completion()
    body["service_tier"] = None  # anyOf [..., {type: null}]
    body["choices"][0]["message"]["content"] = None
    body["choices"][0]["message"]["refusal"] = "I can't help with that."
    validate("CreateChatCompletionResponse", body)


@requires_spec
def test_non_nullable_field_rejects_null():
    body = chat_completion()
    body["system_fingerprint"] = None  # type: string, not nullable in the spec
    assert_invalid("CreateChatCompletionResponse", body, "$.system_fingerprint", "None")


@requires_spec
def test_tool_call_union_reports_the_intended_branch():
    body = chat_completion()
    body["choices"][0]["finish_reason"] = "tool_calls"
    body["choices"][0]["message"].update(
        content=None, tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "f"}}]
    )
    assert_invalid(
        "CreateChatCompletionResponse", body,
        "$.choices[0].message.tool_calls[0].function: 'arguments' is a required property",
    )
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{}"
    validate("CreateChatCompletionResponse", body)


@requires_spec
def test_error_response_passes():
    validate("ErrorResponse", {
        "error": {"message": "Rate limit reached", "type": "rate_limit_exceeded", "param": None,
                  "code": None}
    })
    validate("ErrorResponse", {
        "error": {"message": "bad model", "type": "invalid_request_error", "param": "model",
                  "code": "model_not_found"}
    })


@requires_spec
def test_error_response_requires_param_and_code():
    assert_invalid("ErrorResponse", {"error": {"message": "x", "type": "server_error"}},
                   "$.error: 'param' is a required property", "$.error: 'code' is a required property")


# ----------------------------------------------------------------------------------------
# Other endpoints
# ----------------------------------------------------------------------------------------

@requires_spec
def test_embedding_response_passes():
    validate("CreateEmbeddingResponse", {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023, -0.0093, 0.015]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    })


@requires_spec
def test_base64_embedding_is_not_in_the_schema():
    # encoding_format="base64" returns a string; the published schema only allows number arrays.
    assert_invalid("CreateEmbeddingResponse", {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": "AAAAAA=="}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }, "$.data[0].embedding", "is not of type 'array'")


MODERATION_CATEGORIES = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)


def moderation() -> dict:
    return {
        "id": "modr-123",
        "model": "omni-moderation-latest",
        "results": [{
            "flagged": False,
            "categories": {name: False for name in MODERATION_CATEGORIES},
            "category_scores": {name: 0.0001 for name in MODERATION_CATEGORIES},
            "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
        }],
    }


@requires_spec
def test_moderation_response_passes():
    body = moderation()
    validate("CreateModerationResponse", body)
    body["results"][0]["categories"]["illicit"] = None  # nullable for legacy text-moderation models
    validate("CreateModerationResponse", body)


@requires_spec
def test_moderation_requires_every_category_and_applied_input_types():
    body = moderation()
    del body["results"][0]["category_applied_input_types"]
    del body["results"][0]["categories"]["illicit/violent"]
    body["results"][0]["category_scores"]["hate"] = "low"
    assert_invalid(
        "CreateModerationResponse", body,
        "$.results[0]: 'category_applied_input_types' is a required property",
        "$.results[0].categories: 'illicit/violent' is a required property",
        "$.results[0].category_scores.hate: 'low' is not of type 'number'",
    )
    body = moderation()
    body["results"][0]["category_applied_input_types"]["hate"] = ["image"]  # text-only category
    assert_invalid("CreateModerationResponse", body,
                   "$.results[0].category_applied_input_types.hate[0]: 'image' is not one of")


def model(name: str = "gpt-4o-mini") -> dict:
    return {"id": name, "object": "model", "created": 1_686_935_002, "owned_by": "openai"}


@requires_spec
def test_models_pass():
    validate("Model", model())
    validate("ListModelsResponse", {"object": "list", "data": [model(), model("text-embedding-3-small")]})
    validate("ListModelsResponse", {"object": "list", "data": []})


@requires_spec
def test_model_format_and_required_checks():
    assert_invalid("Model", {"id": "m", "object": "model", "created": 1}, "'owned_by' is a required property")
    assert_invalid("Model", {**model(), "created": -5}, "$.created", "unixtime")
    validate("Model", {**model(), "shutdown_date": "2026-01-31"})
    validate("Model", {**model(), "shutdown_date": None})
    assert_invalid("Model", {**model(), "shutdown_date": "31/01/2026"}, "$.shutdown_date")


@requires_spec
def test_completion_response_passes():
    validate("CreateCompletionResponse", {
        "id": "cmpl-123",
        "object": "text_completion",
        "created": CREATED,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "hi", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    })


@requires_spec
def test_completion_choice_requires_logprobs_and_non_null_finish_reason():
    body = {
        "id": "cmpl-123", "object": "text_completion", "created": CREATED, "model": "m",
        "choices": [{"text": "hi", "index": 0, "finish_reason": None}],
    }
    assert_invalid("CreateCompletionResponse", body,
                   "$.choices[0]: 'logprobs' is a required property", "$.choices[0].finish_reason")


# ----------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------

@requires_spec
def test_stream_chunks_pass():
    validate("CreateChatCompletionStreamResponse", chunk())
    validate("CreateChatCompletionStreamResponse", chunk(choices=[], usage={
        "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}))


@requires_spec
def test_stream_chunk_nullable_true_fields_accept_null():
    # finish_reason, logprobs and usage are declared with OpenAPI 3.0 `nullable: true`.
    body = chunk(usage=None)
    body["choices"][0]["finish_reason"] = None
    body["choices"][0]["logprobs"] = None
    validate("CreateChatCompletionStreamResponse", body)
    body["choices"][0]["logprobs"] = {"content": None, "refusal": None}
    validate("CreateChatCompletionStreamResponse", body)


@requires_spec
def test_stream_chunk_nullable_enum_still_checks_values():
    body = chunk()
    body["choices"][0]["finish_reason"] = "finished"
    assert_invalid("CreateChatCompletionStreamResponse", body, "$.choices[0].finish_reason", "'finished'")
    body = chunk()
    del body["choices"][0]["finish_reason"]  # required, even though it is null until the end
    assert_invalid("CreateChatCompletionStreamResponse", body, "'finish_reason' is a required property")
    assert_invalid("CreateChatCompletionStreamResponse", chunk(object="chat.completion"), "$.object")


def chat_stream() -> list[dict]:
    role = chunk()
    text = chunk()
    text["choices"][0]["delta"] = {"content": "Hello"}
    stop = chunk()
    stop["choices"][0].update(delta={}, finish_reason="stop")
    usage = chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10})
    return [role, text, stop, usage]


@requires_spec
def test_validate_sse_events_returns_payloads_without_done():
    events = chat_stream()
    assert validate_sse_events("CreateChatCompletionStreamResponse", sse(*events)) == events
    as_text = sse(*events).decode().replace("\n", "\r\n")
    assert validate_sse_events("CreateChatCompletionStreamResponse", as_text) == events


@requires_spec
def test_validate_sse_events_tolerates_comments_and_multiline_data():
    first, second = chat_stream()[:2]
    raw = (
        b": keep-alive\n\n"
        b"data: " + json.dumps(first).encode() + b"\n\n"
        b"data: " + json.dumps(second, indent=1).replace("\n", "\ndata: ").encode() + b"\n\n"
        b"data: [DONE]\n\n"
    )
    assert validate_sse_events("CreateChatCompletionStreamResponse", raw) == [first, second]


@requires_spec
def test_validate_sse_events_names_the_bad_event():
    events = chat_stream()
    events[2]["choices"][0]["finish_reason"] = "halt"
    with pytest.raises(AssertionError, match=r"(?s)SSE event #2 does not match .*\$\.choices\[0\]\.finish_reason"):
        validate_sse_events("CreateChatCompletionStreamResponse", sse(*events))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "no SSE events"),
        (b'{"id": "not an event stream"}', "ends mid-event"),
        (b"data: {}\n", "ends mid-event"),
        (b"data: [DONE]\n\ndata: {}\n\n", "must be the last event"),
        (b"data: {not json\n\n", "data is not JSON"),
        (b"data: \xff\n\n", "not valid UTF-8"),
    ],
)
@requires_spec
def test_validate_sse_events_rejects_malformed_streams(raw, needle):
    with pytest.raises(AssertionError, match=needle):
        validate_sse_events("CreateChatCompletionStreamResponse", raw)


def response_text_events() -> list[tuple[str, dict]]:
    common = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "logprobs": []}
    return [
        ("response.output_text.delta",
         {"type": "response.output_text.delta", "sequence_number": 4, "delta": "Hel", **common}),
        ("response.output_text.delta",
         {"type": "response.output_text.delta", "sequence_number": 5, "delta": "lo", **common}),
        ("response.output_text.done",
         {"type": "response.output_text.done", "sequence_number": 6, "text": "Hello", **common}),
    ]


def named_sse(events) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode() for name, payload in events
    )


@requires_spec
def test_responses_stream_events():
    events = response_text_events()
    payloads = validate_sse_events("ResponseStreamEvent", named_sse(events))
    assert payloads == [payload for _, payload in events]


@requires_spec
def test_responses_stream_event_errors_come_from_the_matching_branch():
    events = response_text_events()
    del events[1][1]["logprobs"]
    with pytest.raises(AssertionError) as info:
        validate_sse_events("ResponseStreamEvent", named_sse(events))
    message = str(info.value)
    assert "SSE event #1 (response.output_text.delta)" in message
    assert "$: 'logprobs' is a required property" in message
    assert message.count("\n  - ") == 1, message


@requires_spec
def test_responses_stream_event_name_must_match_type():
    events = response_text_events()
    events[0] = ("response.output_text.done", events[0][1])
    with pytest.raises(AssertionError, match="differs from payload type"):
        validate_sse_events("ResponseStreamEvent", named_sse(events))


@requires_spec
def test_unknown_component_suggests_names():
    with pytest.raises(KeyError, match="CreateChatCompletionResponse"):
        validate("CreateChatCompletionRespons", {})


@requires_spec
def test_recursive_compound_filter_resolves():
    comparison = {"type": "eq", "key": "lang", "value": "en"}
    validate("CompoundFilter", {"type": "and", "filters": [
        comparison, {"type": "or", "filters": [comparison]}]})
    assert_invalid("CompoundFilter", {"type": "and", "filters": [{"type": "or", "filters": [{"type": "eq"}]}]},
                   "$.filters[0].filters[0]")


# ----------------------------------------------------------------------------------------
# 3.0 -> 2020-12 rewriting (pure functions: no spec file needed)
# ----------------------------------------------------------------------------------------

def test_normalise_nullable_typed_schema_and_enum():
    assert _normalise({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"], "enum": ["a", None]}
    assert _normalise({"type": "integer", "nullable": False}) == {"type": "integer"}


def test_normalise_nullable_ref_is_wrapped():
    assert _normalise({"$ref": "#/components/schemas/X", "nullable": True}) == {
        "anyOf": [{"$ref": "#/components/schemas/X"}, {"type": "null"}]}
    assert _normalise({"allOf": [{"$ref": "#/X"}, {"nullable": True, "description": "d"}]}) == {
        "anyOf": [{"allOf": [{"$ref": "#/X"}]}, {"type": "null"}]}


def test_normalise_leaves_data_and_property_names_alone():
    source = {
        "type": "object",
        "properties": {"nullable": {"type": "boolean"}, "type": {"type": "string"}},
        "example": {"nullable": True},
        "enum": [{"nullable": True}],
    }
    assert _normalise(copy.deepcopy(source)) == source


def test_normalise_boolean_exclusive_minimum():
    assert _normalise({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {
        "type": "number", "exclusiveMinimum": 0}
    assert _normalise({"type": "number", "minimum": 0, "exclusiveMinimum": False}) == {
        "type": "number", "minimum": 0}
