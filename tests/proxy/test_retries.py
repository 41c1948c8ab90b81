"""Retries: a misbehaving upstream, and the waits the gateway would have slept (recorded, not slept).

The gateway runs with `make_app(config, sleep=SleepRecorder())`, so backoff and retry-after waits are
recorded and return at once. Only the first-byte timeout case really waits (0.2 s per attempt).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import openai
import pytest

from proxy.stages import retry
from proxy.stages.retry import backoff, hinted_wait, parse_duration, should_retry

from .conftest import CLIENT_KEY, UPSTREAM_KEY, Gateway, SleepRecorder, fetch
from .scripted import OK, Script, answer, hang, reset

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}
def _sdk_chat(gw: Gateway) -> Any:
    with gw.client() as client:
        return client.chat.completions.create(**CHAT)


# --- waits the upstream asks for -----------------------------------------------------------------

@pytest.mark.parametrize(("headers", "wait"), [
    ({"retry-after-ms": "1234", "retry-after": "2"}, 1.234),
    ({"retry-after": "3"}, 3.0),
    ({"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "250ms"}, 1.5),
    ({"retry-after-ms": "600000"}, retry.MAX_HINT_S),
], ids=["retry-after-ms", "retry-after", "ratelimit-reset", "capped"])
def test_429_waits_what_the_upstream_asks(gateway: Callable[..., Gateway], scripted: Callable[..., tuple[Script, str]],
                                          fake_sleep: SleepRecorder, headers: dict[str, str], wait: float) -> None:
    script, url = scripted(answer(429, headers=headers), OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 2})
    completion = _sdk_chat(gw)
    assert completion.choices[0].message.content == "hi"
    assert fake_sleep.waits == [wait]
    assert script.calls == 2
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["attempts"], row["prompt_tokens"], row["completion_tokens"]) == (200, 2, 9, 1)


def test_mock_429_fault_retry_after_ms_through_the_gateway(gateway: Callable[..., Gateway],
                                                            fake_sleep: SleepRecorder) -> None:
    gw = gateway(sleep=fake_sleep, upstream={"max_retries": 2})
    fault = f"429;times=1;id={uuid.uuid4().hex};retry_after_ms=2750"
    with gw.client() as client:
        completion = client.chat.completions.create(**CHAT, extra_headers={"x-mock-fault": fault})
    assert completion.usage is not None
    assert fake_sleep.waits == [2.75]
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 2 and row["status"] == 200
    assert row["completion_tokens"] == completion.usage.completion_tokens


def test_retry_later_than_the_deadline_relays_the_429_at_once(gateway: Callable[..., Gateway],
                                                              scripted: Callable[..., tuple[Script, str]],
                                                              fake_sleep: SleepRecorder) -> None:
    limited = {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                         "code": "rate_limit_exceeded"}}
    script, url = scripted(answer(429, limited, {"retry-after-ms": "5000", "retry-after": "5"}), OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 3, "timeout_s": 1.0})
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT)
    assert reply.status == 429  # the upstream's answer, with its retry-after, not a gateway-made 504
    assert reply.body == json.dumps(limited).encode()
    assert reply.headers["retry-after-ms"] == "5000"
    assert fake_sleep.waits == [] and script.calls == 1
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["attempts"]) == (429, 1)


# --- 5xx bursts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("failures", [1, 2, 3])
def test_503_burst_then_success(gateway: Callable[..., Gateway], scripted: Callable[..., tuple[Script, str]],
                                fake_sleep: SleepRecorder, failures: int) -> None:
    script, url = scripted(*[answer(503)] * failures, OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 3})
    assert _sdk_chat(gw).id == "chatcmpl-ok"
    assert script.calls == failures + 1
    assert len(set(script.bodies)) == 1 and json.loads(script.bodies[0]) == CHAT  # the same body each time
    assert all(h["Authorization"] == f"Bearer {UPSTREAM_KEY}" for h in script.headers)
    assert len(fake_sleep.waits) == failures
    for attempt, wait in enumerate(fake_sleep.waits, start=1):
        assert 0 <= wait <= min(retry.MAX_BACKOFF_S, retry.BASE_S * 2 ** (attempt - 1))
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == failures + 1 and row["status"] == 200 and row["error_type"] is None


@pytest.mark.parametrize("kind", ["500", "503"])
def test_mock_fault_burst_through_the_gateway(gateway: Callable[..., Gateway], fake_sleep: SleepRecorder,
                                              kind: str) -> None:
    gw = gateway(sleep=fake_sleep, upstream={"max_retries": 2})
    fault = f"{kind};times=2;id={uuid.uuid4().hex}"
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT, headers={"x-mock-fault": fault})
    assert reply.status == 200 and json.loads(reply.body)["object"] == "chat.completion"
    assert len(fake_sleep.waits) == 2
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 3


def test_x_should_retry_false_is_obeyed(gateway: Callable[..., Gateway], scripted: Callable[..., tuple[Script, str]],
                                        fake_sleep: SleepRecorder) -> None:
    script, url = scripted(answer(500, headers={"x-should-retry": "false"}), OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 3})
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT)
    assert reply.status == 500 and json.loads(reply.body)["error"]["message"] == "upstream says 500"
    assert reply.headers["x-should-retry"] == "false"  # the SDK behind the gateway obeys it too
    assert script.calls == 1 and fake_sleep.waits == []
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 1 and row["status"] == 500


def test_x_should_retry_true_retries_any_status(gateway: Callable[..., Gateway],
                                                scripted: Callable[..., tuple[Script, str]],
                                                fake_sleep: SleepRecorder) -> None:
    script, url = scripted(answer(400, headers={"x-should-retry": "true"}), OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 1})
    assert fetch("POST", gw.url + "/chat/completions", json=CHAT).status == 200
    assert script.calls == 2 and len(fake_sleep.waits) == 1


def test_client_errors_are_not_retried(gateway: Callable[..., Gateway], scripted: Callable[..., tuple[Script, str]],
                                       fake_sleep: SleepRecorder) -> None:
    script, url = scripted(answer(400), OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 3})
    assert fetch("POST", gw.url + "/chat/completions", json=CHAT).status == 400
    assert script.calls == 1 and fake_sleep.waits == []


def test_exhausted_retries_relay_the_last_upstream_error(gateway: Callable[..., Gateway],
                                                         scripted: Callable[..., tuple[Script, str]],
                                                         fake_sleep: SleepRecorder) -> None:
    last = {"error": {"message": "the last one", "type": "server_error", "param": None, "code": "overloaded"}}
    script, url = scripted(answer(500), answer(502), answer(503, last, {"x-request-id": "req_last"}))
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 2})
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT)
    assert reply.status == 503
    assert reply.body == json.dumps(last).encode()
    assert reply.headers["x-request-id"] == "req_last"
    with gw.client() as client, pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(**CHAT)  # the scripted upstream keeps answering 503
    assert err.value.status_code == 503 and err.value.code == "overloaded" and "the last one" in err.value.message
    assert script.calls == 3 + 3
    assert len(fake_sleep.waits) == 2 + 2
    rows = gw.rows(expect=2)
    assert [(r["status"], r["attempts"], r["upstream_request_id"]) for r in rows] == [(503, 3, "req_last")] * 2


# --- transport failures ---------------------------------------------------------------------------

def test_connection_reset_before_headers_is_retried(gateway: Callable[..., Gateway],
                                                    scripted: Callable[..., tuple[Script, str]],
                                                    fake_sleep: SleepRecorder) -> None:
    script, url = scripted(reset, reset, OK)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 2})
    assert _sdk_chat(gw).id == "chatcmpl-ok"
    assert script.calls == 3 and len(fake_sleep.waits) == 2
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 3 and row["status"] == 200


def test_connection_reset_every_time_gives_a_502_envelope(gateway: Callable[..., Gateway],
                                                          scripted: Callable[..., tuple[Script, str]],
                                                          fake_sleep: SleepRecorder) -> None:
    script, url = scripted(reset)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 2})
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT)
    assert reply.status == 502
    error = json.loads(reply.body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == "upstream_error" and error["type"] == "server_error"
    assert UPSTREAM_KEY not in reply.body.decode()
    assert "x-oaigate-overhead-ms" in reply.headers
    assert script.calls == 3 and len(fake_sleep.waits) == 2
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["attempts"], row["error_type"]) == (502, 3, "upstream_error")
    metrics = fetch("GET", gw.root + "/metrics", key=None).body.decode()
    assert 'oaigate_upstream_errors_total{status="upstream_error"} 1.0' in metrics
    assert "oaigate_upstream_retries_total 2.0" in metrics


def test_slow_first_byte_gives_a_504_envelope(gateway: Callable[..., Gateway],
                                              scripted: Callable[..., tuple[Script, str]],
                                              fake_sleep: SleepRecorder) -> None:
    script, url = scripted(hang)
    gw = gateway(url, sleep=fake_sleep, upstream={"max_retries": 1, "first_byte_timeout_s": 0.2})
    started = time.monotonic()
    reply = fetch("POST", gw.url + "/chat/completions", json=CHAT)
    elapsed = time.monotonic() - started
    assert reply.status == 504
    error = json.loads(reply.body)["error"]
    assert error["code"] == "upstream_timeout" and error["type"] == "server_error"
    assert "x-oaigate-overhead-ms" in reply.headers
    assert 0.4 <= elapsed < 5  # two attempts of 0.2 s each; the backoff between them was not slept
    assert script.calls == 2 and len(fake_sleep.waits) == 1
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["attempts"], row["error_type"]) == (504, 2, "upstream_timeout")


def test_stream_cut_midway_is_an_error_and_not_retried(gateway: Callable[..., Gateway],
                                                       fake_sleep: SleepRecorder) -> None:
    gw = gateway(sleep=fake_sleep, upstream={"max_retries": 3})
    received: list[Any] = []
    with gw.client() as client:
        stream = client.chat.completions.create(**{**CHAT, "max_tokens": 30}, stream=True,
                                                extra_headers={"x-mock-fault": "disconnect"})
        with stream, pytest.raises(openai.APIConnectionError) as err:
            for chunk in stream:
                received.append(chunk)
    assert "incomplete" in repr(err.value.__cause__) or "peer closed" in repr(err.value.__cause__), \
        repr(err.value.__cause__)
    assert received and received[-1].choices[0].finish_reason is None  # cut before the end
    (row,) = gw.rows(expect=1)
    assert row["error_type"] == "upstream_disconnected"
    assert row["attempts"] == 1 and fake_sleep.waits == []
    assert row["stream"] == 1 and row["usage_source"] == "estimated" and row["completion_tokens"] > 0


def test_stream_cut_midway_raw_client_sees_a_payload_error(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(upstream={"max_retries": 3})

    async def go() -> bytes:
        seen = b""
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/chat/completions", json={**CHAT, "stream": True, "max_tokens": 30},
                                    headers={"Authorization": f"Bearer {CLIENT_KEY}",
                                             "x-mock-fault": "disconnect"}) as response:
                assert response.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for data in response.content.iter_any():
                        seen += data
        return seen

    seen = asyncio.run(go())
    assert seen.startswith(b"data: {") and b"[DONE]" not in seen
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 1 and row["error_type"] == "upstream_disconnected"


# --- unit: the retry policy -----------------------------------------------------------------------

@pytest.mark.parametrize("attempt", range(1, 9))
def test_backoff_full_jitter_bounds(attempt: int) -> None:
    cap = min(8.0, 0.5 * 2 ** (attempt - 1))
    assert backoff(attempt, lambda: 1.0) == cap
    assert backoff(attempt, lambda: 0.0) == 0.0
    assert backoff(attempt, lambda: 0.5) == cap / 2


@pytest.mark.parametrize(("value", "seconds"), [
    ("6m0s", 360.0), ("1.5s", 1.5), ("20ms", 0.02), ("1h2m3s", 3723.0), ("0s", 0.0), ("2m30.5s", 150.5),
    ("", None), ("abc", None), ("5", None), ("1s junk", None), ("-1s", None),
])
def test_parse_duration(value: str, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("status", "headers", "wait"), [
    (503, {"retry-after-ms": "250"}, 0.25),
    (503, {"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    (503, {"retry-after": "7"}, 7.0),
    (503, {"retry-after": "0.5"}, 0.5),
    (503, {"retry-after": format_datetime(NOW + timedelta(seconds=12), usegmt=True)}, 12.0),
    (503, {"retry-after": format_datetime(NOW - timedelta(seconds=12), usegmt=True)}, 0.0),
    (503, {"retry-after": "Wed, 01 Jan 2025 12:00:30 -0000"}, 30.0),
    (503, {"retry-after": "3600"}, retry.MAX_HINT_S),
    (503, {"retry-after-ms": "-5"}, 0.0),
    (429, {"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}, retry.MAX_HINT_S),
    (429, {"x-ratelimit-reset-tokens": "750ms"}, 0.75),
    (200, {"x-ratelimit-reset-tokens": "750ms"}, None),  # on every response: only a 429 means "wait"
    (503, {"x-ratelimit-reset-requests": "2s"}, None),
    (503, {}, None),
    # malformed hints are ignored (and never raise): the next hint or the backoff decides
    (503, {"retry-after": "Mon, not a date"}, None),
    (503, {"retry-after": "soon"}, None),
    (503, {"retry-after": "nan"}, None),
    (503, {"retry-after-ms": "nan", "retry-after": "4"}, 4.0),
    (429, {"retry-after": "later", "x-ratelimit-reset-requests": "1s"}, 1.0),
])
def test_hinted_wait(status: int, headers: dict[str, str], wait: float | None) -> None:
    assert hinted_wait(status, headers, now=NOW.timestamp) == wait


@pytest.mark.parametrize(("status", "headers", "expected"), [
    *[(s, {}, True) for s in (408, 409, 429, 500, 502, 503, 504)],
    *[(s, {}, False) for s in (200, 400, 401, 403, 404, 422, 501)],
    (500, {"x-should-retry": "false"}, False),
    (429, {"x-should-retry": "FALSE"}, False),
    (400, {"x-should-retry": "true"}, True),
    (200, {"x-should-retry": "maybe"}, False),
    (503, {"x-should-retry": "maybe"}, True),
])
def test_should_retry(status: int, headers: dict[str, str], expected: bool) -> None:
    assert should_retry(status, headers) is expected
