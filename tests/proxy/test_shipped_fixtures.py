"""The fixtures shipped in fixtures/examples, replayed through the pytest plugin's gateway.

They were recorded with this file's own tests (`pytest tests/proxy/test_shipped_fixtures.py
--oaigate-record --oaigate-upstream mock`): from oaigate's mock, since this machine has no network.
Recording from the real API is the same command without `--oaigate-upstream` and with OPENAI_API_KEY.
Replaying them here proves the whole path a user's CI takes: files committed to git, read back,
matched, and answered byte for byte, with nothing upstream.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from proxy.wire.fixtures import Fixture

pytestmark = pytest.mark.oaigate_cassette("examples")

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


class Capital(BaseModel):
    country: str
    capital: str


def test_chat(openai_client: openai.OpenAI, request: pytest.FixtureRequest) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Explain photosynthesis in one paragraph."}])
    if not request.config.getoption("--oaigate-record"):
        assert raw.headers["x-oaigate-fixture"] == "hit"
    reply = raw.parse()
    assert "photosynthesis" in reply.choices[0].message.content.lower()
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_streamed_chat_with_usage(openai_client: openai.OpenAI) -> None:
    chunks = list(openai_client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Give me three tips for sourdough bread."}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "sourdough" in text.lower()
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_tool_call(openai_client: openai.OpenAI) -> None:
    reply = openai_client.chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "What's the weather in Lisbon?"}],
        tools=[WEATHER_TOOL], tool_choice="required")
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Lisbon"


def test_structured_output(openai_client: openai.OpenAI) -> None:
    reply = openai_client.chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is the capital of Portugal?"}],
        response_format=Capital)
    assert isinstance(reply.choices[0].message.parsed, Capital)


def test_embeddings(openai_client: openai.OpenAI) -> None:
    reply = openai_client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog"])
    assert [len(d.embedding) for d in reply.data] == [1536, 1536]


async def _responses(client: openai.AsyncOpenAI) -> str:
    response = await client.responses.create(model="gpt-4o-mini", input="Name a famous bridge.")
    return response.output_text


def test_responses_api_async(async_openai_client: openai.AsyncOpenAI) -> None:
    import asyncio

    assert "bridge" in asyncio.run(_responses(async_openai_client)).lower()


def test_an_unrecorded_request_is_a_clear_miss(openai_client: openai.OpenAI, request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--oaigate-record"):
        pytest.skip("recording would record it")
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Explain photosynthesis in two paragraphs."}])
    assert caught.value.code == "fixture_not_found"
    assert "one paragraph" in str(caught.value) and "two paragraphs" in str(caught.value)


def test_the_shipped_files_are_readable_and_hold_no_secret(oaigate_cassette: Path) -> None:
    files = sorted(oaigate_cassette.glob("*.json"))
    assert len(files) >= 6
    for file in files:
        text = file.read_text(encoding="utf-8")
        Fixture.loads(text)
        assert "sk-" not in text and "Bearer" not in text
