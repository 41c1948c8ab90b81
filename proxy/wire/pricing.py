"""Cost of usage in integer micro-dollars, from genai-prices' maintained table plus config overrides.

Money is never a float: genai-prices computes in `Decimal`, and the result is rounded up to
whole micro-dollars (1 USD = 1_000_000).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from .usage import Usage

log = logging.getLogger("oaigate.pricing")
MICROS = Decimal(1_000_000)
_PER_MTOK = Decimal(1_000_000)
BATCH_SHARE = Decimal("0.5")  # the Batch API's discount on an overridden price (OpenAI: "50% off")
_BATCH = {"processing": "batch"}


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """USD per million tokens; `cached_input` defaults to `input`."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        fresh = usage.prompt - usage.cached
        return (fresh * self.input + usage.cached * cached_rate + usage.completion * self.output) / _PER_MTOK


def to_micros(usd: Decimal) -> int:
    """Whole micro-dollars, rounded up: a request that cost anything never records $0, and spend is
    never under-counted (at most 1 micro-dollar over per request)."""
    return int((usd * MICROS).to_integral_value(ROUND_CEILING))


class _GenaiPrice:
    """A model genai-prices prices in a way `PriceOverride` cannot express (tiers): ask it each time."""

    def __init__(self, model: str, provider: str, batch: bool = False) -> None:
        self.model, self.provider, self.batch = model, provider, batch

    def cost(self, usage: Usage) -> Decimal:
        return calc_price(
            PriceUsage(input_tokens=usage.prompt, cache_read_tokens=usage.cached or None,
                       output_tokens=usage.completion),
            model_ref=self.model,
            provider_id=self.provider,
            price_context=_BATCH if self.batch else None,
        ).total_price


class PriceTable:
    """Looks up a model's price: config overrides first, then genai-prices (offline snapshot).

    Flat per-million rates are looked up once per model and applied with `Decimal` arithmetic: a
    full genai-prices calculation costs ~200 us, too much for every request on the hot path.
    """

    def __init__(self, overrides: dict[str, PriceOverride] | None = None, provider: str = "openai",
                 windows: dict[str, int] | None = None) -> None:
        self._prices: dict[str, PriceOverride | _GenaiPrice | None] = dict(overrides or {})
        self._batch_prices: dict[str, PriceOverride | _GenaiPrice | None] = {
            model: PriceOverride(p.input * BATCH_SHARE, p.output * BATCH_SHARE,
                                 None if p.cached_input is None else p.cached_input * BATCH_SHARE)
            for model, p in self._prices.items() if isinstance(p, PriceOverride)}
        self._windows: dict[str, int | None] = dict(windows or {})  # configured ones first
        self._provider = provider

    def cost_micros(self, model: str | None, usage: Usage, *, batch: bool = False) -> int | None:
        """The cost, or None for an unknown model (warned once per model, never raised). `batch`: at
        the Batch API's rates (genai-prices' batch prices; an override is halved, as OpenAI states)."""
        if not model:
            return None
        table = self._batch_prices if batch else self._prices
        if model not in table:
            table[model] = _lookup(model, self._provider, batch)
            if table[model] is None and not batch:
                log.warning("no price known for model %r: its cost is recorded as NULL", model)
        price = table[model]
        return None if price is None else to_micros(price.cost(usage))

    def warm_in_background(self, model: str = "gpt-4o-mini") -> threading.Thread:
        """Have genai-prices read its table (~50 ms, once per process) in a daemon thread now, rather than
        on the event loop when the first request is metered. The table itself is not touched."""
        thread = threading.Thread(target=_lookup, args=(model, self._provider), name="oaigate-prices", daemon=True)
        thread.start()
        return thread

    def context_window(self, model: str | None) -> int | None:
        """The model's context window in tokens: configured, else genai-prices'; None when unknown."""
        if not model:
            return None
        if model not in self._windows:
            try:
                found = calc_price(PriceUsage(input_tokens=1, output_tokens=1), model_ref=model,
                                   provider_id=self._provider)
                self._windows[model] = found.model.context_window
            except LookupError:
                self._windows[model] = None
        return self._windows[model]


def _lookup(model: str, provider: str, batch: bool = False) -> PriceOverride | _GenaiPrice | None:
    try:
        found = calc_price(PriceUsage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=provider,
                           price_context=_BATCH if batch else None)
    except LookupError:
        return None
    rates = found.model_price
    output, cache_read = rates.output_mtok, rates.cache_read_mtok
    if (isinstance(rates.input_mtok, Decimal) and isinstance(output, Decimal | None)
            and isinstance(cache_read, Decimal | None)):
        return PriceOverride(rates.input_mtok, output or Decimal(0), cache_read)
    return _GenaiPrice(model, provider, batch)
