"""Fallbacks end to end: the real `openai` SDK through the gateway, in front of two mock servers (the
default upstream `a` and a routed one `b`), whose journals show which model reached which upstream."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from proxy.config import Config, ConfigError
from proxy.wire.pricing import PriceTable
from proxy.wire.usage import Usage
from tests.servers import Held, ServerThread

from .conftest import CLIENT_KEY, UPSTREAM_KEY_ENV, Gateway, SleepRecorder, fetch
from .mocks import MockUpstream, add_rule

MESSAGES: Any = [{"role": "user", "content": "Say hello."}]
FALLBACKS = [{"model": "gpt-4o", "to": ["gpt-4o-mini"]}]
STORM = {"match": {"model": "gpt-4o"}, "answer": {"error": {"status": 503, "message": "The engine is overloaded."}}}


@pytest.fixture
def a(upstream: Callable[[web.Application], ServerThread]) -> MockUpstream:
    return MockUpstream.start(upstream)


@pytest.fixture
def b(upstream: Callable[[web.Application], ServerThread]) -> MockUpstream:
    return MockUpstream.start(upstream)


def two(gateway: Callable[..., Gateway], a_url: str, b: MockUpstream, fallbacks: list[dict[str, Any]] | None = None,
        **sections: Any) -> Gateway:
    """A gateway on `a`, with gpt-4o-mini and gpt-4 routed to `b` (named "backup")."""
    routes = [{"model": model, "base_url": b.url, "name": "backup", "api_key_env": UPSTREAM_KEY_ENV}
              for model in ("gpt-4o-mini", "gpt-4")]
    return gateway(a_url, sleep=SleepRecorder(), routes=routes,
                   fallbacks=FALLBACKS if fallbacks is None else fallbacks,
                   upstream={"max_retries": 1, **sections.pop("upstream", {})}, **sections)


def models(mock: MockUpstream) -> list[str]:
    return [e["body"]["model"] for e in mock.calls("/v1/chat/completions")]


def served_cost(row: dict[str, Any]) -> int | None:
    return PriceTable().cost_micros(row["model_served"], Usage(row["prompt_tokens"], row["completion_tokens"],
                                                               row["cached_tokens"] or 0))


@pytest.mark.parametrize("stream", [False, True])
def test_a_503_storm_falls_back_to_the_next_model_on_another_upstream(
        gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream, stream: bool) -> None:
    add_rule(a, STORM)
    gw = two(gateway, a.url, b)
    with gw.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, stream=stream)
        if stream:
            chunks = list(raw.parse())  # type: ignore[call-overload]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            served = chunks[0].model
        else:
            answer = raw.parse()
            text, served = answer.choices[0].message.content, answer.model
    assert raw.headers["x-oaigate-fallback"] == "gpt-4o-mini"
    assert served == "gpt-4o-mini" and text
    assert models(a) == ["gpt-4o", "gpt-4o"]  # the first attempt and its one retry
    assert models(b) == ["gpt-4o-mini"]
    [row] = gw.rows(expect=1)
    assert (row["model_requested"], row["model_served"], row["fallback_from"], row["models_tried"]) == \
        ("gpt-4o", "gpt-4o-mini", "gpt-4o", 2)
    assert (row["status"], row["upstream"], row["attempts"], row["stream"]) == (200, "backup", 3, int(stream))
    assert row["cost_microusd"] == served_cost(row) and row["cost_microusd"] > 0
    assert 'oaigate_fallbacks_total{to="gpt-4o-mini"} 1.0' in fetch("GET", gw.root + "/metrics").body.decode()


@pytest.mark.parametrize("stream", [False, True])
def test_the_fault_header_storm_falls_back_too(gateway: Callable[..., Gateway], a: MockUpstream,
                                               stream: bool) -> None:
    """`x-mock-fault: 503;times=2;id=...` reaches every upstream: both routes are the same mock here, so
    the storm's two failures are the first model's two attempts and the fallback gets the success.
    The stream is read to its end: the answer is then whole, upstream and in the mock's journal."""
    gw = two(gateway, a.url, a)
    with gw.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, stream=stream, extra_headers={"x-mock-fault": "503;times=2;id=s"})
        served = {c.model for c in raw.parse()} if stream else {raw.parse().model}  # type: ignore[call-overload]
    assert raw.headers["x-oaigate-fallback"] == "gpt-4o-mini" and served == {"gpt-4o-mini"}
    assert models(a) == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert [e["status"] for e in a.calls("/v1/chat/completions")] == [503, 503, 200]


def test_a_client_leaving_a_fallen_back_stream_costs_no_extra_upstream_request(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> None:
    """The client reads the fallback's first chunk and leaves while the upstream is still streaming:
    the gateway drops that upstream request, and re-sends nothing (no attempt billed twice)."""
    held = Held()
    a = MockUpstream.start(upstream, sleep=held)
    gw = two(gateway, a.url, a)
    with gw.client() as client:
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={
            "x-mock-fault": "503;times=2;id=s", "x-mock-latency": "chunk_ms=60000"})
        assert next(iter(stream)).model == "gpt-4o-mini"  # the mock now holds its next chunk
        stream.close()
    held.release(a.server)  # the next chunk finds the client gone: the gateway ends the exchange
    [row] = gw.rows(expect=1)
    assert (row["attempts"], row["models_tried"], row["model_served"]) == (3, 2, "gpt-4o-mini")
    calls = a.calls("/v1/chat/completions")
    assert [(e["body"]["model"], e["status"]) for e in calls] == [("gpt-4o", 503), ("gpt-4o", 503),
                                                                   ("gpt-4o-mini", 200)]


def test_no_connection_falls_back(gateway: Callable[..., Gateway], b: MockUpstream) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gw = two(gateway, f"http://127.0.0.1:{port}/v1", b)
    with gw.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-oaigate-fallback"] == "gpt-4o-mini"
    assert models(b) == ["gpt-4o-mini"]
    [row] = gw.rows(expect=1)
    assert (row["fallback_from"], row["models_tried"], row["upstream"]) == ("gpt-4o", 2, "backup")


def test_a_timeout_falls_back(gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream) -> None:
    add_rule(a, {"match": {"model": "gpt-4o"}, "answer": {"pacing": {"ttft_ms": 5000}}})
    gw = two(gateway, a.url, b, upstream={"max_retries": 0, "first_byte_timeout_s": 0.3})
    with gw.client() as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert raw.headers["x-oaigate-fallback"] == "gpt-4o-mini" and models(b) == ["gpt-4o-mini"]
    [row] = gw.rows(expect=1)
    assert (row["status"], row["fallback_from"], row["models_tried"], row["error_type"]) == (200, "gpt-4o", 2, None)


def test_content_filter_falls_back_when_on_says_so(gateway: Callable[..., Gateway], a: MockUpstream,
                                                   b: MockUpstream) -> None:
    add_rule(a, {"match": {"model": "gpt-4o"}, "answer": {"error": {"status": 400, "code": "content_filter",
                                                                   "message": "Flagged by the content filter."}}})
    gw = two(gateway, a.url, b, [{"model": "gpt-4o", "to": ["gpt-4o-mini"], "on": ["content_filter"]}])
    reply = fetch("POST", gw.url + "/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert (reply.status, reply.headers["x-oaigate-fallback"]) == (200, "gpt-4o-mini")


def test_spend_rebuilt_at_start_is_charged_to_the_model_that_answered(
        gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream, tmp_path: Path) -> None:
    add_rule(a, STORM)
    db = tmp_path / "rebuilt.db"
    budgets_ = [{"model": "gpt-4o-mini", "budget_usd": 1}, {"model": "gpt-4o", "budget_usd": 1}]
    first = two(gateway, a.url, b, db=db, budgets=budgets_)
    with first.client() as client:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    live = {s["scope"]: s["spent_usd"] for s in budgets(first)}
    first.stop()
    again = two(gateway, a.url, b, db=db, budgets=budgets_)
    assert {s["scope"]: s["spent_usd"] for s in budgets(again)} == live
    assert live["model:gpt-4o"] == "0.000000" and live["model:gpt-4o-mini"] != "0.000000"


def test_a_400_is_never_fallen_back(gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream) -> None:
    add_rule(a, {"match": {"model": "gpt-4o"}, "answer": {"error": {"status": 400, "message": "Bad value.",
                                                                   "code": "invalid_value", "param": "messages"}}})
    gw = two(gateway, a.url, b, [{"model": "gpt-4o", "to": ["gpt-4o-mini"], "on": [
        "429", "5xx", "timeout", "connection", "context_length_exceeded", "content_filter"]}])
    with gw.client() as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.message.endswith("Bad value.") and "x-oaigate-fallback" not in caught.value.response.headers
    assert models(b) == []
    [row] = gw.rows(expect=1)
    assert (row["status"], row["fallback_from"], row["models_tried"]) == (400, None, 1)


def test_an_upstream_context_length_error_falls_back_only_when_on_says_so(
        gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream) -> None:
    add_rule(a, {"match": {"model": "gpt-4o"}, "answer": {"error": {
        "status": 400, "code": "context_length_exceeded", "param": "messages",
        "message": "This model's maximum context length is 128000 tokens."}}})
    default = two(gateway, a.url, b)
    assert fetch("POST", default.url + "/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}).status \
        == 400
    assert models(b) == []
    wider = two(gateway, a.url, b, [{"model": "gpt-4o", "to": ["gpt-4o-mini"], "on": ["context_length_exceeded"]}])
    reply = fetch("POST", wider.url + "/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert (reply.status, reply.headers["x-oaigate-fallback"]) == (200, "gpt-4o-mini")
    assert models(b) == ["gpt-4o-mini"]


def test_the_context_window_pre_check_falls_back_to_a_larger_model(
        gateway: Callable[..., Gateway], a: MockUpstream, b: MockUpstream) -> None:
    gw = two(gateway, a.url, b, [{"model": "gpt-4", "to": ["gpt-4o"], "on": ["context_length_exceeded"]}])
    with gw.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hello " * 10_000}])
    assert raw.headers["x-oaigate-fallback"] == "gpt-4o"
    assert models(a) == ["gpt-4o"] and models(b) == []  # gpt-4 (8k) never called
    [row] = gw.rows(expect=1)
    assert (row["model_requested"], row["fallback_from"], row["models_tried"]) == ("gpt-4", "gpt-4", 2)


def test_a_stream_already_started_is_never_switched(gateway: Callable[..., Gateway], a: MockUpstream,
                                                    b: MockUpstream) -> None:
    gw = two(gateway, a.url, b)
    with gw.client() as client, pytest.raises(openai.APIError):
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                                extra_headers={"x-mock-fault": "disconnect"})
        list(stream)
    assert models(b) == []
    [row] = gw.rows(expect=1)
    assert (row["fallback_from"], row["models_tried"], row["error_type"]) == (None, 1, "upstream_disconnected")


def budgets(gw: Gateway) -> list[dict[str, Any]]:
    return list(json.loads(fetch("GET", gw.root + "/oaigate/budgets").body)["budgets"])


def test_a_fallback_a_budget_cannot_pay_for_is_refused(gateway: Callable[..., Gateway], a: MockUpstream,
                                                       b: MockUpstream) -> None:
    add_rule(a, STORM)
    # gpt-4o's worst case (1000 output tokens, $10/M) fits in $0.05; gpt-4's ($60/M) does not
    gw = two(gateway, a.url, b, [{"model": "gpt-4o", "to": ["gpt-4"]}],
             keys=[{"name": "team", "key": CLIENT_KEY, "budget_usd": 0.05}])
    with gw.client() as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "budget_exceeded"
    assert models(b) == []
    [account] = budgets(gw)
    assert (account["reserved_usd"], account["spent_usd"]) == ("0.000000", "0.000000")


def test_the_reservation_moves_with_the_request(gateway: Callable[..., Gateway], a: MockUpstream,
                                                b: MockUpstream) -> None:
    add_rule(a, STORM)
    gw = two(gateway, a.url, b, keys=[{"name": "team", "key": CLIENT_KEY, "budget_usd": 1}])
    with gw.client() as client:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=50)
    [row] = gw.rows(expect=1)
    [account] = budgets(gw)
    assert account["reserved_usd"] == "0.000000"
    assert account["spent_usd"] == f"{row['cost_microusd'] / 1e6:.6f}" and row["cost_microusd"] == served_cost(row)


def test_fallback_config_is_checked() -> None:
    with pytest.raises(ValueError, match="on"):
        Config.model_validate({"fallbacks": [{"model": "gpt-4o", "to": ["x"], "on": ["500"]}]})
    with pytest.raises(ValueError, match="to"):
        Config.model_validate({"fallbacks": [{"model": "gpt-4o", "to": []}]})
    assert ConfigError  # the CLI reports these as one ConfigError naming the key (see test_config)
