"""Property (issue 15): random interleavings of concurrent requests across endpoints on a budgeted key
never spend more than the budget plus one request's worst case (summed from the ledger), and the live
budget equals the one a new gateway rebuilds from the same ledger."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire.pricing import PriceTable
from proxy.wire.usage import Usage

from .conftest import Gateway, fetch

KEY = "sk-prop-4c2d"
BUDGET_USD = 0.0008
MODEL, INSTRUCT = "gpt-4o-mini", "gpt-3.5-turbo-instruct"

op = st.one_of(
    st.tuples(st.just("chat"), st.integers(1, 300)),
    st.tuples(st.just("completions"), st.integers(1, 12)),  # prompts in the list
    st.tuples(st.just("responses"), st.integers(0, 5)),  # which earlier response to chain on (0: none)
    st.tuples(st.just("batch"), st.integers(1, 6)),  # lines
    st.tuples(st.just("get"), st.integers(0, 5)),
)
waves = st.lists(st.lists(op, min_size=1, max_size=6), min_size=1, max_size=4)


def worst_single() -> int:
    """An upper bound of one request's worst case here: the biggest request the strategy makes, priced
    at full rates with generous token counts."""
    prices = PriceTable()
    return max(prices.cost_micros(MODEL, Usage(2_000, 300)),
               prices.cost_micros(INSTRUCT, Usage(12 * 20, 12 * 30)),
               prices.cost_micros(MODEL, Usage(6 * 30 + 2_000, 6 * 20)))


async def run(url: str, plan: list[list[tuple[str, int]]]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    responses: list[str] = []
    chats: list[str] = []
    counter = itertools.count()
    async with aiohttp.ClientSession(headers=headers) as session:
        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(url + path, json=body) as reply:
                return json.loads(await reply.read()) if reply.status == 200 else {}

        async def one(kind: str, arg: int) -> None:
            n = next(counter)
            if kind == "chat":
                made = await post("/chat/completions", {"model": MODEL, "max_tokens": arg, "store": True,
                                                         "messages": [{"role": "user", "content": f"rivers {n}"}]})
                if made.get("id"):
                    chats.append(made["id"])
            elif kind == "completions":
                await post("/completions", {"model": INSTRUCT, "max_tokens": 30, "n": 1,
                                            "prompt": [f"Say something {n} {i}" for i in range(arg)]})
            elif kind == "responses":
                body: dict[str, Any] = {"model": MODEL, "input": f"lakes {n}", "max_output_tokens": 60}
                if arg and len(responses) >= arg:
                    body["previous_response_id"] = responses[-arg]
                made = await post("/responses", body)
                if made.get("id"):
                    responses.append(made["id"])
            elif kind == "batch":
                lines = b"".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                             "body": {"model": MODEL, "max_tokens": 20, "messages": [
                                                 {"role": "user", "content": f"batch {n} {i}"}]}}).encode() + b"\n"
                                 for i in range(arg))
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", lines, filename="in.jsonl")
                async with session.post(url + "/files", data=form) as reply:
                    upload = json.loads(await reply.read())
                made = await post("/batches", {"input_file_id": upload["id"], "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"})
                if made.get("id"):
                    async with session.get(url + f"/batches/{made['id']}") as reply:
                        await reply.read()
            else:
                for path, ids in (("/responses/", responses), ("/chat/completions/", chats)):
                    if ids:
                        async with session.get(url + path + ids[arg % len(ids)]) as reply:
                            await reply.read()

        for wave in plan:
            await asyncio.gather(*(one(kind, arg) for kind, arg in wave))


def budget_of(root: str) -> dict[str, Any]:
    (budget,) = json.loads(fetch("GET", root + "/oaigate/budgets", key=KEY).body)["budgets"]
    return budget


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=waves)
def test_random_workloads_never_overspend_and_restart_to_the_same_budget(
        gateway: Callable[..., Gateway], tmp_path: Path, plan: list[list[tuple[str, int]]]) -> None:
    db = tmp_path / f"prop-{next(_examples)}.db"
    keys = [{"name": "prop", "key": KEY, "budget_usd": BUDGET_USD}]
    gw = gateway(keys=keys, db=db)
    try:
        asyncio.run(run(gw.url, plan))
        rows = gw.rows()
        live = budget_of(gw.root)
    finally:
        gw.stop()
    spent = sum(r["cost_microusd"] or 0 for r in rows)
    assert spent <= BUDGET_USD * 1e6 + worst_single(), (spent, plan)
    assert live["spent_usd"] == f"{spent / 1e6:.6f}"
    again = gateway(keys=keys, db=db)
    try:
        rebuilt = budget_of(again.root)
    finally:
        again.stop()
    assert (rebuilt["spent_usd"], rebuilt["spent_tokens"]) == (live["spent_usd"], live["spent_tokens"])


_examples = itertools.count()
