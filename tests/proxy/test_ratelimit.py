"""Rate limits with a controlled clock: no real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from proxy.clock import ManualClock
from proxy.stages.ratelimit import (
    Bucket, RateLimited, RateLimiter, RateRule, UpstreamGovernor, format_duration,
)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_bucket_refills_continuously() -> None:
    bucket = Bucket(60, now=0.0)
    bucket.take(60)
    assert bucket.wait(1, 0.0) == pytest.approx(1.0)
    assert bucket.wait(1, 0.5) == pytest.approx(0.5)
    assert bucket.wait(30, 10.0) == pytest.approx(20.0)
    bucket.refill(1000.0)
    assert bucket.level == 60


def test_reject_mode_answers_429_with_exact_retry_after() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule("ci", None, 2, None, None)], clock, on_limit="reject")
        await limiter.acquire("ci", "gpt-4o", 0)
        await limiter.acquire("ci", "gpt-4o", 0)
        with pytest.raises(RateLimited) as caught:
            await limiter.acquire("ci", "gpt-4o", 0)
        assert caught.value.headers == {"retry-after-ms": "30000", "retry-after": "30"}
        assert "key:ci" in caught.value.message and "requests per minute: limit 2" in caught.value.message
        clock.advance(30)
        await limiter.acquire("ci", "gpt-4o", 0)  # refilled exactly one request
        assert limiter.headers("ci", "gpt-4o") == {
            "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0s"}

    run(scenario())


def test_queue_mode_waits_in_fifo_order_until_refill() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule(None, None, 60, None, None)], clock, on_limit="queue", max_wait_s=10)
        for _ in range(60):
            await limiter.acquire("a", "m", 0)
        order: list[int] = []

        async def request(i: int) -> None:
            await limiter.acquire("a", "m", 0)
            order.append(i)

        tasks = [asyncio.create_task(request(i)) for i in range(3)]
        await settle()
        assert order == []
        for expected in ([0], [0, 1], [0, 1, 2]):
            clock.advance(1.0)
            await settle()
            assert order == expected
        await asyncio.gather(*tasks)

    run(scenario())


def test_queue_mode_gives_up_after_max_wait() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule(None, None, 1, None, None)], clock, on_limit="queue", max_wait_s=5)
        await limiter.acquire("a", "m", 0)
        with pytest.raises(RateLimited) as caught:  # needs 60 s, more than max_wait_s: refused at once
            await limiter.acquire("a", "m", 0)
        assert caught.value.headers["retry-after"] == "60"

    run(scenario())


def test_tokens_are_estimated_then_corrected() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule(None, "gpt-4o*", None, 1000, None)], clock, on_limit="reject")
        permit = await limiter.acquire("a", "gpt-4o-mini", 900)
        with pytest.raises(RateLimited, match="tokens per minute: limit 1000, this request needs 200"):
            await limiter.acquire("a", "gpt-4o-mini", 200)
        limiter.correct(permit, 100)  # the answer was short: 800 tokens come back
        await limiter.acquire("a", "gpt-4o-mini", 200)
        await limiter.acquire("a", "other-model", 10_000)  # another model is not in this scope

    run(scenario())


def test_concurrency_limit_waits_for_a_release() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule("*", None, None, None, 1)], clock, on_limit="queue", max_wait_s=30)
        first = await limiter.acquire("a", "m", 0)
        await limiter.acquire("b", "m", 0)  # "*" gives each key its own scope
        second = asyncio.create_task(limiter.acquire("a", "m", 0))
        await settle()
        assert not second.done()
        limiter.release(first)
        await settle()
        assert second.done()
        limiter.release(second.result())

    run(scenario())


def test_governor_holds_admission_until_the_upstream_resets() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        governor = UpstreamGovernor()
        limiter = RateLimiter([], clock, on_limit="queue", max_wait_s=30, governor=governor)
        governor.observe(200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
                         clock.monotonic())
        waiting = asyncio.create_task(limiter.acquire("a", "m", 0))
        await settle()
        clock.advance(1.9)
        await settle()
        assert not waiting.done()
        clock.advance(0.1)
        await settle()
        assert waiting.done()
        governor.observe(429, {"retry-after-ms": "500"}, clock.monotonic())
        assert governor.wait(clock.monotonic()) == pytest.approx(0.5)

    run(scenario())


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1, "1s"), (60, "1m0s"), (3723, "1h2m3s"),
                                               (0.0001, "1ms")])
def test_reset_format_is_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
