"""Budgets and rate limits end to end: the real SDK through a running gateway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from mockserver.app import make_app as make_mock
from mockserver.settings import MockSettings

from ..servers import ServerThread
from .conftest import CLIENT_KEY, Gateway, fetch

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Tell me about rivers"}],
        "max_tokens": 100}


async def burst(url: str, count: int, body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """`count` requests at once; (status, JSON body) of each."""
    async with aiohttp.ClientSession() as session:
        async def one() -> tuple[int, dict[str, Any]]:
            async with session.post(url + "/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as response:
                return response.status, json.loads(await response.read())

        return await asyncio.gather(*(one() for _ in range(count)))


def test_200_concurrent_requests_never_overspend(gateway: Callable[..., Gateway]) -> None:
    limit_usd = 0.003
    gw = gateway(limits={"budget_usd": limit_usd})
    results = asyncio.run(burst(gw.url, 200, CHAT))
    statuses = [s for s, _ in results]
    refused = [b for s, b in results if s == 429]
    assert statuses.count(200) > 10 and refused, statuses
    assert set(statuses) == {200, 429}
    assert all(b["error"]["type"] == "insufficient_quota" and b["error"]["code"] == "budget_exceeded"
               for b in refused)
    rows = gw.rows(expect=200)
    assert len(rows) == 200
    spent = sum(r["cost_microusd"] or 0 for r in rows)
    assert 0 < spent <= limit_usd * 1_000_000
    status = json.loads(fetch("GET", gw.root + "/oaigate/budgets").body)
    (budget,) = status["budgets"]
    assert budget["scope"] == "global" and budget["reserved_usd"] == "0.000000"
    assert budget["spent_usd"] == f"{spent / 1e6:.6f}"


def test_budget_rejection_is_not_retried_by_the_sdk(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=[{"name": "ci", "key": CLIENT_KEY, "budget_usd": 0.00001}])
    with gw.client(max_retries=3) as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)
    response = caught.value.response
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["scope"] == "key:ci" and error["limit_usd"] == 0.00001 and error["spent_usd"] == 0.0
    assert error["reset_at"].endswith("T00:00:00Z")
    assert "Budget exceeded for key:ci (day)" in error["message"]
    rows = gw.rows(expect=1)
    assert len(rows) == 1 and rows[0]["status"] == 429  # the SDK did not retry


def test_spend_survives_a_restart(gateway: Callable[..., Gateway], tmp_path: Any) -> None:
    db = tmp_path / "shared.db"
    first = gateway(db=db, limits={"budget_usd": 1.0})
    with first.client() as client:
        for _ in range(3):
            client.chat.completions.create(**CHAT)
    spent = sum(r["cost_microusd"] for r in first.rows(expect=3))
    first.stop()
    second = gateway(db=db, limits={"budget_usd": 1.0})
    (budget,) = json.loads(fetch("GET", second.root + "/oaigate/budgets").body)["budgets"]
    assert budget["spent_usd"] == f"{spent / 1e6:.6f}"
    second.stop()
    third = gateway(db=db, limits={"budget_usd": spent / 1e6})
    with third.client() as client, pytest.raises(openai.RateLimitError, match="Budget exceeded"):
        client.chat.completions.create(**CHAT)


def test_default_cap_is_reserved_and_sent_upstream(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(limits={"budget_usd": 1.0, "default_max_tokens": 7})
    with gw.client() as client:
        reply = client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "A long story please"}])
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 7


def test_unknown_price_is_refused_when_a_budget_applies(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(limits={"budget_usd": 1.0}, mock={"models": ["house-model"]})
    with gw.client() as client, pytest.raises(openai.BadRequestError, match="No price is known"):
        client.chat.completions.create(model="house-model", messages=[{"role": "user", "content": "hi"}])


def test_reject_mode_answers_429_with_retry_after_and_headers(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(limits={"rpm": 2, "on_limit": "reject", "adaptive": False})
    with gw.client() as client:
        first = client.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert first.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
        client.chat.completions.create(**CHAT)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**CHAT)
    headers = caught.value.response.headers
    assert 29_000 <= int(headers["retry-after-ms"]) <= 30_000 and headers["retry-after"] == "30"
    assert caught.value.response.json()["error"]["code"] == "rate_limit_exceeded"


def test_tokens_per_minute_counts_the_estimate(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=[{"name": "ci", "key": CLIENT_KEY, "tpm": 150}], limits={"on_limit": "reject", "adaptive": False})
    with gw.client() as client:
        reply = client.chat.completions.with_raw_response.create(**CHAT)
        assert reply.headers["x-ratelimit-limit-tokens"] == "150"
        with pytest.raises(openai.RateLimitError, match="tokens per minute"):
            client.chat.completions.create(**{**CHAT, "max_tokens": 140})


def test_adaptive_mode_avoids_most_upstream_429s(gateway: Callable[..., Gateway]) -> None:
    """The same burst against an upstream limited to 10 requests (refilled 100/s): sent directly, most
    requests are refused; through the gateway, which paces itself by the upstream's headers, few are."""
    settings = MockSettings(rate_limit_requests=10, rate_limit_per_s=100)
    direct = ServerThread(lambda: make_mock(settings)).start()
    try:
        direct_statuses = [s for s, _ in asyncio.run(burst(direct.url + "/v1", 60, CHAT))]
    finally:
        direct.stop()
    upstream = ServerThread(lambda: make_mock(settings)).start()
    try:
        gw = gateway(upstream.url + "/v1", upstream={"max_retries": 3})
        through = [s for s, _ in asyncio.run(burst(gw.url, 60, CHAT))]
        rows = gw.rows(expect=60)
    finally:
        upstream.stop()
    direct_429s = direct_statuses.count(429)
    upstream_429s = sum(r["attempts"] - 1 for r in rows) + sum(r["status"] == 429 for r in rows)
    print(f"direct: {direct_429s} upstream 429s; through oaigate: {upstream_429s}")
    assert direct_429s >= 40
    assert through.count(200) == 60
    assert upstream_429s <= direct_429s // 4
