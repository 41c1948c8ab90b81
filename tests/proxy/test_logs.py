"""What the gateway says: rate-limited warnings for upstream failures and budget refusals, JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from proxy.logs import JSONFormatter, RateLimitedWarning

from .conftest import Gateway, SleepRecorder, fetch

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}

def test_an_upstream_failure_after_retries_is_warned_once_per_storm(
        gateway: Callable[..., Gateway], fake_sleep: SleepRecorder, caplog: pytest.LogCaptureFixture) -> None:
    gw = gateway(sleep=fake_sleep, upstream={"max_retries": 1})
    caplog.set_level(logging.WARNING, logger="oaigate")
    for _ in range(3):
        reply = fetch("POST", gw.url + "/chat/completions", json=CHAT, headers={"x-mock-fault": "503"})
        assert reply.status == 503  # the upstream's own answer, relayed after the retry

    gw.rows(expect=3)
    # a relayed upstream 503 is the upstream's answer, not a gateway failure: no warning for it
    assert not [r for r in caplog.records if "failed after" in r.getMessage()]

def test_the_gateways_own_upstream_failure_and_budget_refusals_are_warned(
        gateway: Callable[..., Gateway], fake_sleep: SleepRecorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="oaigate")
    dead = gateway("http://127.0.0.1:9/v1", sleep=fake_sleep, upstream={"max_retries": 1})
    for _ in range(3):
        assert fetch("POST", dead.url + "/chat/completions", json=CHAT).status == 502
    dead.rows(expect=3)
    failures = [r for r in caplog.records if "failed after 2 attempt(s)" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]  # 3 failures, one line per 10 s
    poor = gateway(limits={"budget_usd": 0.0000001})
    assert fetch("POST", poor.url + "/chat/completions", json=CHAT).status == 429
    poor.rows(expect=1)
    refusals = [r for r in caplog.records if "budget refused" in r.getMessage()]
    assert len(refusals) == 1 and "gpt-4o-mini" in refusals[0].getMessage()

def test_held_back_warnings_are_counted_in_the_next() -> None:
    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("oaigate.test-rate-limited")
    logger.addHandler(Sink())
    warn = RateLimitedWarning(logger, every_s=10)
    assert warn("x", "boom", now=0.0)
    assert not warn("x", "boom", now=5.0) and not warn("x", "boom", now=9.0)
    assert warn("y", "other", now=9.5)  # kinds are limited separately
    assert warn("x", "boom", now=10.0)
    assert records == ["boom", "other", "boom (and 2 more like it in the last 10s)"]

def test_json_lines_carry_the_extra_fields() -> None:
    record = logging.LogRecord("oaigate.access", logging.INFO, __file__, 1, "GET %s", ("/v1/models",), None)
    record.status = 200
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "GET /v1/models" and line["status"] == 200 and line["level"] == "info"
    assert line["ts"].endswith("Z")
