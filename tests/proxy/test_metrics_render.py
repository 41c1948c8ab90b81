"""/metrics renders exactly what the stage rendered when it kept prometheus_client Counters and Histograms
(issue 18): same families, HELP/TYPE lines, labels, bucket bounds, sums, counts and sample order."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.exchange import Exchange
from proxy.stages.metrics import BoundedLabel, BudgetGauges, Metrics, route_label
from proxy.wire.usage import Usage

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class Reference:
    """The stage as it was before issue 18, kept as the reference: one prometheus_client child per label set."""

    def __init__(self, budgets: Callable[[], Iterable[dict[str, Any]]] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.models, self.keys = BoundedLabel(), BoundedLabel()
        if budgets is not None:
            self.registry.register(BudgetGauges(budgets))
        self.requests = Counter("oaigate_requests", "Requests handled.", ["endpoint", "status", "model", "key"],
                                registry=self.registry)
        self.latency = Histogram("oaigate_request_latency_seconds", "Latency seen by the client.", ["endpoint"],
                                 registry=self.registry, buckets=LATENCY_BOUNDS)
        self.overhead = Histogram("oaigate_overhead_seconds", "Time spent in the gateway itself.",
                                  registry=self.registry, buckets=OVERHEAD_BOUNDS)
        self.tokens = Counter("oaigate_tokens", "Tokens metered.", ["kind", "model", "key"], registry=self.registry)
        self.cost = Counter("oaigate_cost_usd", "Cost metered, USD.", ["model", "key"], registry=self.registry)
        self.retries = Counter("oaigate_upstream_retries", "Upstream attempts beyond the first.",
                               registry=self.registry)
        self.upstream_errors = Counter("oaigate_upstream_errors", "Upstream failures by status or kind.",
                                       ["status"], registry=self.registry)

    async def finish(self, ex: Exchange) -> None:
        status, route = str(ex.status or 0), route_label(ex.path)
        model, key = self.models(ex.model_served or ex.model), self.keys(ex.principal)
        self.requests.labels(route, status, model, key).inc()
        self.latency.labels(route).observe(ex.elapsed_ms() / 1000)
        self.overhead.observe(ex.overhead_s)
        if ex.attempts > 1:
            self.retries.inc(ex.attempts - 1)
        if ex.error_type is not None and ex.error_type.startswith("upstream"):
            self.upstream_errors.labels(ex.error_type).inc()
        elif ex.status is not None and ex.status >= 500:
            self.upstream_errors.labels(status).inc()
        if ex.usage is None and not ex.cost_micros:
            return
        prompt, completion = self.tokens.labels("prompt", model, key), self.tokens.labels("completion", model, key)
        cost = self.cost.labels(model, key)
        if ex.usage is not None:
            prompt.inc(ex.usage.prompt)
            completion.inc(ex.usage.completion)
        if ex.cost_micros:
            cost.inc(ex.cost_micros / 1_000_000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Spec:
    """What the metrics stage reads of one finished exchange."""

    path: str = "/v1/chat/completions"
    status: int | None = 200
    model: str | None = "gpt-4o-mini"
    served: str | None = None
    key: str | None = "ci"
    latency: float = 0.2
    overhead: float = 0.0003
    attempts: int = 1
    error_type: str | None = None
    usage: Usage | None = None
    cost_micros: int | None = None

    def exchange(self) -> Exchange:
        ex = Exchange("POST", self.path, "", CIMultiDictProxy(CIMultiDict()), b"")
        ex.status, ex.model, ex.model_served, ex.principal = self.status, self.model, self.served, self.key
        ex.started, ex.finished, ex.overhead_s = 0.0, self.latency, self.overhead
        ex.attempts, ex.error_type = self.attempts, self.error_type
        ex.usage, ex.cost_micros = self.usage, self.cost_micros
        return ex


def drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (the stage's `finish`)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise AssertionError("finish suspended")


def budgets() -> list[dict[str, Any]]:
    return [{"scope": "global", "period": "day", "limit_usd": 3, "spent_usd": 0.25, "reserved_usd": 0},
            {"scope": "key:ci", "period": "day", "limit_usd": 0.5, "spent_usd": None, "reserved_usd": 0.001}]


def pair(model_limit: int | None = None) -> tuple[Metrics, Reference]:
    """The stage and the reference, each with the budget gauges and a counter registered after them (as the
    fixtures, cache and fallback stages do)."""
    new, old = Metrics(budgets), Reference(budgets)
    for stage in (new, old):
        Counter("oaigate_fixture_skipped", "Recordings not kept.", ["reason"], registry=stage.registry).labels(
            "incomplete").inc()
        if model_limit is not None:
            stage.models, stage.keys = BoundedLabel(model_limit), BoundedLabel(model_limit)
    return new, old


def edges(bounds: tuple[float, ...]) -> list[float]:
    """Each bound, and the floats just under and just over it."""
    return [x for b in bounds for x in (math.nextafter(b, 0), float(b), math.nextafter(b, math.inf))]


def scripted() -> list[Spec]:
    """Every path through the stage: endpoints, statuses, models past the label bound, usage and cost,
    retries, upstream errors, and durations on and around every bucket bound."""
    specs = [Spec(path="/v1/embeddings", model="text-embedding-3-small", usage=Usage(12), cost_micros=1),
             Spec(path="/v1/files/file-abc/content", model=None, key=None, status=404),
             Spec(path="/v1/files/file-def/content", model=None, key="bob"),
             Spec(path="/v1/responses", model="gpt-4o", served="gpt-4o-2024-08-06", usage=Usage(40, 9),
                  cost_micros=777),
             Spec(usage=Usage(10, 5)),  # usage, no cost
             Spec(key="carol", cost_micros=1_234),  # cost, no usage: the tokens read 0
             Spec(cost_micros=0, usage=None),  # neither: no token or cost series
             Spec(status=None, error_type="client_disconnected", latency=math.inf),
             Spec(status=429, error_type="rate_limited"),
             Spec(status=502, attempts=3, error_type="upstream_status"),
             Spec(status=None, attempts=4, error_type="upstream_timeout"),
             Spec(status=503, error_type="budget_exceeded"),
             Spec(status=500, attempts=0),
             Spec(path="/v1/chat/completions", model="gpt-4o-mini", latency=-0.001, overhead=-1e-6)]
    overheads = edges(OVERHEAD_BOUNDS)
    specs += [Spec(latency=x, overhead=overheads[i % len(overheads)]) for i, x in enumerate(edges(LATENCY_BOUNDS))]
    specs += [Spec(model=f"junk-{i}", key=f"k{i % 7}", usage=Usage(i, 2 * i), cost_micros=i * 13,
                   latency=i / 37, overhead=i / 100_000) for i in range(130)]
    return specs


def test_scripted_exchanges_render_as_before() -> None:
    new, old = pair()
    assert new.render() == old.render()  # nothing seen yet: the unlabelled series read 0
    for spec in scripted():
        drive(new.finish(spec.exchange()))
        drive(old.finish(spec.exchange()))
    text = new.render()
    assert text == old.render()
    lines = text.decode().splitlines()
    # the script reached what it meant to: the label bound, retries, both kinds of upstream error, +Inf
    assert 'oaigate_requests_total{endpoint="/v1/chat/completions",key="k1",model="other",status="200"} 5.0' in lines
    assert "oaigate_upstream_retries_total 5.0" in lines
    assert 'oaigate_upstream_errors_total{status="upstream_timeout"} 1.0' in lines
    assert 'oaigate_upstream_errors_total{status="500"} 1.0' in lines
    assert 'oaigate_tokens_total{key="carol",kind="prompt",model="gpt-4o-mini"} 0.0' in lines
    assert 'oaigate_request_latency_seconds_sum{endpoint="/v1/chat/completions"} +Inf' in lines
    assert lines[-1] == 'oaigate_fixture_skipped_total{reason="incomplete"} 1.0'


def test_a_scrape_changes_nothing() -> None:
    new, old = pair()
    for spec in scripted()[:20]:
        drive(new.finish(spec.exchange()))
        drive(old.finish(spec.exchange()))
    assert new.render() == new.render() == old.render()


def test_names_still_clash_in_the_registry() -> None:
    """Another stage registering a name the metrics stage uses is refused, as before."""
    for stage in pair():
        try:
            Counter("oaigate_requests", "again", registry=stage.registry)
        except ValueError as e:
            assert "Duplicated timeseries" in str(e)
        else:
            raise AssertionError("a duplicate name was accepted")


durations = st.one_of(st.sampled_from(edges(LATENCY_BOUNDS) + edges(OVERHEAD_BOUNDS)),
                      st.floats(min_value=-1, max_value=200), st.just(math.inf), st.just(math.nan))
specs = st.builds(
    Spec,
    path=st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/files/file-1/content",
                          "/v1/files/file-2/content", "/v1/batches/b-1/cancel", "/v1/models"]),
    status=st.one_of(st.none(), st.sampled_from([200, 201, 400, 404, 429, 499, 500, 502, 503, 504])),
    model=st.one_of(st.none(), st.sampled_from(["gpt-4o-mini", "gpt-4o", "a", "b", "c", "d", "e"])),
    served=st.one_of(st.none(), st.sampled_from(["gpt-4o-mini-2024-07-18", "x"])),
    key=st.one_of(st.none(), st.sampled_from(["ci", "alice", "bob", "eve"])),
    latency=durations, overhead=durations,
    attempts=st.integers(0, 5),
    error_type=st.one_of(st.none(), st.sampled_from(["upstream_timeout", "upstream_connect", "upstream_status",
                                                     "rate_limited", "invalid_request"])),
    usage=st.one_of(st.none(), st.builds(Usage, st.integers(0, 10**7), st.integers(0, 10**6))),
    cost_micros=st.one_of(st.none(), st.just(0), st.integers(1, 10**9)),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.one_of(specs, st.just("scrape")), max_size=40), limit=st.integers(1, 6))
def test_any_sequence_renders_as_before(steps: list[Spec | str], limit: int) -> None:
    new, old = pair(model_limit=limit)
    for step in steps:
        if isinstance(step, Spec):
            drive(new.finish(step.exchange()))
            drive(old.finish(step.exchange()))
        else:
            assert new.render() == old.render()
    assert new.render() == old.render()
