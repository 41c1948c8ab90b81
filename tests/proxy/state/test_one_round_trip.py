"""Admission and settlement on Redis cost one round trip each: the budget's reservation goes out with
the rate limit's admission in one script, decided first (a refused budget takes no rate-limit slot;
a refused admission keeps nothing of the budget once the request is finished)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from ...redis_server import RedisServer
from ..conftest import Gateway
from .test_shared_gateways import CHAT, PRICES, redis_spent

LIMITS = {"budget_usd": 1.0, "rpm": 1000, "tpm": 1_000_000, "concurrent": 8}


def round_trips(gw: Gateway) -> int:
    state = gw.healthz()["state"]
    assert state["mode"] == "shared"
    return int(state["round_trips"])


def evalsha_calls(server: RedisServer) -> int:
    return int(server.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def settled(server: RedisServer, gw: Gateway, before: int, expect: int) -> int:
    """The round trips since `before` once the finish hooks' calls went out (bounded wait)."""
    gw.settle()
    redis_spent(server)  # nothing reserved any more
    deadline = time.monotonic() + 5
    while round_trips(gw) - before < expect and time.monotonic() < deadline:
        time.sleep(0.01)
    return round_trips(gw) - before


@pytest.mark.parametrize("stream", [False, True])
def test_a_budgeted_rate_limited_request_costs_two_round_trips(
        gateway: Callable[..., Gateway], redis_server: RedisServer, stream: bool) -> None:
    gw = gateway(limits=LIMITS, prices=PRICES, state={"url": redis_server.url, "timeout_s": 10})
    with gw.client() as client:
        client.chat.completions.create(**CHAT)  # warm: the ledger's spend offered, scripts loaded
        settled(redis_server, gw, 0, 0)
        before, calls = round_trips(gw), evalsha_calls(redis_server)
        if stream:
            assert "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                **CHAT, stream=True) if c.choices)
        else:
            assert client.chat.completions.create(**CHAT).choices[0].message.content
        # admission: reserve + admit in one script; finish: settle + release in one pipeline
        assert settled(redis_server, gw, before, 2) == 2
        assert evalsha_calls(redis_server) - calls == 3


def test_a_refused_budget_takes_no_rate_limit_slot_and_a_refused_admission_no_budget(
        gateway: Callable[..., Gateway], redis_server: RedisServer) -> None:
    # $1 per 10,000 tokens: 0.01 USD pays for ~100 tokens; max_tokens 1000 cannot fit
    gw = gateway(limits={"budget_usd": 0.01, "rpm": 1, "on_limit": "reject"}, prices=PRICES,
                 state={"url": redis_server.url, "timeout_s": 10})
    with gw.client() as client:
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**{**CHAT, "max_tokens": 1000})
        assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "insufficient_quota"
        assert redis_spent(redis_server) == 0
        served = client.chat.completions.create(**CHAT)  # the one request per minute is still there
        assert served.usage is not None
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(**CHAT)
        body: Any = limited.value.body
        assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    gw.settle()
    cost = sum(row["cost_microusd"] or 0 for row in gw.rows())
    assert cost > 0
    assert redis_spent(redis_server, cost) == cost  # the rate-limited request's reservation is gone
