"""metrics: Prometheus counters and histograms, served as text on `/metrics`.

Requests, tokens and cost carry `model` and `key` labels; each label keeps at most `MAX_LABEL_VALUES`
distinct values (the first seen), later ones count as `other`, so a client sending random model names
cannot blow up a scraper. Budgets are gauges read when scraped: limit, spent and reserved per scope.

Per request the stage only adds to plain numbers (`Tallies`): it runs on the event loop, so it needs no
lock, and a histogram bucket is found by bisection. The numbers become Prometheus families when
scraped, rendering exactly what prometheus_client's own Counter and Histogram would.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..exchange import Exchange
from . import Stage

disable_created_metrics()  # also for the counters other stages register into the same registry

# Path segments that name an operation, not an object; any other segment past the resource is an id.
_OPERATIONS = frozenset({"content", "cancel", "input_items", "messages", "results", "events", "checkpoints",
                         "completions", "parts", "complete", "variations", "edits", "generations",
                         "transcriptions", "translations", "speech"})


@lru_cache(maxsize=1024)
def route_label(path: str) -> str:
    """`/v1/files/file-abc/content` -> `/v1/files/{id}/content`: bounded label values (the usual few
    paths stay cached)."""
    parts = path.split("/")
    return "/".join(p if i < 3 or p in _OPERATIONS else "{id}" for i, p in enumerate(parts))


MAX_LABEL_VALUES = 100
OTHER = "other"


class BoundedLabel:
    """The first `limit` distinct values of a label pass; any later one is `other`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit, self.seen = limit, set[str]()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class BudgetGauges(Collector):
    """`oaigate_budget_{limit,spent,reserved}_usd{scope,period}`, read from the budgets when scraped."""

    def __init__(self, status: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        families = {name: GaugeMetricFamily(f"oaigate_budget_{name}_usd", f"Budget {name}, USD, this period.",
                                            labels=["scope", "period"])
                    for name in ("limit", "spent", "reserved")}
        for budget in self.status():
            for name, family in families.items():
                value = budget.get(f"{name}_usd")
                if value is not None:
                    family.add_metric([budget["scope"], budget["period"]], float(value))
        yield from families.values()


# Histogram bucket upper bounds, seconds; the last is +Inf.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)
OVERHEAD_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, math.inf)


class Buckets:
    """One histogram series: observations per bucket (not cumulated) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum = bounds, [0] * len(bounds), 0.0

    def observe(self, value: float) -> None:
        """Count `value` in the first bucket whose bound is >= it; NaN counts in none but joins the sum."""
        i = bisect_left(self.bounds, value)
        if i or value == value:  # bisect puts NaN first
            self.counts[i] += 1
        self.sum += value

    def cumulated(self) -> list[tuple[str, float]]:
        """(`le`, observations <= le) per bound, as a histogram family takes them."""
        return list(zip(map(floatToGoString, self.bounds), accumulate(self.counts), strict=True))


class Series:
    """Requests of one (endpoint, status, model, key), and the latency histogram of its endpoint."""

    __slots__ = ("requests", "latency")

    def __init__(self, latency: Buckets) -> None:
        self.requests, self.latency = 0.0, latency


class Metered:
    """Tokens and cost of one (model, key)."""

    __slots__ = ("prompt", "completion", "cost")

    def __init__(self) -> None:
        self.prompt = self.completion = self.cost = 0.0


class Tallies(Collector):
    """The stage's numbers, in the order their label sets were first seen; families when scraped."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str, str], Series] = {}
        self.latency: dict[str, Buckets] = {}
        self.overhead = Buckets(OVERHEAD_BOUNDS)
        self.usage: dict[tuple[str, str], Metered] = {}
        self.retries = 0.0
        self.upstream_errors: dict[str, float] = {}

    @staticmethod
    def families() -> tuple[CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily,
                            CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        """requests, latency, overhead, tokens, cost, retries, upstream errors: empty, in /metrics order."""
        return (CounterMetricFamily("oaigate_requests", "Requests handled.",
                                    labels=["endpoint", "status", "model", "key"]),
                HistogramMetricFamily("oaigate_request_latency_seconds", "Latency seen by the client.",
                                      labels=["endpoint"]),
                HistogramMetricFamily("oaigate_overhead_seconds", "Time spent in the gateway itself.", labels=[]),
                CounterMetricFamily("oaigate_tokens", "Tokens metered.", labels=["kind", "model", "key"]),
                CounterMetricFamily("oaigate_cost_usd", "Cost metered, USD.", labels=["model", "key"]),
                CounterMetricFamily("oaigate_upstream_retries", "Upstream attempts beyond the first.", labels=[]),
                CounterMetricFamily("oaigate_upstream_errors", "Upstream failures by status or kind.",
                                    labels=["status"]))

    def describe(self) -> Iterator[Metric]:
        """The names, so the registry still refuses another collector using one of them."""
        return iter(self.families())

    def collect(self) -> Iterator[Metric]:
        requests, latency, overhead, tokens, cost, retries, upstream_errors = families = self.families()
        for labels, series in self.series.items():
            requests.add_metric(labels, series.requests)
        for route, buckets in self.latency.items():
            latency.add_metric([route], buckets.cumulated(), buckets.sum)
        overhead.add_metric([], self.overhead.cumulated(), self.overhead.sum)
        for (model, key), usage in self.usage.items():
            tokens.add_metric(["prompt", model, key], usage.prompt)
            tokens.add_metric(["completion", model, key], usage.completion)
            cost.add_metric([model, key], usage.cost)
        retries.add_metric([], self.retries)
        for status, count in self.upstream_errors.items():
            upstream_errors.add_metric([status], count)
        return iter(families)


class Metrics(Stage):
    """One registry per app, so several gateways (in tests) never share counters."""

    def __init__(self, budgets: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.models, self.keys = BoundedLabel(), BoundedLabel()
        if budgets is not None:
            self.registry.register(BudgetGauges(budgets))
        self.tallies = Tallies()
        self.registry.register(self.tallies)

    async def finish(self, ex: Exchange) -> None:
        status, route = str(ex.status or 0), route_label(ex.path)
        model, key = self.models(ex.model_served or ex.model), self.keys(ex.principal)
        tallies = self.tallies
        series = tallies.series.get((route, status, model, key))
        if series is None:
            latency = tallies.latency.get(route)
            if latency is None:
                latency = tallies.latency[route] = Buckets(LATENCY_BOUNDS)
            series = tallies.series[route, status, model, key] = Series(latency)
        series.requests += 1
        series.latency.observe(ex.elapsed_ms() / 1000)
        tallies.overhead.observe(ex.overhead_s)
        if ex.attempts > 1:
            tallies.retries += ex.attempts - 1
        if ex.error_type is not None and ex.error_type.startswith("upstream"):
            failure: str | None = ex.error_type
        else:
            failure = status if ex.status is not None and ex.status >= 500 else None
        if failure is not None:
            tallies.upstream_errors[failure] = tallies.upstream_errors.get(failure, 0.0) + 1
        if ex.usage is None and not ex.cost_micros:
            return
        usage = tallies.usage.get((model, key))
        if usage is None:
            usage = tallies.usage[model, key] = Metered()
        if ex.usage is not None:
            usage.prompt += ex.usage.prompt
            usage.completion += ex.usage.completion
        if ex.cost_micros:
            usage.cost += ex.cost_micros / 1_000_000

    def render(self) -> bytes:
        return generate_latest(self.registry)
