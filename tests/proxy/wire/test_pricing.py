import logging
from decimal import Decimal

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from proxy.wire.pricing import PriceOverride, PriceTable, to_micros
from proxy.wire.usage import Usage


def test_matches_genai_prices_including_cached_input() -> None:
    usage = Usage(prompt=1000, completion=100, cached=200)
    expected = calc_price(PriceUsage(input_tokens=1000, cache_read_tokens=200, output_tokens=100),
                          model_ref="gpt-4o", provider_id="openai").total_price
    assert PriceTable().cost_micros("gpt-4o", usage) == to_micros(expected) == 3250


def test_override_wins_and_defaults_cached_to_input_rate() -> None:
    table = PriceTable({"gpt-4o": PriceOverride(Decimal("1"), Decimal("2"))})
    assert table.cost_micros("gpt-4o", Usage(1_000_000, 500_000, 100_000)) == 2_000_000


def test_unknown_model_is_null_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, "oaigate.pricing"):
        assert table.cost_micros("no-such-model-xyz", Usage(10, 10)) is None
        assert table.cost_micros("no-such-model-xyz", Usage(10, 10)) is None
    assert len([r for r in caplog.records if "no-such-model-xyz" in r.getMessage()]) == 1


def test_embedding_model_has_input_price_only() -> None:
    assert PriceTable().cost_micros("text-embedding-3-small", Usage(1_000_000, 0)) == 20_000


def test_rounding_is_up_to_whole_micros_so_spend_is_never_under_counted() -> None:
    assert to_micros(Decimal("0.0000015")) == 2
    assert to_micros(Decimal("0.0000010001")) == 2
    assert to_micros(Decimal("0.000001")) == 1
    assert to_micros(Decimal("0.0000000001")) == 1  # five embedding tokens cost something, not $0
    assert to_micros(Decimal(0)) == 0
