"""A background Responses request answers `queued` with no usage: it stays reserved until it is seen
ended, then is charged once for its real usage; the same after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.wire.pricing import PriceTable
from proxy.wire.usage import Usage

from .conftest import Gateway, fetch

KEY = "sk-bg-77"
USAGE = {"input_tokens": 1_000, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2_000,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 3_000}


def background_upstream() -> web.Application:
    """POST answers `queued`; each GET moves the response along: in_progress, then completed."""
    seen: dict[str, int] = {}

    def card(response_id: str, status: str) -> dict[str, Any]:
        return {"id": response_id, "object": "response", "status": status, "model": "gpt-4o-mini", "output": [],
                "background": True, "usage": USAGE if status == "completed" else None}

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        response_id = f"resp_bg{len(seen)}"
        seen[response_id] = 0
        assert body["background"] is True
        return web.json_response(card(response_id, "queued"))

    async def retrieve(request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        seen[response_id] += 1
        return web.json_response(card(response_id, "in_progress" if seen[response_id] == 1 else "completed"))

    app = web.Application()
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{id}", retrieve)
    return app


def budget_of(root: str) -> dict[str, Any]:
    (budget,) = json.loads(fetch("GET", root + "/oaigate/budgets", key=KEY).body)["budgets"]
    return budget


def test_a_background_response_is_reserved_until_it_ends_then_charged_once(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any], tmp_path: Path) -> None:
    base = upstream(background_upstream()).url + "/v1"
    db, keys = tmp_path / "bg.db", [{"name": "bg", "key": KEY, "budget_usd": 0.01}]
    gw = gateway(base, keys=keys, db=db)
    reply = fetch("POST", gw.url + "/responses", key=KEY,
                  json={"model": "gpt-4o-mini", "input": "write a long essay", "background": True,
                        "max_output_tokens": 3000})
    assert reply.status == 200
    response_id = json.loads(reply.body)["id"]
    gw.rows(expect=1)
    held = budget_of(gw.root)
    assert float(held["reserved_usd"]) > 0 and held["spent_usd"] == "0.000000"
    assert json.loads(fetch("GET", gw.url + f"/responses/{response_id}", key=KEY).body)["status"] == "in_progress"
    gw.rows(expect=2)
    assert budget_of(gw.root)["reserved_usd"] == held["reserved_usd"]
    for _ in range(3):
        fetch("GET", gw.url + f"/responses/{response_id}", key=KEY)
    rows = gw.rows(expect=6)
    cost = PriceTable().cost_micros("gpt-4o-mini", Usage(1_000, 2_000))
    assert [(r["method"], r["object_id"], r["cost_microusd"]) for r in rows if r["cost_microusd"]] == \
        [("SETTLE", response_id, cost)]
    assert rows[0]["usage_source"] == "pending"
    live = budget_of(gw.root)
    assert live["reserved_usd"] == "0.000000" and live["spent_usd"] == f"{cost / 1e6:.6f}"
    gw.stop()
    rebuilt = budget_of(gateway(base, keys=keys, db=db).root)
    assert (rebuilt["spent_usd"], rebuilt["spent_tokens"]) == (live["spent_usd"], live["spent_tokens"]) \
        == (f"{cost / 1e6:.6f}", 3_000)
