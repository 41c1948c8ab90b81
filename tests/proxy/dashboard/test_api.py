"""The dashboard's JSON through a running gateway: the same numbers as `oaigate spend`, each key's own rows
only, OpenAI's 401 envelope without a valid key, cursor pages, filters, and clear 400s for bad input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from proxy.cli import cli

from ..conftest import fetch, hold_ledger
from .conftest import ADMIN, ALICE, CI, Seeded

PATHS = ["/oaigate/spend", "/oaigate/requests", "/oaigate/limits", "/oaigate/status",
         "/oaigate/v1/organization/usage/completions?start_time=0", "/oaigate/v1/organization/costs?start_time=0"]
NUMBERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
           "cost_microusd", "cost_usd", "unpriced_requests", "estimated_requests", "simulated_microusd")


def get(url: str, key: str | None = ADMIN) -> tuple[int, Any]:
    reply = fetch("GET", url, key=key)
    return reply.status, json.loads(reply.body)


def cli_spend(db: str, since: str, until: str, by: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["spend", "--db", db, "--since", since, "--until", until, "--by", by,
                                      "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("by", ["day", "model", "key", "endpoint"])
@pytest.mark.parametrize("since", ["2d", "30d", None])
def test_spend_gives_the_numbers_of_oaigate_spend(seeded: Callable[..., Seeded], by: str, since: str | None) -> None:
    gw = seeded()
    status, body = get(gw.root + f"/oaigate/spend?by={by}" + (f"&since={since}" if since else ""))
    assert status == 200
    report = cli_spend(str(gw.gateway.db), body["since"] or "2000-01-01", body["until"], by)
    assert {k: body["total"][k] for k in NUMBERS} == {k: report["total"][k] for k in NUMBERS}
    name = (lambda g: f"{g}T00:00:00Z") if by == "day" else (lambda g: g)
    expected = {name(row[by]): {k: row[k] for k in NUMBERS} for row in report["rows"]}
    assert {row[by]: {k: row[k] for k in NUMBERS} for row in body["rows"]} == expected
    if since:
        assert body["previous"] is not None and body["previous"]["requests"] >= 0
    assert body["total"]["requests"] == sum(row["requests"] for row in body["rows"])


def test_spend_by_hour_split_by_model_adds_up_to_the_ledger(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    _, body = get(gw.root + "/oaigate/spend?since=48h&by=hour&split=model")
    conn = sqlite3.connect(gw.gateway.db)
    count, prompt = conn.execute("SELECT COUNT(*), SUM(prompt_tokens) FROM requests WHERE started_at >= ? AND "
                                 "started_at < ?", [body["since"], body["until"]]).fetchone()
    assert sum(r["requests"] for r in body["rows"]) == count == body["total"]["requests"]
    assert sum(r["prompt_tokens"] for r in body["rows"]) == prompt
    assert all(r["hour"].endswith(":00:00Z") and "split" in r for r in body["rows"])
    unpriced = [r for r in body["rows"] if r["split"] == "my-llama" and r["cost_microusd"] is None]
    assert unpriced and all(r["cost_usd"] is None and r["unpriced_requests"] for r in unpriced)  # unknown, not $0


def test_a_key_sees_only_its_own(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    _, spend = get(gw.root + "/oaigate/spend?by=key", ALICE)
    assert [row["key"] for row in spend["rows"]] == ["alice"]
    assert spend["total"]["requests"] == sum(1 for r in gw.rows if r["key_name"] == "alice")
    _, page = get(gw.root + "/oaigate/requests?limit=500", ALICE)
    assert page["data"] and {row["key_name"] for row in page["data"]} == {"alice"}
    status, refused = get(gw.root + "/oaigate/requests?key=ci", ALICE)
    assert status == 403 and "only its own" in refused["error"]["message"]
    _, limits = get(gw.root + "/oaigate/limits", ALICE)
    assert {b["scope"] for b in limits["budgets"]} == {"key:alice", "key:alice model:gpt-4o"}
    assert [r["scope"] for r in limits["data"]] == ["key:alice"]
    _, usage = get(gw.root + "/oaigate/v1/organization/usage/completions?start_time=0&limit=31&group_by=api_key_id",
                   ALICE)
    assert {r["api_key_id"] for b in usage["data"] for r in b["results"]} <= {"alice"}
    _, everything = get(gw.root + "/oaigate/requests?limit=500")
    assert {row["key_name"] for row in everything["data"]} == {"alice", "ci", "bob"}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_no_or_a_wrong_key_gets_the_401_envelope(seeded: Callable[..., Seeded], path: str, key: str | None) -> None:
    gw = seeded()
    status, body = get(gw.root + path, key)
    if path == "/oaigate/status" and key is None:  # the page asks it whether it needs a key
        assert (status, body) == (200, {"object": "oaigate.status", "key_required": True})
        return
    assert status == 401
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == "invalid_api_key"


def test_nothing_shown_reveals_a_key_or_its_hash(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    secrets = [s for k in (ADMIN, ALICE, CI) for s in (k, hashlib.sha256(k.encode()).hexdigest(), k[-6:])]
    for path in [*PATHS, "/oaigate/budgets", "/dashboard", "/dashboard/app.js"]:
        text = fetch("GET", gw.root + path, key=ADMIN).body.decode()
        assert not [s for s in secrets if s in text], path


def test_open_without_keys_on_loopback(seeded: Callable[..., Seeded]) -> None:
    gw = seeded(keys=())
    for path in PATHS:
        status, _ = get(gw.root + path, None)
        assert status == 200, path


def test_without_keys_beyond_loopback_it_is_refused(seeded: Callable[..., Seeded]) -> None:
    gw = seeded(keys=(), server={"host": "0.0.0.0", "allow_remote": True})
    status, body = get(gw.root + "/oaigate/spend", None)
    assert status == 403 and "[[keys]]" in body["error"]["message"]


def test_requests_pages_and_filters(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    ids, cursor = [], None
    while True:
        _, page = get(gw.root + "/oaigate/requests?limit=37" + (f"&before={cursor}" if cursor else ""))
        ids += [row["id"] for row in page["data"]]
        cursor = page["next_before"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert sorted(ids) == sorted(r["id"] for r in gw.rows)
    for query, check in [("status=5xx", lambda r: 500 <= r["status"] < 600),
                         ("status=4xx", lambda r: r["status"] == 429),
                         ("status=cut", lambda r: r["status"] == 0), ("key=ci", lambda r: r["key_name"] == "ci"),
                         ("model=gpt-4o", lambda r: (r["model_served"] or r["model_requested"]) == "gpt-4o"),
                         ("endpoint=/v1/embeddings", lambda r: r["endpoint"] == "/v1/embeddings")]:
        _, page = get(gw.root + f"/oaigate/requests?limit=500&{query}")
        expected = [r["id"] for r in gw.rows if check(r)]
        assert page["data"] and sorted(row["id"] for row in page["data"]) == sorted(expected), query
    _, page = get(gw.root + "/oaigate/requests?limit=5")
    assert "request_body" not in page["data"][0]
    assert all(set(row) >= {"latency_ms", "ttfb_ms", "overhead_ms", "attempts", "fixture", "upstream_request_id",
                            "error_type", "cost_usd"} for row in page["data"])


COSTS = "/oaigate/v1/organization/costs?start_time=0"


@pytest.mark.parametrize(("query", "param"), [("/oaigate/requests?limit=0", "limit"),
                                              ("/oaigate/requests?limit=x", "limit"),
                                              ("/oaigate/requests?before=junk", "before"),
                                              ("/oaigate/requests?status=6xx", "status"),
                                              ("/oaigate/spend?by=week", "by"),
                                              ("/oaigate/spend?since=yesterday", "since"),
                                              ("/oaigate/spend?since=1d&until=3d", "since"),
                                              ("/oaigate/spend?split=colour", "split"),
                                              ("/oaigate/v1/organization/usage/completions", "start_time"),
                                              ("/oaigate/v1/organization/usage/completions?start_time=0&bucket_width=1w",
                                               "bucket_width"),
                                              (COSTS + "&bucket_width=1h", "bucket_width"),
                                              (COSTS + "&limit=181", "limit"),
                                              (COSTS + "&group_by=colour", "group_by"),
                                              (COSTS + "&page=nope", "page")])
def test_bad_input_gets_a_clear_400(seeded: Callable[..., Seeded], query: str, param: str) -> None:
    gw = seeded()
    status, body = get(gw.root + query)
    assert status == 400, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"


def test_a_new_request_is_there_at_once(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    with gw.gateway.client(ALICE) as client:
        made = client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=[{"role": "user", "content": "hi"}])
    gw.gateway.settle()
    _, page = get(gw.root + "/oaigate/requests?limit=1", ALICE)
    row = page["data"][0]
    assert row["id"] == made.headers["x-oaigate-request-id"] and row["key_name"] == "alice"
    assert row["simulated"] == 1  # answered by the embedded mock: priced, never spend
    _, status = get(gw.root + "/oaigate/status", ALICE)
    assert status["ledger"]["written"] >= 1 and status["admin"] is False and status["upstreams"] == ["mock"]


def test_limits_show_use(seeded: Callable[..., Seeded]) -> None:
    gw = seeded()
    with gw.gateway.client(ALICE) as client:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    gw.gateway.settle()
    _, limits = get(gw.root + "/oaigate/limits")
    alice = next(r for r in limits["data"] if r["scope"] == "key:alice")
    # rpm 12 refills one request every 5 s: the 3 just made still show, however slow the machine
    assert alice["rpm"] == 12 and 3 <= alice["requests_used"] <= 4 and alice["in_flight"] == 0
    assert {b["scope"] for b in limits["budgets"]} >= {"key:alice", "key:ci"}
    assert limits["soft_threshold"] == 0.8


def test_a_limit_per_key_shows_each_callers_use(seeded: Callable[..., Seeded]) -> None:
    gw = seeded(rate_limits=[{"key": "*", "rpm": 100}])
    with gw.gateway.client(ALICE) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    gw.gateway.settle()
    _, admin = get(gw.root + "/oaigate/limits")
    per_key = [r for r in admin["data"] if r["rpm"] == 100]
    assert [(r["scope"], r["requests_used"]) for r in per_key] == [("key:alice", 1)]
    _, ci = get(gw.root + "/oaigate/limits", CI)
    assert [(r["scope"], r["requests_used"]) for r in ci["data"]] == [("key:ci", 0)]


def test_a_ledger_that_cannot_be_read_is_a_503_not_zero_spend(seeded: Callable[..., Seeded]) -> None:
    """The dashboard and OpenAI's costs API read the ledger file: when it cannot be read (held by another
    process, or replaced by something that is no ledger), an auditor gets OpenAI's 503 envelope, never an
    empty report that reads as "nothing was spent"."""
    gw = seeded(rows=20)
    db = gw.gateway.db
    gw.gateway.settle()
    holder = hold_ledger(db)
    try:
        status, body = get(gw.root + "/oaigate/spend?since=30d")
    finally:
        holder.close()
    assert status == 503, body
    assert body["error"]["code"] == "ledger_unavailable" and body["error"]["type"] == "server_error"
    assert str(db) not in body["error"]["message"]  # where the file lives is for the log, not for every key
    status, body = get(gw.root + "/oaigate/spend?since=30d")
    assert status == 200 and body["total"]["requests"] == 20  # readable again: the report is back
    junk = db.with_name("junk.db")
    junk.write_bytes(b"not a database, whatever its name says " * 40)
    junk.replace(db)  # the gateway's writer keeps its own handle on the old file
    for path in ("/oaigate/spend", "/oaigate/requests", "/oaigate/v1/organization/costs?start_time=0"):
        status, body = get(gw.root + path)
        assert status == 503 and body["error"]["code"] == "ledger_unavailable", (path, body)
    partial = sqlite3.connect(junk)  # opens as a ledger, then fails in the query (no `id`): still a 503, not a 500
    partial.execute("CREATE TABLE requests (started_at TEXT, cost_microusd INTEGER)")
    partial.close()
    junk.replace(db)
    status, body = get(gw.root + "/oaigate/requests")
    assert status == 503 and body["error"]["code"] == "ledger_unavailable", body
