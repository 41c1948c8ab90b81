"""OpenAI's usage and costs API answered from the ledger (`/oaigate/v1/organization/...`), called with
the `openai` SDK's raw HTTP client as a tool written for OpenAI's admin API would, checked against
OpenAI's published shapes and against the ledger's own sums."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from proxy.dashboard.usage import FAMILIES
from tests.openapi import requires_spec, validate

from ..conftest import fetch
from .conftest import ADMIN, ALICE, Seeded

DAY = 86400


def pages(base: str, path: str, key: str = ADMIN, **params: Any) -> list[dict[str, Any]]:
    """Every page, following `next_page`; each one checked against OpenAI's `UsageResponse`."""
    found = []
    with openai.OpenAI(base_url=base + "/oaigate/v1", api_key=key, max_retries=0) as client:
        while True:
            body = client.get(path, cast_to=object, options={"params": dict(params)})
            assert isinstance(body, dict)
            validate("UsageResponse", body)
            found.append(body)
            if not body["has_more"]:
                return found
            params["page"] = body["next_page"]


def ledger_sum(gw: Seeded, sql: str, params: list[Any]) -> tuple[Any, ...]:
    conn = sqlite3.connect(gw.gateway.db)
    try:
        return conn.execute(sql, params).fetchone()  # type: ignore[no-any-return]
    finally:
        conn.close()


def iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))


@requires_spec
@pytest.mark.parametrize("kind", ["completions", "embeddings", "moderations"])
@pytest.mark.parametrize(("width", "seconds", "limit"), [("1d", DAY, 3), ("1h", 3600, 50)])
def test_usage_pages_add_up_to_the_ledger(seeded: Callable[..., Seeded], kind: str, width: str, seconds: int,
                                          limit: int) -> None:
    gw = seeded()
    start = int(time.time()) - 7 * DAY
    found = pages(gw.root, f"organization/usage/{kind}", start_time=start, bucket_width=width, limit=limit,
                  group_by=["model", "api_key_id"])
    buckets = [b for page in found for b in page["data"]]
    starts = [b["start_time"] for b in buckets]
    assert starts == sorted(set(starts)) and all(b["end_time"] - b["start_time"] == seconds for b in buckets)
    assert len(found) > 1  # it was paged
    results = [r for b in buckets for r in b["results"]]
    assert results and {r["object"] for r in results} == {f"organization.usage.{kind}.result"}
    first = start - start % seconds
    endpoints = FAMILIES[kind]
    requests, prompt = ledger_sum(gw, "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0) FROM requests WHERE "
                                  f"endpoint IN ({', '.join('?' * len(endpoints))}) AND status BETWEEN 200 AND 399 "
                                  "AND started_at >= ?", [*endpoints, iso(first)])
    assert sum(r["num_model_requests"] for r in results) == requests > 0
    assert sum(r["input_tokens"] for r in results) == prompt
    assert all(r["model"] is not None and r["api_key_id"] in ("alice", "ci", "bob") for r in results)


@requires_spec
def test_one_minute_buckets(seeded: Callable[..., Seeded]) -> None:
    gw = seeded(days=0.05)
    start = int(time.time()) - 2 * 3600
    found = pages(gw.root, "organization/usage/completions", start_time=start, bucket_width="1m", limit=1440)
    buckets = found[0]["data"]
    assert len(buckets) == 121 or len(buckets) == 120
    total = sum(r["num_model_requests"] for b in buckets for r in b["results"])
    assert total == ledger_sum(gw, "SELECT COUNT(*) FROM requests WHERE status BETWEEN 200 AND 399 AND endpoint IN "
                                   "('/v1/chat/completions', '/v1/completions', '/v1/responses')", [])[0]


@requires_spec
def test_costs_are_the_spend_of_oaigate_spend(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    start = int(time.time()) - 10 * DAY
    found = pages(gw.root, "organization/costs", start_time=start, limit=4, group_by="line_item,api_key_id")
    results = [r for page in found for b in page["data"] for r in b["results"]]
    assert {r["object"] for r in results} == {"organization.costs.result"}
    total = fetch("GET", gw.root + f"/oaigate/spend?since={iso(start - start % DAY)}", key=ADMIN)
    import json

    spend = json.loads(total.body)["total"]
    assert round(sum(r["amount"]["value"] for r in results) * 1_000_000) == spend["cost_microusd"]
    assert sum(r["unpriced_requests"] for r in results) == spend["unpriced_requests"]
    assert {r["line_item"] for r in results} >= {"gpt-4o-mini", "my-llama"}
    llama = [r for r in results if r["line_item"] == "my-llama"]
    assert all(r["amount"]["value"] == 0 and r["unpriced_requests"] for r in llama)  # its cost is unknown, said so


@requires_spec
def test_a_key_gets_its_own_usage_only(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    start = int(time.time()) - 7 * DAY
    mine = pages(gw.root, "organization/usage/completions", ALICE, start_time=start, group_by="api_key_id")
    assert {r["api_key_id"] for p in mine for b in p["data"] for r in b["results"]} == {"alice"}
    refused = fetch("GET", gw.root + f"/oaigate/v1/organization/costs?start_time={start}&api_key_ids=ci", key=ALICE)
    assert refused.status == 403


def test_v1_is_still_forwarded_upstream(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    reply = fetch("GET", gw.root + "/v1/organization/costs?start_time=0", key=ADMIN)
    assert b"organization.costs.result" not in reply.body  # the ledger answers only under /oaigate/v1
