"""End to end with the `openai` SDK's own methods: background responses and cancel, input token counts,
compaction, paged input items and the Conversations API; every answer checked against the OpenAPI
description, and the same request answered with the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import call, conforms, post
from tests.mockserver.engine.test_control import advance, conforms_api
from tests.servers import ServerThread


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(lambda: make_app(MockSettings())).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def realistic() -> Iterator[ServerThread]:
    running = ServerThread(lambda: make_app(MockSettings(background_pace="realistic", background_phase_s=10))).start()
    yield running
    running.stop()


@pytest.fixture
def sdk(server: ServerThread) -> Iterator[openai.OpenAI]:
    with _sdk(server) as client:
        yield client


def _raw(response: Any) -> dict[str, Any]:
    return json.loads(response.http_response.content)


def conforms_unfinished(response: dict[str, Any]) -> None:
    """A queued, running or cancelled response has `usage: null`, as OpenAI sends it; the description does
    not mark `usage` nullable, so that one null is left out before validating."""
    assert response["usage"] is None
    conforms("Response", {k: v for k, v in response.items() if k != "usage"})


# --- background and cancel ----------------------------------------------------------------------

def test_a_background_response_is_queued_then_completed_at_its_first_retrieve(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(model="gpt-4o-mini", input="Tell me about tides", background=True)
    queued = _raw(raw)
    conforms_unfinished(queued)
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    done = sdk.responses.retrieve(queued["id"])
    assert done.status == "completed" and done.output_text
    foreground = sdk.responses.create(model="gpt-4o-mini", input="Tell me about tides")
    assert done.output_text == foreground.output_text  # the same answer, only shown later


def test_cancel_a_queued_background_response(sdk: openai.OpenAI) -> None:
    queued = sdk.responses.create(model="gpt-4o-mini", input="Write an essay on clouds", background=True)
    raw = sdk.responses.with_raw_response.cancel(queued.id)
    cancelled = _raw(raw)
    conforms_unfinished(cancelled)
    assert cancelled["status"] == "cancelled" and cancelled["output"] == []
    assert sdk.responses.cancel(queued.id).status == "cancelled"  # again: the same answer
    assert sdk.responses.retrieve(queued.id).status == "cancelled"


def test_only_unfinished_background_responses_can_be_cancelled(sdk: openai.OpenAI) -> None:
    foreground = sdk.responses.create(model="gpt-4o-mini", input="Hello there")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.cancel(foreground.id)
    assert "background" in bad.value.body["message"]
    background = sdk.responses.create(model="gpt-4o-mini", input="Hello again", background=True)
    sdk.responses.retrieve(background.id)
    with pytest.raises(openai.BadRequestError) as done:
        sdk.responses.cancel(background.id)
    assert done.value.body["message"] == "Cannot cancel a completed response."
    with pytest.raises(openai.NotFoundError):
        sdk.responses.cancel("resp_" + "0" * 48)


def test_background_needs_store(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(model="gpt-4o-mini", input="Hi", background=True, store=False)
    assert bad.value.param == "background"


def test_realistic_pace_moves_on_the_virtual_clock(realistic: ServerThread) -> None:
    with _sdk(realistic) as client:
        created = client.responses.create(model="gpt-4o-mini", input="Plan a garden", background=True)
        assert client.responses.retrieve(created.id).status == "queued"
        advance(realistic, 10)
        running = client.responses.with_raw_response.retrieve(created.id)
        assert _raw(running)["status"] == "in_progress"
        conforms_unfinished(_raw(running))
        advance(realistic, 10)
        done = client.responses.retrieve(created.id)
        assert done.status == "completed" and done.output_text and done.usage is not None
        assert done.completed_at == created.created_at + 20
        late = client.responses.create(model="gpt-4o-mini", input="Plan a pond", background=True)
        advance(realistic, 12)
        assert client.responses.cancel(late.id).status == "cancelled"  # in progress: still cancellable


# --- input token counts -------------------------------------------------------------------------

def test_input_tokens_count_what_usage_reports(sdk: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    raw = sdk.responses.input_tokens.with_raw_response.count(
        model="gpt-4o", input="What is the weather in Paris today?", instructions="Be brief.", tools=tools)
    counted = _raw(raw)
    conforms("TokenCountsResource", counted)
    made = sdk.responses.create(model="gpt-4o", input="What is the weather in Paris today?", instructions="Be brief.",
                                tools=tools, tool_choice="none")
    assert made.usage is not None
    assert counted == {"object": "response.input_tokens", "input_tokens": made.usage.input_tokens}
    longer = sdk.responses.input_tokens.count(model="gpt-4o", input="What is the weather in Paris today? " * 10)
    assert longer.input_tokens > counted["input_tokens"]


def test_input_tokens_follow_a_previous_response(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model="gpt-4o", input="Name three rivers")
    counted = sdk.responses.input_tokens.count(model="gpt-4o", previous_response_id=first.id, input="And lakes?")
    second = sdk.responses.create(model="gpt-4o", previous_response_id=first.id, input="And lakes?")
    assert second.usage is not None and counted.input_tokens == second.usage.input_tokens


def test_input_tokens_reject_what_responses_reject(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.responses.input_tokens.count(model="gpt-4o", input="hi", extra_body={"temperature": 0.5})
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.responses.input_tokens.count(model="no-such-model", input="hi")
    assert unknown.value.code == "model_not_found"


# --- compaction ---------------------------------------------------------------------------------

def test_compact_keeps_user_turns_and_folds_the_rest(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model="gpt-4o", input="Name three rivers")
    second = sdk.responses.create(model="gpt-4o", previous_response_id=first.id, input="Which is longest?")
    raw = sdk.responses.with_raw_response.compact(model="gpt-4o", previous_response_id=second.id)
    compacted = _raw(raw)
    conforms_api("CompactResource", compacted)
    kinds = [(item["type"], item.get("role")) for item in compacted["output"]]
    assert kinds == [("message", "user"), ("message", "user"), ("compaction", None)]
    assert compacted["usage"]["input_tokens"] == sdk.responses.input_tokens.count(
        model="gpt-4o", previous_response_id=second.id).input_tokens
    again = sdk.responses.with_raw_response.compact(model="gpt-4o", previous_response_id=second.id)
    assert again.http_response.content == raw.http_response.content


# --- input items paging -------------------------------------------------------------------------

def test_input_items_page_through_a_long_context(sdk: openai.OpenAI) -> None:
    turns: Any = [{"role": "user", "content": f"Fact number {i}"} for i in range(7)]
    made = sdk.responses.create(model="gpt-4o", input=turns)
    first = sdk.responses.input_items.with_raw_response.list(made.id, limit=3, order="asc")
    page = _raw(first)
    conforms_api("ResponseItemList", page)
    assert page["has_more"] is True and len(page["data"]) == 3
    every = [item.id for item in sdk.responses.input_items.list(made.id, limit=3, order="asc")]
    assert len(every) == 7 and len(set(every)) == 7
    texts = [item.content[0].text for item in sdk.responses.input_items.list(made.id, limit=2)]  # type: ignore[union-attr]
    assert texts == [f"Fact number {i}" for i in reversed(range(7))]


# --- conversations ------------------------------------------------------------------------------

def test_a_conversation_carries_the_turns_of_its_responses(sdk: openai.OpenAI) -> None:
    raw = sdk.conversations.with_raw_response.create(
        items=[{"type": "message", "role": "user", "content": "My name is Ada."}], metadata={"topic": "intro"})
    conversation = _raw(raw)
    conforms("ConversationResource", conversation)
    assert conversation["object"] == "conversation" and conversation["metadata"] == {"topic": "intro"}
    first = sdk.responses.create(model="gpt-4o", input="Hello!", conversation=conversation["id"])
    assert first.conversation is not None and first.conversation.id == conversation["id"]
    second = sdk.responses.create(model="gpt-4o", input="Hello!", conversation=conversation["id"])
    assert second.id != first.id  # the same input in a later turn is a new response
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # it saw the first turn
    listed = sdk.conversations.items.with_raw_response.list(conversation["id"], order="asc")
    items = _raw(listed)
    conforms_api("ConversationItemList", items)
    roles = [item.get("role") for item in items["data"]]
    assert roles == ["user", "user", "assistant", "user", "assistant"]
    inputs = [item.id for item in sdk.responses.input_items.list(second.id, order="asc")]
    assert inputs == [item["id"] for item in items["data"][:4]]


def test_conversation_items_are_added_retrieved_and_deleted(sdk: openai.OpenAI) -> None:
    conversation = sdk.conversations.create()
    added = sdk.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": "First"},
        {"type": "message", "role": "assistant", "content": "Noted."}])
    assert [item.type for item in added.data] == ["message", "message"]
    one = sdk.conversations.items.with_raw_response.retrieve(added.data[0].id, conversation_id=conversation.id)
    conforms("ConversationItem", _raw(one))
    after = sdk.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
    assert after.id == conversation.id
    assert [item.id for item in sdk.conversations.items.list(conversation.id)] == [added.data[1].id]
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)


def test_conversation_metadata_update_and_delete(sdk: openai.OpenAI) -> None:
    conversation = sdk.conversations.create(metadata={"a": "1"})
    assert sdk.conversations.update(conversation.id, metadata={"b": "2"}).metadata == {"b": "2"}
    assert sdk.conversations.retrieve(conversation.id).metadata == {"b": "2"}
    raw = sdk.conversations.with_raw_response.delete(conversation.id)
    conforms("DeletedConversationResource", _raw(raw))
    with pytest.raises(openai.NotFoundError):
        sdk.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.responses.create(model="gpt-4o", input="Hi", conversation=conversation.id)
    assert gone.value.param == "conversation"


def test_conversation_and_previous_response_are_exclusive(sdk: openai.OpenAI) -> None:
    conversation = sdk.conversations.create()
    first = sdk.responses.create(model="gpt-4o", input="Hi")
    with pytest.raises(openai.BadRequestError) as both:
        sdk.responses.create(model="gpt-4o", input="Hi", conversation=conversation.id, previous_response_id=first.id)
    assert both.value.code == "mutually_exclusive_parameters"


def test_bad_conversation_items_are_400(server: ServerThread) -> None:
    reply = post(server.url + "/v1/conversations", {"items": [{"type": "message", "role": "user"}]})
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    reply = post(server.url + "/v1/conversations", {"items": "nope"})
    assert reply.status == 400


# --- determinism --------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(st.text(min_size=1, max_size=200), st.sampled_from(["gpt-4o", "gpt-5.4", "o4-mini"]))
def test_counts_and_compactions_are_the_same_bytes_each_time(server: ServerThread, text: str, model: str) -> None:
    for path in ("/v1/responses/input_tokens", "/v1/responses/compact"):
        body = {"model": model, "input": [{"role": "user", "content": text},
                                          {"role": "assistant", "content": "Noted: " + text}]}
        first, second = post(server.url + path, body), post(server.url + path, body)
        assert first.status == 200, first.body
        assert first.body == second.body
    assert call("GET", server.url + "/healthz").status == 200
