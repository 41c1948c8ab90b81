"""One bad upstream answer or one slow client cannot degrade everyone (issue 15): the governor after a
429, one deadline per request, the upstream connection pool, the gateway's own 5xx and SDK retries.

Through the real interface: the OpenAI SDK (sync and async) and raw HTTP against a gateway in front of a
scripted upstream. Retry waits are recorded, not slept (`fake_sleep`); the few real waits are short.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.servers import ServerThread

from .conftest import CLIENT_KEY, Gateway, SleepRecorder, fetch
from .scripted import COMPLETION, Script, hang, reset

CHAT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}


class Crowd:
    """An upstream that answers 200 with no x-ratelimit-* headers, but only once `size` requests are in
    flight at once (or after `patience` seconds, with a 500): it proves requests went out together.
    Requests for a model in `limited` get a 429 first, with `headers`."""

    def __init__(self, size: int, limited: dict[str, dict[str, str]] | None = None, patience: float = 10.0) -> None:
        self.size, self.limited, self.patience = size, dict(limited or {}), patience
        self.in_flight = self.most = 0
        self.calls: list[str] = []
        self.crowd: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        self.calls.append(model)
        if model in self.limited:
            headers = self.limited.pop(model)
            return web.json_response({"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                                                "code": "rate_limit_exceeded"}}, status=429, headers=headers)
        if self.crowd is None:
            self.crowd = asyncio.Event()
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.size:
            self.crowd.set()
        try:
            await asyncio.wait_for(self.crowd.wait(), self.patience)
        except TimeoutError:
            return web.json_response({"error": {"message": "requests came one at a time"}}, status=500,
                                     headers={"x-should-retry": "false"})
        finally:
            self.in_flight -= 1
        return web.json_response({**COMPLETION, "model": model})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app


async def together(gw: Gateway, model: str, n: int) -> list[Any]:
    """`n` SDK calls at once; each result is the completion or the SDK's exception."""
    async with openai.AsyncOpenAI(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as client:
        return await asyncio.gather(*(client.chat.completions.create(model=model, **CHAT) for _ in range(n)),
                                    return_exceptions=True)


MOCK_LIKE_429 = {"retry-after": "1", "retry-after-ms": "300", "x-ratelimit-limit-requests": "500",
                 "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}


# --- the governor after a 429 ----------------------------------------------------------------------

def test_one_429_does_not_leave_the_gateway_sending_one_request_at_a_time(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread],
        fake_sleep: SleepRecorder) -> None:
    """The upstream (like the mock, vLLM) sends x-ratelimit-* only on its 429. After the 429's reset the
    answers carry no count: the gateway must go back to sending requests together."""
    crowd = Crowd(8, limited={"gpt-4o-mini": MOCK_LIKE_429})
    gw = gateway(upstream(crowd.app()).url + "/v1", sleep=fake_sleep, upstream={"max_retries": 2})
    with gw.client() as client:  # gets the 429, retries (its own wait, recorded) and succeeds
        crowd.size = 1
        assert client.chat.completions.create(model="gpt-4o-mini", **CHAT).choices[0].message.content == "hi"
    assert fake_sleep.waits == [0.3]
    crowd.size, crowd.crowd = 8, None
    results = asyncio.run(together(gw, "gpt-4o-mini", 8))
    assert [getattr(r, "id", r) for r in results] == ["chatcmpl-ok"] * 8
    assert crowd.most == 8
    rows = gw.rows(expect=9)
    assert sorted(r["status"] for r in rows) == [200] * 9


def test_a_long_retry_after_holds_only_the_model_and_window_it_is_about(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread],
        fake_sleep: SleepRecorder) -> None:
    long_block = {**MOCK_LIKE_429, "retry-after": "60", "retry-after-ms": "60000",
                  "x-ratelimit-reset-requests": "60s"}
    per_request = {"retry-after": "60", "x-ratelimit-remaining-requests": "250"}  # tokens, say: not the window
    crowd = Crowd(1, limited={"model-a": long_block, "model-c": per_request})
    gw = gateway(upstream(crowd.app()).url + "/v1", sleep=fake_sleep, upstream={"max_retries": 1},
                 mock={"models": ["model-a", "model-b", "model-c"]})
    with gw.client() as client:
        client.chat.completions.create(model="model-a", **CHAT)  # 429 (a's window for 60 s), retried: 200
        client.chat.completions.create(model="model-c", **CHAT)  # 429 with requests left, retried: 200
    assert fake_sleep.waits == [60.0, 60.0]  # each retried after its own retry-after (recorded, not slept)
    crowd.size, crowd.crowd = 20, None
    results = asyncio.run(together(gw, "model-b", 20))  # a's 429 is not about model-b
    assert [getattr(r, "id", r) for r in results] == ["chatcmpl-ok"] * 20
    crowd.crowd = None
    results = asyncio.run(together(gw, "model-c", 20))  # c's 429 left requests: not a window block
    assert [getattr(r, "id", r) for r in results] == ["chatcmpl-ok"] * 20
    with gw.client() as client, pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="model-a", **CHAT)  # what a's headers did say still holds
    assert 55 <= int(caught.value.response.headers["retry-after"]) <= 60
    assert crowd.calls.count("model-a") == 2


# --- one deadline per request ----------------------------------------------------------------------

def test_queueing_counts_against_the_requests_deadline(gateway: Callable[..., Gateway],
                                                       scripted: Callable[..., tuple[Script, str]]) -> None:
    """One request in flight at a time; the first hangs until its deadline. The second waited in line
    for it: its answer comes by its own deadline (1 s after it arrived), not 1 s after it left the line."""
    script, url = scripted(hang)
    gw = gateway(url, upstream={"max_retries": 0, "timeout_s": 1.0}, limits={"concurrent": 1})
    outcomes: dict[str, tuple[int, float]] = {}

    def call(name: str) -> None:
        started = time.monotonic()
        reply = fetch("POST", gw.url + "/chat/completions", json={"model": "gpt-4o-mini", **CHAT})
        outcomes[name] = (reply.status, time.monotonic() - started)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    while script.calls < 1:
        time.sleep(0.01)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    first.join(10)
    second.join(10)
    assert outcomes["first"][0] == 504
    status, elapsed = outcomes["second"]
    assert status in (429, 504)
    assert elapsed < 1.6, f"the second request took {elapsed:.2f}s with a deadline of 1 s"


# --- the upstream connection pool ------------------------------------------------------------------

def test_waiting_for_a_pooled_connection_is_not_an_upstream_timeout(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> None:
    """Two streams hold both pooled connections longer than first_byte_timeout_s; a third request
    waits for one (queueing, within its deadline) instead of failing with 504 'did not answer'."""
    release = asyncio.Event()
    calls: list[bool] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        calls.append(bool(body.get("stream")))
        if not body.get("stream"):
            return web.json_response(COMPLETION)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await release.wait()
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = upstream(app)
    gw = gateway(server.url + "/v1", upstream={"max_retries": 0, "pool_size": 2, "first_byte_timeout_s": 0.3})
    try:
        with gw.client() as one, gw.client() as two, \
                one.chat.completions.create(model="gpt-4o-mini", stream=True, **CHAT) as s1, \
                two.chat.completions.create(model="gpt-4o-mini", stream=True, **CHAT) as s2:
            next(iter(s1))
            next(iter(s2))  # both pooled connections are busy now
            result: list[Any] = []
            third = threading.Thread(target=lambda: result.append(fetch(
                "POST", gw.url + "/chat/completions", json={"model": "gpt-4o-mini", **CHAT})))
            third.start()
            time.sleep(0.8)  # well past first_byte_timeout_s, while the third waits for a connection
            assert calls == [True, True]
            server.call(release.set)
            list(s1), list(s2)
            third.join(10)
    finally:
        server.call(release.set)
    (reply,) = result
    assert reply.status == 200, reply.body
    assert calls == [True, True, False]
    assert gw.rows(expect=3)[-1]["error_type"] is None


# --- the gateway's own 5xx: no SDK retries on top of the gateway's ---------------------------------

@pytest.mark.parametrize(("action", "status", "options"), [
    (reset, 502, {"max_retries": 1}),
    (hang, 504, {"max_retries": 0, "first_byte_timeout_s": 0.2}),
], ids=["502", "504"])
def test_the_gateways_own_5xx_tells_the_sdk_not_to_retry(gateway: Callable[..., Gateway],
                                                         scripted: Callable[..., tuple[Script, str]],
                                                         fake_sleep: SleepRecorder, action: Any, status: int,
                                                         options: dict[str, Any]) -> None:
    script, url = scripted(action)
    gw = gateway(url, sleep=fake_sleep, upstream=options)
    with gw.client(max_retries=2) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", **CHAT)
    assert caught.value.status_code == status
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert script.calls == options["max_retries"] + 1  # the gateway's attempts only, none from the SDK
    assert len(gw.rows(expect=1)) == 1
