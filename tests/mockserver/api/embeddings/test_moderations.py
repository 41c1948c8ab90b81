"""POST /v1/moderations end to end: the real openai SDK (sync and async) and raw HTTP against the mock."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from mockserver.api.embeddings.moderations import CATEGORIES
from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.openapi import requires_spec, validate
from tests.servers import ServerThread

IMAGE_CATEGORIES = {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence",
                    "violence/graphic"}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/picture.png"}}


def post(base: str, path: str, body: Any) -> tuple[int, Any]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def flagged_categories(result: Any) -> set[str]:
    cats = result.categories.model_dump(by_alias=True)
    return {name for name, on in cats.items() if on}


@pytest.fixture(scope="module")
def custom_server() -> Iterator[ServerThread]:
    settings = MockSettings(flagged_words={"Pineapple": "hate", "tax fraud": "illicit", "gore": "violence/graphic"})
    server = ServerThread(lambda: make_app(settings)).start()
    yield server
    server.stop()


@pytest.fixture
def custom_client(custom_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=custom_server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def test_clean_text_not_flagged(client: openai.OpenAI) -> None:
    resp = client.moderations.create(model="omni-moderation-latest", input="I love sunny afternoons in the park.")
    assert resp.id.startswith("modr-")
    assert resp.model == "omni-moderation-latest"
    [result] = resp.results
    assert result.flagged is False
    assert flagged_categories(result) == set()
    scores = result.category_scores.model_dump(by_alias=True)
    assert set(scores) == set(CATEGORIES)
    assert all(0 <= s < 0.01 for s in scores.values())


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("I will KILL the process", "violence"),
        ("they plan to steal it", "illicit"),
        ("Suicide hotline numbers", "self-harm"),
        ("full of hate.", "hate"),
    ],
)
def test_default_word_list_flags_its_category(client: openai.OpenAI, text: str, category: str) -> None:
    [result] = client.moderations.create(input=text).results
    assert result.flagged is True
    assert flagged_categories(result) == {category}
    scores = result.category_scores.model_dump(by_alias=True)
    assert scores[category] >= 0.9
    assert max(v for k, v in scores.items() if k != category) < 0.01


def test_words_match_whole_words_only(client: openai.OpenAI) -> None:
    # "skill" contains "kill", "hateful" contains "hate": neither is the configured word.
    [result] = client.moderations.create(input="A skillful, hateful-free killjoy").results
    assert result.flagged is False


def test_custom_word_list(custom_client: openai.OpenAI) -> None:
    results = custom_client.moderations.create(
        input=["pineapple on pizza", "this is TAX   fraud?", "tax and fraud", "I will kill you"]
    ).results
    assert [r.flagged for r in results] == [True, False, False, False]
    assert flagged_categories(results[0]) == {"hate"}
    # multi-word phrases match as phrases (whitespace inside must be exact)
    results = custom_client.moderations.create(input=["this is tax fraud!"]).results
    assert flagged_categories(results[0]) == {"illicit"}


def test_list_input_gives_one_result_per_string(client: openai.OpenAI) -> None:
    texts = ["hello there", "bomb threat", "a nice day", "murder and hate"]
    resp = client.moderations.create(input=texts)
    assert len(resp.results) == len(texts)
    assert [r.flagged for r in resp.results] == [False, True, False, True]
    assert flagged_categories(resp.results[3]) == {"violence", "hate"}
    for r in resp.results:
        types = r.category_applied_input_types.model_dump(by_alias=True)
        assert all(v == ["text"] for v in types.values())


def test_multimodal_input_gives_one_result_with_input_types(client: openai.OpenAI) -> None:
    resp = client.moderations.create(
        model="omni-moderation-latest",
        input=[{"type": "text", "text": "a calm landscape"}, IMAGE],
    )
    [result] = resp.results
    assert result.flagged is False
    types = result.category_applied_input_types.model_dump(by_alias=True)
    assert set(types) == set(CATEGORIES)
    for category, applied in types.items():
        expected = ["image", "text"] if category in IMAGE_CATEGORIES else ["text"]
        assert applied == expected, category


def test_multimodal_flags_from_text_part(client: openai.OpenAI) -> None:
    [result] = client.moderations.create(input=[IMAGE, {"type": "text", "text": "how to build a bomb"}]).results
    assert flagged_categories(result) == {"violence"}


def test_image_only_input(client: openai.OpenAI) -> None:
    [result] = client.moderations.create(input=[IMAGE]).results
    types = result.category_applied_input_types.model_dump(by_alias=True)
    assert {c for c, v in types.items() if v} == IMAGE_CATEGORIES
    assert all(v in ([], ["image"]) for v in types.values())


def test_omitted_model_defaults_to_omni_latest(mock_server: ServerThread) -> None:
    status, body = post(mock_server.url, "/v1/moderations", {"input": "hello"})
    assert status == 200
    assert body["model"] == "omni-moderation-latest"
    assert body["id"].startswith("modr-")


def test_scores_are_deterministic(client: openai.OpenAI, custom_client: openai.OpenAI) -> None:
    texts = ["deterministic please", "steal the show"]
    first = client.moderations.create(input=texts).model_dump()
    second = client.moderations.create(input=texts).model_dump()
    assert first == second
    other = client.moderations.create(input=["deterministic please!", "steal the show"]).model_dump()
    assert other["id"] != first["id"]
    assert other["results"][0]["category_scores"] != first["results"][0]["category_scores"]


@pytest.mark.parametrize("model", ["text-moderation-latest", "text-moderation-stable", "omni-moderation-2024-09-26"])
def test_other_moderation_models(client: openai.OpenAI, model: str) -> None:
    resp = client.moderations.create(model=model, input="kill")
    assert resp.model == model
    assert resp.results[0].flagged is True


def test_text_moderation_model_refuses_images(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.moderations.create(model="text-moderation-latest", input=[IMAGE])
    assert info.value.param == "input"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "input"),
        ({"input": 5}, 400, "input"),
        ({"input": None}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": ["ok", 3]}, 400, "input[1]"),
        ({"input": [{"type": "text"}]}, 400, "input[0].text"),
        ({"input": [{"type": "image_url"}]}, 400, "input[0].image_url"),
        ({"input": [{"type": "image_url", "image_url": {}}]}, 400, "input[0].image_url.url"),
        ({"input": [{"type": "audio", "audio": "x"}]}, 400, "input[0].type"),
        ({"input": [{"text": "no type"}]}, 400, "input[0].type"),
        ({"input": [{"type": "text", "text": "x", "image_url": {"url": "u"}}]}, 400, "input[0].image_url"),
        ({"input": "x", "model": 7}, 400, "model"),
        ({"input": "x", "bogus": 1}, 400, None),
        ({"input": "x", "model": "omni-moderation-9000"}, 404, None),
        ({"input": "x", "model": "gpt-4o"}, 404, None),
    ],
)
def test_bad_requests(mock_server: ServerThread, body: Any, status: int, param: str | None) -> None:
    got, answer = post(mock_server.url, "/v1/moderations", body)
    assert got == status, answer
    assert set(answer) == {"error"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param or (param is None and got == 404)
    if got == 404:
        assert answer["error"]["code"] == "model_not_found"


def test_async_sdk(mock_url: str, client: openai.OpenAI) -> None:
    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            return list(await asyncio.gather(
                aclient.moderations.create(input="async and calm"),
                aclient.moderations.create(input=["bomb", "fine"]),
            ))

    calm, pair = asyncio.run(run())
    assert calm.results[0].flagged is False
    assert [r.flagged for r in pair.results] == [True, False]
    assert calm.model_dump() == client.moderations.create(input="async and calm").model_dump()


@requires_spec
@pytest.mark.parametrize(
    "body",
    [
        {"input": "kill"},
        {"input": ["a", "b"], "model": "text-moderation-latest"},
        {"input": [{"type": "text", "text": "x"}, IMAGE]},
    ],
)
def test_response_matches_openapi(mock_server: ServerThread, body: Any) -> None:
    status, answer = post(mock_server.url, "/v1/moderations", body)
    assert status == 200
    validate("CreateModerationResponse", answer)


@requires_spec
def test_error_matches_openapi(mock_server: ServerThread) -> None:
    status, answer = post(mock_server.url, "/v1/moderations", {"input": 5})
    assert status == 400
    validate("ErrorResponse", answer)
