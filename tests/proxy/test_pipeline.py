"""`proxy.pipeline`: the stage list a newcomer reads is the one that runs, and no rule hides in its order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import proxy.pipeline
import proxy.stages
from proxy.app import PIPELINE
from proxy.exchange import Exchange
from proxy.stages.meter import Meter
from proxy.wire.jsoncodec import dumps
from proxy.wire.pricing import PriceTable

from .conftest import Gateway


def _documented(part: str) -> list[str]:
    """The stage names the module docstring lists under `before` or `after`, in order."""
    doc = proxy.pipeline.__doc__ or ""
    section = re.search(rf"^    {part} \(.*?\n(.*?)(?=^    \S|\Z)", doc, re.M | re.S)
    assert section is not None, f"no '{part}' list in proxy.pipeline's docstring"
    return re.findall(r"^      ([A-Z]\w+)\s", section.group(1), re.M)


def _drawn(part: str) -> list[str]:
    """The stage names the diagram in `proxy.stages` draws on its `request:` or `finish:` line(s)."""
    doc = proxy.stages.__doc__ or ""
    section = re.search(rf"^    {part}:(.*?)(?=^    \S|^$)", doc, re.M | re.S)
    assert section is not None, f"no '{part}:' line in proxy.stages' diagram"
    return re.findall(r"[A-Z]\w+", section.group(1))


def test_the_docstring_lists_the_stages_in_the_order_they_run(gateway: Callable[..., Gateway]) -> None:
    # with [[keys]] and [cache] enabled: the owners and cache stages run too
    gw = gateway(keys=[{"name": "ci", "key": "sk-ci-1"}], cache={"enabled": True})
    pipeline = gw.server.app[PIPELINE]
    assert [type(s).__name__ for s in pipeline.before] == _documented("before")
    assert [type(s).__name__ for s in pipeline.after] == _documented("after")
    assert [type(s).__name__ for s in pipeline.before] == _drawn("request")
    assert [type(s).__name__ for s in pipeline.after] == _drawn("finish")


def _hit(status: int | None) -> Exchange:
    ex = Exchange("POST", "/v1/chat/completions", "", None, b'{"model": "gpt-4o-mini"}')  # type: ignore[arg-type]
    ex.fixture, ex.status = "hit", status
    ex.response_body = dumps({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000,
                                                               "total_tokens": 2000}})
    return ex


def test_a_replay_costs_nothing_by_the_meter_alone() -> None:
    """Budget, metrics and ledger see 0 for a fixture hit whatever runs between meter and them."""
    ex = _hit(200)
    asyncio.run(Meter(PriceTable()).finish(ex))
    assert ex.cost_micros == 0 and ex.replayed_cost_micros is not None and ex.replayed_cost_micros > 0
    live = _hit(200)
    live.fixture = None
    asyncio.run(Meter(PriceTable()).finish(live))
    assert live.cost_micros == ex.replayed_cost_micros and live.replayed_cost_micros is None


def test_a_failed_replay_costs_nothing_either() -> None:
    ex = _hit(None)
    asyncio.run(Meter(PriceTable()).finish(ex))
    assert ex.cost_micros == 0 and ex.replayed_cost_micros is None
