"""A background Responses request answers `queued` with no usage: it stays reserved until it is seen
ended, then is charged once for its real usage; the same after a restart."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.clock import Clock
from proxy.stages.budget import BudgetBook, BudgetRule
from proxy.stages.forward import Upstream
from proxy.stages.pending import Pending, PendingResponses
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

    async def create(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response_id = f"resp_bg{len(seen)}"
        seen[response_id] = 0
        assert body["background"] is True
        if not body.get("stream"):
            return web.json_response(card(response_id, "queued"))
        # streamed: it goes on upstream (and is billed in full) whether or not the client stays
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        events = [{"type": "response.created", "response": card(response_id, "queued")},
                  {"type": "response.in_progress", "response": card(response_id, "in_progress")}]
        events += [{"type": "response.output_text.delta", "delta": "dragons "}] * 100
        try:
            for event in events:
                await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return reply

    async def retrieve(request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        if response_id not in seen:
            return web.json_response({"error": {"message": "not found", "type": "invalid_request_error"}}, status=404)
        seen[response_id] += 1
        return web.json_response(card(response_id, "in_progress" if seen[response_id] == 1 else "completed"))

    async def delete(request: web.Request) -> web.Response:
        seen.pop(request.match_info["id"], None)
        return web.json_response({"id": request.match_info["id"], "object": "response.deleted", "deleted": True})

    app = web.Application()
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{id}", retrieve)
    app.router.add_delete("/v1/responses/{id}", delete)
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


BACKGROUND = {"model": "gpt-4o-mini", "input": "write a long essay", "background": True, "max_output_tokens": 3000}
FULL_COST = PriceTable().cost_micros("gpt-4o-mini", Usage(1_000, 2_000))


def read_first_delta_then_leave(url: str) -> str:
    """A streamed background request whose client disconnects after the first delta; the response id."""
    async def go() -> str:
        async with aiohttp.ClientSession() as session, session.post(
                url + "/responses", headers={"Authorization": f"Bearer {KEY}"},
                json={**BACKGROUND, "stream": True}) as reply:
            assert reply.status == 200
            seen = b""
            async for chunk in reply.content.iter_any():
                seen += chunk
                if b"response.output_text.delta" in seen:
                    break
            first = seen.split(b"\n\n")[0].split(b"data: ", 1)[1]
            return json.loads(first)["response"]["id"]

    return asyncio.run(go())


def test_a_streamed_background_response_cut_by_its_client_is_charged_in_full_when_it_ends(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any], tmp_path: Path) -> None:
    base = upstream(background_upstream()).url + "/v1"
    gw = gateway(base, keys=[{"name": "bg", "key": KEY, "budget_usd": 0.01}])
    response_id = read_first_delta_then_leave(gw.url)
    (row,) = gw.rows(expect=1)
    assert (row["usage_source"], row["cost_microusd"], row["object_id"]) == ("pending", None, response_id)
    held = budget_of(gw.root)
    assert float(held["reserved_usd"]) > 0 and held["spent_usd"] == "0.000000"
    for _ in range(2):  # in_progress, then completed: charged for all of it, not for the deltas relayed
        fetch("GET", gw.url + f"/responses/{response_id}", key=KEY)
    rows = gw.rows(expect=3)
    assert [(r["method"], r["cost_microusd"]) for r in rows if r["cost_microusd"]] == [("SETTLE", FULL_COST)]
    live = budget_of(gw.root)
    assert (live["reserved_usd"], live["spent_usd"]) == ("0.000000", f"{FULL_COST / 1e6:.6f}")


def test_a_background_response_deleted_before_the_poll_is_charged_its_reservation(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any], tmp_path: Path) -> None:
    server = upstream(background_upstream())
    gw = gateway(server.url + "/v1", keys=[{"name": "bg", "key": KEY, "budget_usd": 0.01}],
                 limits={"batch_poll_s": 0.2})
    response_id = json.loads(fetch("POST", gw.url + "/responses", key=KEY, json=BACKGROUND).body)["id"]
    reserved = budget_of(gw.root)["reserved_usd"]
    assert float(reserved) > 0
    fetch("DELETE", server.url + f"/v1/responses/{response_id}", key=None)  # gone before the poll sees it end
    rows = gw.rows(expect=2)
    settle = rows[-1]
    assert (settle["method"], settle["object_id"], settle["usage_source"]) == ("SETTLE", response_id, "reserved")
    assert settle["cost_microusd"] == round(float(reserved) * 1e6) > 0
    live = budget_of(gw.root)
    assert (live["reserved_usd"], live["spent_usd"]) == ("0.000000", reserved)


def test_a_background_response_is_polled_on_the_upstream_that_serves_it(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any], echo: str) -> None:
    routed = upstream(background_upstream()).url + "/v1"
    gw = gateway(echo, keys=[{"name": "bg", "key": KEY, "budget_usd": 0.01}], limits={"batch_poll_s": 0.2},
                 routes=[{"model": "gpt-4o-mini", "base_url": routed, "name": "routed"}])
    response_id = json.loads(fetch("POST", gw.url + "/responses", key=KEY, json=BACKGROUND).body)["id"]
    deadline = time.monotonic() + 10
    while budget_of(gw.root)["reserved_usd"] != "0.000000" and time.monotonic() < deadline:
        time.sleep(0.05)
    settle = gw.rows(expect=2)[-1]
    assert (settle["method"], settle["object_id"], settle["upstream"]) == ("SETTLE", response_id, "routed")
    assert (settle["usage_source"], settle["cost_microusd"]) == ("reported", FULL_COST)


def test_a_background_response_the_poll_cannot_see_is_charged_its_reservation_after_a_bound(
        upstream: Callable[..., Any]) -> None:
    """An upstream that keeps failing: after `max_failures` polls in a row, the worst case, never $0."""
    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "down"}}, status=503)

    app = web.Application()
    app.router.add_get("/v1/responses/{id}", broken)
    base = upstream(app).url + "/v1"

    class Writer:
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def submit(self, row: dict[str, Any]) -> None:
            self.rows.append(row)

    writer = Writer()

    async def go() -> None:
        book = BudgetBook([BudgetRule(None, None, 1_000_000, None, "total")], Clock())
        worst = Usage(1_000, 2_000)
        micros = PriceTable().cost_micros("gpt-4o-mini", worst)
        async with aiohttp.ClientSession() as session:
            pending = PendingResponses(book, PriceTable(), session, Upstream("down", base), writer,  # type: ignore[arg-type]
                                       Clock(), max_failures=3)
            pending.open["resp_x"] = Pending("k", "gpt-4o-mini", book.reserve("k", "gpt-4o-mini", micros, 3_000),
                                             None, worst, micros)
            for _ in range(2):
                await pending.poll_once()
            assert "resp_x" in pending.open and writer.rows == []
            await pending.poll_once()
        assert pending.open == {}
        (row,) = writer.rows
        assert (row["method"], row["usage_source"], row["cost_microusd"], row["prompt_tokens"],
                row["completion_tokens"]) == ("SETTLE", "reserved", micros, 1_000, 2_000)
        (account,) = book.status()
        assert (account["reserved_usd"], account["spent_usd"]) == ("0.000000", f"{micros / 1e6:.6f}")

    asyncio.run(go())


def test_a_background_stream_cut_before_its_id_is_charged_its_reservation(
        gateway: Callable[..., Gateway], upstream: Callable[..., Any]) -> None:
    """No id was seen, so it can never be looked up: its worst case is charged at once, not what was relayed."""
    async def create(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        event = {"type": "response.output_text.delta", "delta": "dragons "}
        try:
            for _ in range(100):
                await reply.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        return reply

    app = web.Application()
    app.router.add_post("/v1/responses", create)
    gw = gateway(upstream(app).url + "/v1", keys=[{"name": "bg", "key": KEY, "budget_usd": 0.01}])

    async def go() -> None:
        async with aiohttp.ClientSession() as session, session.post(
                gw.url + "/responses", headers={"Authorization": f"Bearer {KEY}"},
                json={**BACKGROUND, "stream": True}) as reply:
            assert reply.status == 200
            await reply.content.readuntil(b"\n\n")

    asyncio.run(go())
    (row,) = gw.rows(expect=1)
    assert row["usage_source"] == "reserved" and row["completion_tokens"] == 3_000
    live = budget_of(gw.root)
    assert live["reserved_usd"] == "0.000000" and live["spent_usd"] == f"{row['cost_microusd'] / 1e6:.6f}"
    assert row["cost_microusd"] > PriceTable().cost_micros("gpt-4o-mini", Usage(row["prompt_tokens"], 10))
