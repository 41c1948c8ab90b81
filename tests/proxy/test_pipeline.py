"""`proxy.pipeline`: the stage list a newcomer reads is the one that runs, and no rule hides in its order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

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


def test_run_eagerly_runs_a_coroutine_that_never_waits_on_the_spot() -> None:
    from proxy.pipeline import run_eagerly

    seen: list[str] = []

    async def hooks() -> None:
        seen.append("ran")

    async def main() -> None:
        assert run_eagerly(hooks()) is None
        assert seen == ["ran"]  # before any loop turn

    asyncio.run(main())


def test_run_eagerly_hands_a_waiting_coroutine_to_a_task_that_sees_results_and_errors() -> None:
    from proxy.pipeline import run_eagerly

    seen: list[object] = []

    async def hooks(first: asyncio.Future[int], second: asyncio.Future[int]) -> None:
        seen.append("start")
        seen.append(await first)
        try:
            await second
        except ValueError as exc:
            seen.append(str(exc))
        await asyncio.sleep(0)  # a bare yield
        seen.append("end")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        task = run_eagerly(hooks(first, second))
        assert task is not None and seen == ["start"]
        first.set_result(7)
        await asyncio.sleep(0.01)
        assert seen == ["start", 7] and not task.done()
        second.set_exception(ValueError("boom"))
        await task
        assert seen == ["start", 7, "boom", "end"]

    asyncio.run(main())


def test_cancelling_the_carrying_task_cancels_the_coroutine_where_it_waits() -> None:
    from proxy.pipeline import run_eagerly

    seen: list[str] = []

    async def hooks(never: asyncio.Future[None]) -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        task = run_eagerly(hooks(asyncio.get_running_loop().create_future()))
        assert task is not None
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]

    asyncio.run(main())
