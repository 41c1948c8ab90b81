"""End to end through `oaigate` in front of the mock: a repeated long prompt prefix comes back with
`cached_tokens` (the mock's prompt caching), the ledger records them, and the request is priced at the
cached input rate of genai-prices' table, so it costs less than the same prompt uncached."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal
from typing import Any

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from .conftest import Gateway

SYSTEM = " ".join(f"Rule {i}: answer politely and cite the handbook section {i}." for i in range(120))


def micros(model: str, prompt: int, cached: int, completion: int) -> int:
    price = calc_price(PriceUsage(input_tokens=prompt, cache_read_tokens=cached or None, output_tokens=completion),
                       model_ref=model, provider_id="openai").total_price
    return int((price * Decimal(1_000_000)).to_integral_value(ROUND_CEILING))


def _messages(question: str) -> list[Any]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_cached_prompt_tokens_are_priced_at_the_cached_rate(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with gw.client() as client:
        first = client.chat.completions.create(model="gpt-4o-mini", messages=_messages("What is rule 3?"))
        second = client.chat.completions.create(model="gpt-4o-mini", messages=_messages("What is rule 3?"))
        streamed = list(client.chat.completions.create(model="gpt-4o-mini", messages=_messages("And rule 4?"),
                                                       stream=True, stream_options={"include_usage": True}))
        responses = [client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input=q)
                     for q in ("Rule 5?", "Rule 6?")]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0
    stream_usage = streamed[-1].usage
    assert stream_usage is not None and stream_usage.prompt_tokens_details is not None
    assert stream_usage.prompt_tokens_details.cached_tokens >= 1024
    assert responses[1].usage is not None and responses[1].usage.input_tokens_details.cached_tokens >= 1024

    rows = gw.rows(expect=5)
    assert [r["cached_tokens"] for r in rows] == [
        0, cached, stream_usage.prompt_tokens_details.cached_tokens, 0,
        responses[1].usage.input_tokens_details.cached_tokens]
    for row in rows:
        assert row["cost_microusd"] == micros("gpt-4o-mini", row["prompt_tokens"], row["cached_tokens"],
                                              row["completion_tokens"])
    uncached, repeated = rows[0], rows[1]
    assert repeated["prompt_tokens"] == uncached["prompt_tokens"]
    assert repeated["completion_tokens"] == uncached["completion_tokens"]
    assert repeated["cost_microusd"] < uncached["cost_microusd"]  # the cached half-price input shows
