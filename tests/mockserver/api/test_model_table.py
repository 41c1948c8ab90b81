"""The catalogue comes from genai-prices' table: every OpenAI model of the installed table answers on its
endpoint (walked from the table itself, so a package upgrade is covered without editing this file),
`[mock] models` adds and overrides, `accept_unknown_models` answers unknown names by family, and context
windows are enforced with OpenAI's 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from genai_prices import data as price_data

from mockserver.app import make_app
from mockserver.engine.catalogue import Catalogue, ModelSpec
from mockserver.settings import MockSettings
from proxy.wire.configfile import read_toml
from proxy.wire.configfile import validate as validate_config
from tests.http import conforms
from tests.servers import ServerThread


def _table_ids() -> list[str]:
    """The table's OpenAI model ids that are model names (not fine-tune matchers or variants)."""
    openai_provider = next(p for p in price_data.providers if p.id == "openai")
    return sorted(m.id for m in openai_provider.models
                  if not m.id.startswith("ft:") and ".ft-" not in m.id and ":" not in m.id and m.id != "moderation")


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def table_client(mock_server: ServerThread) -> Iterator[openai.OpenAI]:
    with _sdk(mock_server) as client:
        yield client


def _answer(client: openai.OpenAI, model: str, kind: str) -> Any:
    """Call the endpoint that serves `kind` with a small request; the parsed JSON answer."""
    hello = [{"role": "user", "content": "Say hello"}]
    if kind == "chat":
        raw = client.chat.completions.with_raw_response.create(model=model, messages=hello,
                                                               max_completion_tokens=400)
    elif kind == "responses":
        raw = client.responses.with_raw_response.create(model=model, input="Say hello")
    elif kind == "completion":
        raw = client.completions.with_raw_response.create(model=model, prompt="Say hello", max_tokens=8)
    elif kind == "embedding":
        raw = client.embeddings.with_raw_response.create(model=model, input="hello", encoding_format="float")
    elif kind == "image":
        raw = client.images.with_raw_response.generate(model=model, prompt="A small boat", size="1024x1024")
    elif kind == "speech":
        spoken = client.audio.speech.with_raw_response.create(model=model, voice="alloy", input="Hello",
                                                              response_format="wav")
        assert spoken.http_response.content[:4] == b"RIFF"
        return {"object": "audio"}
    elif kind == "transcription":
        raw = client.audio.transcriptions.with_raw_response.create(model=model, file=("a.wav", b"RIFF" + bytes(60)))
    else:  # realtime: the mock has no Realtime API (WebSocket); listed and retrieved only
        raw = client.models.with_raw_response.retrieve(model)
    return raw.http_response.json()


@pytest.mark.parametrize("model_id", _table_ids())
def test_every_table_model_is_listed_and_answers_on_its_endpoint(table_client: openai.OpenAI,
                                                                  model_id: str) -> None:
    listed = {m.id for m in table_client.models.list()}
    assert model_id in listed
    assert table_client.models.retrieve(model_id).id == model_id
    found = Catalogue().get(model_id)
    assert found is not None
    kind = found.kind
    body = _answer(table_client, model_id, kind)
    component = {"chat": "CreateChatCompletionResponse", "responses": "Response",
                 "completion": "CreateCompletionResponse", "embedding": "CreateEmbeddingResponse",
                 "image": "ImagesResponse", "transcription": "CreateTranscriptionResponseJson",
                 "realtime": "Model"}.get(kind)
    if component is not None:
        conforms(component, body)
    if kind in ("chat", "responses", "completion"):
        assert body["model"] == model_id


def test_the_table_has_the_sdks_example_model_and_chat_takes_it(table_client: openai.OpenAI) -> None:
    assert "gpt-5.4" in _table_ids()  # if a table drops it, `accept_unknown_models` is the way (see README)
    done = table_client.chat.completions.create(model="gpt-5.4", messages=[{"role": "user", "content": "Hi"}])
    assert done.model == "gpt-5.4" and done.choices[0].message.content
    assert done.usage is not None and done.usage.completion_tokens_details is not None
    assert done.usage.completion_tokens_details.reasoning_tokens > 0  # gpt-5 family: a reasoning model
    response = table_client.responses.create(model="gpt-5.4", input="Hi")
    assert response.status == "completed" and response.output_text


def test_a_model_only_for_the_responses_api_is_refused_by_chat(table_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        table_client.chat.completions.create(model="o3-pro", messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body["message"] == (
        "This model is only supported in v1/responses and not in v1/chat/completions.")


def test_unknown_models_are_404_by_default(table_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        table_client.chat.completions.create(model="gpt-99-ultra", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.code == "model_not_found"


@pytest.fixture(scope="module")
def lenient() -> Iterator[ServerThread]:
    settings = MockSettings(accept_unknown_models=True, models=[
        "my-model", ModelSpec(id="gpt-4o", context_window=300),
        ModelSpec(id="my-embedder", kind="embedding", dimensions=8)])
    server = ServerThread(lambda: make_app(settings)).start()
    yield server
    server.stop()


def test_accept_unknown_models_answers_by_family(lenient: ServerThread) -> None:
    with _sdk(lenient) as client:
        future = client.chat.completions.create(model="gpt-9-turbo", messages=[{"role": "user", "content": "Hi"}])
        assert future.model == "gpt-9-turbo"
        assert future.usage is not None and future.usage.completion_tokens_details is not None
        assert future.usage.completion_tokens_details.reasoning_tokens > 0
        vectors = client.embeddings.create(model="text-embedding-4-large", input="hi")
        assert len(vectors.data[0].embedding) == 3072
        with pytest.raises(openai.NotFoundError) as wrong:  # still the family's endpoint only
            client.chat.completions.create(model="text-embedding-4-large", messages=[{"role": "user", "content": "x"}])
        assert "v1/embeddings" in wrong.value.body["message"]
        assert "gpt-9-turbo" not in {m.id for m in client.models.list()}  # answered, not listed


def test_configured_models_add_and_override(lenient: ServerThread) -> None:
    with _sdk(lenient) as client:
        listed = {m.id: m for m in client.models.list()}
        assert listed["my-model"].owned_by == "user" and "my-embedder" in listed
        assert len(client.embeddings.create(model="my-embedder", input="hi").data[0].embedding) == 8
        long = "word " * 400
        with pytest.raises(openai.BadRequestError) as over:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": long}])
        assert over.value.code == "context_length_exceeded"


def test_models_read_from_a_config_file(tmp_path: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[mock]\naccept_unknown_models = true\n'
                    'models = ["my-model", {id = "gpt-4o", context_window = 1000}]\n')
    settings = validate_config(MockSettings, read_toml(path).get("mock", {}), str(path))
    assert settings.accept_unknown_models
    assert settings.models[0] == "my-model"
    assert settings.models[1] == ModelSpec(id="gpt-4o", context_window=1000)


def test_prompt_plus_output_beyond_the_window_is_openais_400(table_client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "word " * 300}]
    with pytest.raises(openai.BadRequestError) as over:
        table_client.chat.completions.create(model="gpt-4", messages=prompt, max_tokens=8000)
    body = over.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert body["type"] == "invalid_request_error"
    prompt_tokens = table_client.chat.completions.create(model="gpt-4", messages=prompt).usage.prompt_tokens
    assert body["message"] == (
        f"This model's maximum context length is 8192 tokens. However, you requested {prompt_tokens + 8000} "
        f"tokens ({prompt_tokens} in the messages, 8000 in the completion). Please reduce the length of the "
        "messages or completion.")
    fits = table_client.chat.completions.create(model="gpt-4", messages=prompt, max_tokens=8192 - prompt_tokens)
    assert fits.usage is not None and fits.usage.prompt_tokens == prompt_tokens


def test_the_responses_api_enforces_the_window_too(lenient: ServerThread) -> None:
    with _sdk(lenient) as client, pytest.raises(openai.BadRequestError) as over:
        client.responses.create(model="gpt-4o", input="word " * 400)
    assert over.value.code == "context_length_exceeded" and over.value.param == "input"
