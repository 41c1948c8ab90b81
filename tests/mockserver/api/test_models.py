"""GET /v1/models and /v1/models/{id}, and model acceptance on the endpoints, end to end."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import openai
import pytest

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.openapi import requires_spec, validate
from tests.servers import ServerThread

REQUIRED = {
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini", "o4-mini", "gpt-5",
    "gpt-5-mini", "gpt-5-nano", "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
    "omni-moderation-latest", "gpt-3.5-turbo-instruct",
}
HELLO = [{"role": "user", "content": "Say hello"}]


def request(base: str, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": "Bearer sk-test"} if auth else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def extra_server() -> Iterator[ServerThread]:
    server = ServerThread(lambda: make_app(MockSettings(models=["my-model", "acme/llama-70b"]))).start()
    yield server
    server.stop()


@pytest.fixture
def extra_client(extra_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=extra_server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def test_list_contains_the_catalogue(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert set(ids) >= REQUIRED, REQUIRED - set(ids)
    assert len(ids) == len(set(ids))
    assert any(i.startswith("gpt-4.1") for i in ids) and any(i.startswith("gpt-5") for i in ids)
    for model in models:
        assert model.object == "model"
        assert isinstance(model.created, int) and 1_600_000_000 < model.created < 1_900_000_000
        assert model.owned_by
    assert "my-model" not in ids


def test_list_is_byte_identical_between_calls(mock_server: ServerThread) -> None:
    first = request(mock_server.url, "GET", "/v1/models")
    second = request(mock_server.url, "GET", "/v1/models")
    assert first[0] == 200
    assert first == second


@pytest.mark.parametrize("model_id", sorted(REQUIRED))
def test_retrieve_matches_the_list_entry(client: openai.OpenAI, model_id: str) -> None:
    listed = {m.id: m for m in client.models.list()}
    got = client.models.retrieve(model_id)
    assert got.id == model_id
    assert got.model_dump() == listed[model_id].model_dump()


@pytest.mark.parametrize("model_id", ["gpt-6", "GPT-4O", "gpt-4o-", "ft:nonexistent:org::abc", "x" * 300])
def test_retrieve_unknown_is_404_model_not_found(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(model_id)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.type == "invalid_request_error"
    assert model_id in info.value.message


def test_retrieve_fine_tune(client: openai.OpenAI) -> None:
    got = client.models.retrieve("ft:gpt-4o-mini:org::abc")
    assert got.id == "ft:gpt-4o-mini:org::abc"
    assert got.object == "model"


def test_models_require_a_key(mock_server: ServerThread) -> None:
    status, raw = request(mock_server.url, "GET", "/v1/models", auth=False)
    assert status == 401
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_configured_models_are_listed_retrievable_and_usable(extra_client: openai.OpenAI,
                                                            extra_server: ServerThread) -> None:
    ids = [m.id for m in extra_client.models.list()]
    assert "my-model" in ids and "acme/llama-70b" in ids
    assert set(ids) >= REQUIRED  # extras add to the catalogue, they do not replace it
    assert extra_client.models.retrieve("my-model").id == "my-model"
    status, raw = request(extra_server.url, "GET", "/v1/models/" + quote("acme/llama-70b", safe="/"))
    assert (status, json.loads(raw)["id"]) == (200, "acme/llama-70b")
    for model in ("my-model", "acme/llama-70b"):
        resp = extra_client.chat.completions.create(model=model, messages=HELLO)
        assert resp.model == model
        assert resp.choices[0].message.content


def test_configured_model_unknown_on_default_server(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="my-model", messages=HELLO)
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("model", ["ft:gpt-4o-mini:org::abc", "ft:gpt-4o-mini-2024-07-18:acme:custom:9xYz"])
def test_fine_tuned_names_accepted_on_chat(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=HELLO)
    assert resp.model == model
    assert resp.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4.1-nano", "o4-mini", "gpt-5-mini"])
def test_catalogue_chat_models_work_on_chat(client: openai.OpenAI, model: str) -> None:
    resp = client.chat.completions.create(model=model, messages=HELLO)
    assert resp.model == model


def test_unknown_model_on_each_endpoint_is_404(mock_server: ServerThread) -> None:
    bodies = {
        "/v1/chat/completions": {"model": "nope-1", "messages": HELLO},
        "/v1/completions": {"model": "nope-1", "prompt": "x"},
        "/v1/embeddings": {"model": "nope-1", "input": "x"},
        "/v1/moderations": {"model": "nope-1", "input": "x"},
    }
    for path, body in bodies.items():
        status, raw = request(mock_server.url, "POST", path, body)
        error = json.loads(raw)["error"]
        assert status == 404, path
        assert error["code"] == "model_not_found", path
        assert "nope-1" in error["message"], path


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "gpt-3.5-turbo-instruct", "messages": HELLO}),
        ("/v1/chat/completions", {"model": "text-embedding-3-small", "messages": HELLO}),
        ("/v1/completions", {"model": "gpt-4o", "prompt": "x"}),
        ("/v1/embeddings", {"model": "omni-moderation-latest", "input": "x"}),
    ],
)
def test_model_of_the_wrong_kind_is_refused(mock_server: ServerThread, path: str, body: Any) -> None:
    status, raw = request(mock_server.url, "POST", path, body)
    error = json.loads(raw)["error"]
    assert status == 404
    assert error["param"] == "model"
    assert "Did you mean to use" in error["message"]


def test_async_sdk(mock_url: str) -> None:
    async def run() -> tuple[list[str], str]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            ids = [m.id async for m in aclient.models.list()]
            one = await aclient.models.retrieve("o3-mini")
            return ids, one.id

    ids, one = asyncio.run(run())
    assert set(ids) >= REQUIRED
    assert one == "o3-mini"


@requires_spec
def test_list_and_model_match_openapi(mock_server: ServerThread) -> None:
    status, raw = request(mock_server.url, "GET", "/v1/models")
    assert status == 200
    listing = json.loads(raw)
    validate("ListModelsResponse", listing)
    status, raw = request(mock_server.url, "GET", "/v1/models/gpt-4o")
    assert status == 200
    validate("Model", json.loads(raw))
    status, raw = request(mock_server.url, "GET", "/v1/models/nope")
    assert status == 404
    validate("ErrorResponse", json.loads(raw))
