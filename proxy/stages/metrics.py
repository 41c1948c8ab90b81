"""metrics: Prometheus counters and histograms, served as text on `/metrics`."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

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


class Metrics(Stage):
    """One registry per app, so several gateways (in tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("oaigate_requests", "Requests handled.", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("oaigate_request_latency_seconds", "Latency seen by the client.", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.overhead = Histogram("oaigate_overhead_seconds", "Time spent in the gateway itself.",
                                  registry=self.registry,
                                  buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))
        self.tokens = Counter("oaigate_tokens", "Tokens metered.", ["kind"], registry=self.registry)
        self.cost = Counter("oaigate_cost_usd", "Cost metered, USD.", registry=self.registry)
        self.retries = Counter("oaigate_upstream_retries", "Upstream attempts beyond the first.",
                               registry=self.registry)
        self._prompt_tokens, self._completion_tokens = self.tokens.labels("prompt"), self.tokens.labels("completion")
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.upstream_errors = Counter("oaigate_upstream_errors", "Upstream failures by status or kind.",
                                       ["status"], registry=self.registry)

    async def finish(self, ex: Exchange) -> None:
        status, route = str(ex.status or 0), route_label(ex.path)
        series = self._series.get((route, status))
        if series is None:  # label lookups take a lock each: resolve them once per route and status
            series = self._series[route, status] = (self.requests.labels(route, status), self.latency.labels(route))
        series[0].inc()
        series[1].observe(ex.elapsed_ms() / 1000)
        self.overhead.observe(ex.overhead_s)
        if ex.attempts > 1:
            self.retries.inc(ex.attempts - 1)
        if ex.error_type is not None and ex.error_type.startswith("upstream"):
            self.upstream_errors.labels(ex.error_type).inc()
        elif ex.status is not None and ex.status >= 500:
            self.upstream_errors.labels(status).inc()
        if ex.usage is not None:
            self._prompt_tokens.inc(ex.usage.prompt)
            self._completion_tokens.inc(ex.usage.completion)
        if ex.cost_micros:
            self.cost.inc(ex.cost_micros / 1_000_000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
