"""Prompt caching, predicted outputs, `service_tier` and `system_fingerprint`, end to end with the SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.mockserver.engine.test_control import advance
from tests.servers import ServerThread

# A system prompt well past 1,024 tokens, as an agent's instructions are.
SYSTEM = " ".join(f"Rule {i}: answer politely and cite the handbook section {i}." for i in range(120))


@pytest.fixture
def fresh() -> Iterator[ServerThread]:
    running = ServerThread(lambda: make_app(MockSettings())).start()
    yield running
    running.stop()


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


def _ask(client: openai.OpenAI, question: str, **extra: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], **extra)


def test_a_long_prefix_sent_again_is_cached_in_128_token_steps(fresh: ServerThread) -> None:
    with _sdk(fresh) as client:
        first = _ask(client, "What is rule 3?")
        assert first.usage.prompt_tokens > 1024 and first.usage.prompt_tokens_details.cached_tokens == 0
        second = _ask(client, "And what is rule 7?")  # same system prompt, another question
        cached = second.usage.prompt_tokens_details.cached_tokens
        assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens
        assert second.usage.prompt_tokens - cached < 128 + 20  # all but the differing tail
        advance(fresh, 301)  # past five minutes of virtual time: evicted
        assert _ask(client, "And rule 9?").usage.prompt_tokens_details.cached_tokens == 0
        responses = client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input="Rule 1?")
        again = client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input="Rule 2?")
        assert responses.usage is not None and again.usage is not None
        assert responses.usage.input_tokens_details.cached_tokens == 0
        assert again.usage.input_tokens_details.cached_tokens >= 1024


def test_short_prompts_and_other_models_are_never_cached(fresh: ServerThread) -> None:
    with _sdk(fresh) as client:
        for _ in range(2):
            short = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
            assert short.usage is not None and short.usage.prompt_tokens_details is not None
            assert short.usage.prompt_tokens_details.cached_tokens == 0
        _ask(client, "Rule 1?")
        other = client.chat.completions.create(model="gpt-4o", messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Rule 1?"}])
        assert other.usage is not None and other.usage.prompt_tokens_details is not None
        assert other.usage.prompt_tokens_details.cached_tokens == 0


def test_caching_can_be_turned_off() -> None:
    server = ServerThread(lambda: make_app(MockSettings(prompt_caching=False))).start()
    try:
        with _sdk(server) as client:
            _ask(client, "Rule 1?")
            assert _ask(client, "Rule 1?").usage.prompt_tokens_details.cached_tokens == 0
    finally:
        server.stop()


def test_predicted_outputs_report_accepted_and_rejected_tokens(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Describe tides"}])
    text = plain.choices[0].message.content or ""
    guess = text + " zebra xylophone quasar"
    predicted = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Describe tides"}],
                                               prediction={"type": "content", "content": guess})
    details = predicted.usage.completion_tokens_details
    assert predicted.choices[0].message.content == text
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens > 0
    assert predicted.usage.completion_tokens == plain.usage.completion_tokens + details.rejected_prediction_tokens


@pytest.mark.parametrize("asked, served", [(None, "default"), ("auto", "default"), ("flex", "flex"),
                                           ("priority", "priority")])
def test_service_tier_is_echoed_as_openai_does(client: openai.OpenAI, asked: Any, served: str) -> None:
    extra = {} if asked is None else {"service_tier": asked}
    made = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], **extra)
    assert made.service_tier == served
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, **extra))
    assert {c.service_tier for c in chunks} == {served}


def test_seed_and_system_fingerprint(client: openai.OpenAI) -> None:
    ask: Any = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Pick a colour"}]}
    one, two = (client.chat.completions.create(**ask, seed=7) for _ in range(2))
    other = client.chat.completions.create(**ask, seed=8)
    assert one.choices[0].message.content == two.choices[0].message.content
    assert one.system_fingerprint == other.system_fingerprint and one.system_fingerprint.startswith("fp_")
    assert other.choices[0].message.content != one.choices[0].message.content


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_with_caching_the_same_sequence_gives_the_same_usage(seed: int) -> None:
    def run() -> list[int]:
        server = ServerThread(lambda: make_app(MockSettings(seed=seed))).start()
        try:
            with _sdk(server) as client:
                return [_ask(client, q).usage.prompt_tokens_details.cached_tokens for q in ("Rule 1?", "Rule 2?")]
        finally:
            server.stop()

    assert run() == run()


def test_reasoning_effort_scales_reasoning_tokens_not_the_answer(client: openai.OpenAI) -> None:
    def ask(effort: Any) -> Any:
        return client.chat.completions.create(model="o4-mini", reasoning_effort=effort,
                                              messages=[{"role": "user", "content": "Plan a trip"}])

    low, high = ask("low"), ask("high")
    assert low.choices[0].message.content == high.choices[0].message.content
    thought = [r.usage.completion_tokens_details.reasoning_tokens for r in (low, high)]
    assert thought[1] == 4 * thought[0]
    assert ask("minimal").usage.completion_tokens_details.reasoning_tokens > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o", reasoning_effort="low",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "reasoning_effort"
    with pytest.raises(openai.BadRequestError) as max_tokens:
        client.chat.completions.create(model="gpt-5.4", max_tokens=50, messages=[{"role": "user", "content": "Hi"}])
    assert max_tokens.value.param == "max_tokens"
