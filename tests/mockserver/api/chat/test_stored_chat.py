"""End to end: stored chat completions (`store: true`; list, retrieve, update, delete, messages) through the
real `openai` SDK, each body checked against OpenAI's published schemas when the OpenAPI file is present.

The module has a mock of its own, reset (`POST /_mock/reset`) before each test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from mockserver.api.chat import stored
from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import conforms, post
from tests.servers import ServerThread

TOPICS = ("otters", "volcanoes", "sourdough", "glaciers", "comets")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    started = ServerThread(lambda: make_app(MockSettings())).start()
    yield started
    started.stop()


@pytest.fixture
def sdk(server: ServerThread) -> Iterator[openai.OpenAI]:
    assert post(server.url + "/_mock/reset", {}).status == 200
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def ask(client: openai.OpenAI, topic: str, **extra: Any) -> Any:
    return client.chat.completions.create(model=extra.pop("model", "gpt-4o-mini"), store=True,
                                          messages=[{"role": "user", "content": f"Tell me about {topic}"}], **extra)


def raw_json(response: Any) -> Any:
    return json.loads(response.text)


def content_of(completion: dict[str, Any]) -> str:
    return completion["choices"][0]["message"]["content"]


def conforms_messages(page: dict[str, Any]) -> None:
    """The spec's message list items reuse the *response* message schema (role "assistant", `refusal`
    required), although its own example lists the request's user message; check them as that schema reads."""
    conforms("ChatCompletionMessageList",
             {**page, "data": [{**m, "role": "assistant", "refusal": None} for m in page["data"]]})


def test_a_stored_completion_is_retrieved_with_its_request_fields(sdk: openai.OpenAI) -> None:
    created = raw_json(sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", store=True, metadata={"team": "search"}, temperature=0.5,
        messages=[{"role": "user", "content": "Tell me about otters"}]))
    raw = raw_json(sdk.chat.completions.with_raw_response.retrieve(created["id"]))

    conforms("CreateChatCompletionResponse", raw)
    assert {k: raw[k] for k in created} == created
    assert raw["metadata"] == {"team": "search"} and raw["temperature"] == 0.5
    assert raw["request_id"].startswith("req_") and raw["tools"] is None
    assert sdk.chat.completions.retrieve(created["id"]).choices[0].message.content == content_of(created)


def test_tool_calls_and_streamed_answers_are_stored_as_answered(sdk: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    called = ask(sdk, "the weather in Oslo", tools=tools)
    with sdk.chat.completions.create(model="gpt-4o-mini", store=True, stream=True,
                                     messages=[{"role": "user", "content": "Tell me about comets"}]) as stream:
        chunks = list(stream)

    kept = sdk.chat.completions.retrieve(called.id)
    assert kept.choices[0].message.tool_calls == called.choices[0].message.tool_calls
    assert raw_json(sdk.chat.completions.with_raw_response.retrieve(called.id))["tools"] == tools
    streamed = sdk.chat.completions.retrieve(chunks[0].id)
    assert streamed.object == "chat.completion"
    assert streamed.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in chunks)


def test_unknown_or_unstored_ids_are_404(sdk: openai.OpenAI) -> None:
    unstored = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    for call in (sdk.chat.completions.retrieve, sdk.chat.completions.delete, sdk.chat.completions.messages.list):
        with pytest.raises(openai.NotFoundError) as missing:
            call(unstored.id)
        conforms("ErrorResponse", missing.value.response.json())
        assert missing.value.body == {"message": f"No chat completion found with id '{unstored.id}'.",
                                      "type": "invalid_request_error", "param": None, "code": None}


def test_list_pages_through_in_creation_order(sdk: openai.OpenAI) -> None:
    ids = [ask(sdk, topic).id for topic in TOPICS]
    first = raw_json(sdk.chat.completions.with_raw_response.list(limit=2))
    newest = raw_json(sdk.chat.completions.with_raw_response.list(limit=2, order="desc"))

    conforms("ChatCompletionList", first)
    assert [c["id"] for c in first["data"]] == ids[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    assert [c["id"] for c in newest["data"]] == ids[:2:-1][:2] == [ids[4], ids[3]]
    assert [c.id for c in sdk.chat.completions.list(limit=2)] == ids
    assert [c.id for c in sdk.chat.completions.list(after=ids[2])] == ids[3:]
    assert [c.id for c in sdk.chat.completions.list(order="desc", after=ids[2])] == [ids[1], ids[0]]
    last = raw_json(sdk.chat.completions.with_raw_response.list(after=ids[3]))
    assert [c["id"] for c in last["data"]] == [ids[4]] and last["has_more"] is False


def test_list_filters_by_model_and_metadata(sdk: openai.OpenAI) -> None:
    otters = ask(sdk, "otters", metadata={"team": "a", "env": "ci"})
    comets = ask(sdk, "comets", metadata={"team": "b"}, model="gpt-4o")
    ask(sdk, "glaciers", metadata={"team": "a"})

    assert [c.id for c in sdk.chat.completions.list(model="gpt-4o")] == [comets.id]
    assert [c.id for c in sdk.chat.completions.list(metadata={"team": "a", "env": "ci"})] == [otters.id]
    assert len(list(sdk.chat.completions.list(metadata={"team": "a"}))) == 2


def test_update_replaces_the_metadata_only(sdk: openai.OpenAI, server: ServerThread) -> None:
    created = ask(sdk, "otters", metadata={"team": "a"})
    updated = sdk.chat.completions.with_raw_response.update(created.id, metadata={"reviewed": "yes"})

    conforms("CreateChatCompletionResponse", raw_json(updated))
    assert updated.parse().choices == created.choices
    assert raw_json(sdk.chat.completions.with_raw_response.retrieve(created.id))["metadata"] == {"reviewed": "yes"}
    assert [c.id for c in sdk.chat.completions.list(metadata={"reviewed": "yes"})] == [created.id]
    reply = post(f"{server.url}/v1/chat/completions/{created.id}", {"model": "gpt-4o"})
    assert reply.status == 400 and reply.json()["error"]["message"] == "Missing required parameter: 'metadata'."


def test_delete_forgets_the_completion(sdk: openai.OpenAI) -> None:
    created = ask(sdk, "otters")
    deleted = raw_json(sdk.chat.completions.with_raw_response.delete(created.id))

    conforms("ChatCompletionDeleted", deleted)
    assert deleted == {"object": "chat.completion.deleted", "id": created.id, "deleted": True}
    assert list(sdk.chat.completions.list()) == []
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.delete(created.id)


def test_messages_lists_the_request_messages(sdk: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "name": "ada", "content": parts},
                {"role": "assistant", "content": "A picture."},
                {"role": "user", "content": "More detail, please"}]
    created = sdk.chat.completions.create(model="gpt-4o", store=True, messages=messages)
    page = raw_json(sdk.chat.completions.messages.with_raw_response.list(created.id, limit=2))

    conforms_messages(page)
    assert [m["id"] for m in page["data"]] == [f"{created.id}-0", f"{created.id}-1"] and page["has_more"] is True
    assert page["data"][1] == {"id": f"{created.id}-1", "role": "user", "content": "Describe", "name": "ada",
                               "content_parts": parts}
    every = list(sdk.chat.completions.messages.list(created.id, limit=1))
    assert [m.role for m in every] == ["system", "user", "assistant", "user"]
    assert every[3].content == "More detail, please" and every[3].content_parts is None
    newest = list(sdk.chat.completions.messages.list(created.id, order="desc", after=f"{created.id}-2"))
    assert [m.id for m in newest] == [f"{created.id}-1", f"{created.id}-0"]


@pytest.mark.parametrize(("query", "message"), [
    ({"limit": 0}, "Invalid 'limit': integer below minimum value. Expected a value >= 1, but got 0 instead."),
    ({"limit": 101}, "Invalid 'limit': integer above maximum value. Expected a value <= 100, but got 101 instead."),
    ({"order": "sideways"}, "Invalid value: 'sideways'. Supported values are: 'asc', and 'desc'."),
])
def test_bad_list_parameters_are_400(sdk: openai.OpenAI, query: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.list(**query)

    assert bad.value.body["message"] == message


def test_only_the_latest_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored, "MAX_STORED", 3)
    small = ServerThread(lambda: make_app(MockSettings())).start()
    try:
        with openai.OpenAI(base_url=small.url + "/v1", api_key="sk-test", max_retries=0) as client:
            ids = [ask(client, topic).id for topic in TOPICS]
            assert [c.id for c in client.chat.completions.list()] == ids[2:]
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.retrieve(ids[0])
            assert post(small.url + "/_mock/reset", {}).status == 200
            assert list(client.chat.completions.list()) == []
    finally:
        small.stop()
