"""metrics: Prometheus counters and histograms, served as text on `/metrics`.

Requests, tokens and cost carry `model` and `key` labels; each label keeps at most `MAX_LABEL_VALUES`
distinct values (the first seen), later ones count as `other`, so a client sending random model names
cannot blow up a scraper. Budgets are gauges read when scraped: limit, spent and reserved per scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..exchange import Exchange
from . import Stage

disable_created_metrics()

# Path segments that name an operation, not an object; any other segment past the resource is an id.
_OPERATIONS = frozenset({"content", "cancel", "input_items", "messages", "results", "events", "checkpoints",
                         "completions", "parts", "complete", "variations", "edits", "generations",
                         "transcriptions", "translations", "speech"})


def route_label(path: str) -> str:
    """`/v1/files/file-abc/content` -> `/v1/files/{id}/content`: bounded label values."""
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


class Metrics(Stage):
    """One registry per app, so several gateways (in tests) never share counters."""

    def __init__(self, budgets: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.models, self.keys = BoundedLabel(), BoundedLabel()
        if budgets is not None:
            self.registry.register(BudgetGauges(budgets))
        self.requests = Counter("oaigate_requests", "Requests handled.", ["endpoint", "status", "model", "key"],
                                registry=self.registry)
        self.latency = Histogram("oaigate_request_latency_seconds", "Latency seen by the client.", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.overhead = Histogram("oaigate_overhead_seconds", "Time spent in the gateway itself.",
                                  registry=self.registry,
                                  buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))
        self.tokens = Counter("oaigate_tokens", "Tokens metered.", ["kind", "model", "key"], registry=self.registry)
        self.cost = Counter("oaigate_cost_usd", "Cost metered, USD.", ["model", "key"], registry=self.registry)
        self.retries = Counter("oaigate_upstream_retries", "Upstream attempts beyond the first.",
                               registry=self.registry)
        self._series: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._usage: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.upstream_errors = Counter("oaigate_upstream_errors", "Upstream failures by status or kind.",
                                       ["status"], registry=self.registry)

    async def finish(self, ex: Exchange) -> None:
        status, route = str(ex.status or 0), route_label(ex.path)
        model, key = self.models(ex.model_served or ex.model), self.keys(ex.principal)
        series = self._series.get((route, status, model, key))
        if series is None:  # label lookups take a lock each: resolve them once per label set
            series = self._series[route, status, model, key] = (self.requests.labels(route, status, model, key),
                                                                 self.latency.labels(route))
        series[0].inc()
        series[1].observe(ex.elapsed_ms() / 1000)
        self.overhead.observe(ex.overhead_s)
        if ex.attempts > 1:
            self.retries.inc(ex.attempts - 1)
        if ex.error_type is not None and ex.error_type.startswith("upstream"):
            self.upstream_errors.labels(ex.error_type).inc()
        elif ex.status is not None and ex.status >= 500:
            self.upstream_errors.labels(status).inc()
        if ex.usage is None and not ex.cost_micros:
            return
        usage = self._usage.get((model, key))
        if usage is None:
            usage = self._usage[model, key] = (self.tokens.labels("prompt", model, key),
                                               self.tokens.labels("completion", model, key),
                                               self.cost.labels(model, key))
        if ex.usage is not None:
            usage[0].inc(ex.usage.prompt)
            usage[1].inc(ex.usage.completion)
        if ex.cost_micros:
            usage[2].inc(ex.cost_micros / 1_000_000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
