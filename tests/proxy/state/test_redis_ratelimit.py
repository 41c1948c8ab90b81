"""RateLimiter on a real Redis: two limiters (two gateway processes) share requests per minute, tokens
per minute and requests in flight; a dead process's slots free themselves; governor holds are shared."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.clock import ManualClock
from proxy.stages.ratelimit import RateLimited, RateLimiter, RateRule, UpstreamGovernor
from proxy.state import StateUnavailable
from proxy.state.redis import RedisState

from ...redis_server import RedisServer
from .test_redis_budget import make_state


@contextlib.asynccontextmanager
async def pair(server: RedisServer, clock: ManualClock, rule: RateRule, **kwargs: object
               ) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    states = [make_state(server, **kwargs) for _ in range(2)]
    limiters = []
    for state in states:
        limiter = RateLimiter([rule], clock, on_limit=str(kwargs.get("on_limit", "reject")))
        limiter.shared = state
        limiters.append(limiter)
    try:
        yield limiters[0], limiters[1]
    finally:
        for state in states:
            await state.stop()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_a_shared_rpm_admits_no_more_than_the_limit_per_window(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, RateRule(None, None, 6, None, None)) as (a, b):
            async def try_one(which: RateLimiter) -> bool:
                try:
                    which.release(await which.acquire("k", "m", 0))
                    return True
                except RateLimited:
                    return False

            for _window in range(3):
                admitted = sum(await asyncio.gather(*(try_one(a if i % 2 else b) for i in range(20))))
                assert admitted == 6  # a full bucket, and not one more, across both processes
                clock.advance(5.0)  # half a token per process would not do: refill is shared
                assert not await try_one(a) and not await try_one(b)
                clock.advance(55.0)

            assert sum(await asyncio.gather(*(try_one(a) for _ in range(6)))) == 6
            clock.advance(10.0)  # one request's worth refilled
            assert await try_one(b)
            refused = None
            try:
                await a.acquire("k", "m", 0)
            except RateLimited as exc:
                refused = exc
            assert refused is not None and "requests per minute: limit 6" in refused.message
            assert 0 < int(refused.headers["retry-after-ms"]) <= 10_000

    run(go)


def test_tokens_per_minute_are_shared_and_corrected(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, RateRule(None, None, None, 1000, None)) as (a, b):
            permit = await a.acquire("k", "m", 800)
            with pytest.raises(RateLimited):
                await b.acquire("k", "m", 300)
            a.correct(permit, 100)  # the answer used far less than estimated: 700 go back...
            a.release(permit)
            with pytest.raises(RateLimited):
                await b.acquire("k", "m", 800)
            a.release(await a.acquire("k", "m", 0))  # ...with this process's next admission (no round trip)
            b.release(await b.acquire("k", "m", 800))
            assert b.headers("k", "m")["x-ratelimit-remaining-tokens"] == "100"

    run(go)


def test_requests_in_flight_are_shared_and_a_dead_processes_slots_expire(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, RateRule(None, None, None, None, 2), ttl=30.0) as (a, b):
            first = await a.acquire("k", "m", 0)
            await a.acquire("k", "m", 0)  # held by a process that will "die"
            with pytest.raises(RateLimited, match="requests in flight: limit 2"):
                await b.acquire("k", "m", 0)
            a.release(first)
            for _ in range(100):  # the release is a background round trip
                try:
                    permit = await b.acquire("k", "m", 0)
                    break
                except RateLimited:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("a released slot never freed for the other process")
            with pytest.raises(RateLimited):
                await b.acquire("k", "m", 0)
            clock.advance(31.0)  # the dead process's permit expires
            second = await b.acquire("k", "m", 0)
            b.release(permit)
            b.release(second)

    run(go)


def test_a_queued_request_waits_for_the_other_processes_slot(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, RateRule(None, None, None, None, 1), on_limit="queue") as (a, b):
            held = await a.acquire("k", "m", 0)
            waiting = asyncio.ensure_future(b.acquire("k", "m", 0))
            for _ in range(5):  # it polls: a slot in another process sends no local wake-up
                await asyncio.sleep(0.01)
                clock.advance(0.05)
            assert not waiting.done()
            a.release(held)
            for _ in range(200):
                if waiting.done():
                    break
                await asyncio.sleep(0.01)
                clock.advance(0.05)
            b.release(await waiting)

    run(go)


def test_a_governor_hold_reaches_the_other_process(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, RateRule(None, None, 100, None, None)) as (a, b):
            governors = []
            for limiter in (a, b):
                governor = UpstreamGovernor()
                governor.shared, governor.wall, governor.shared_name = limiter.shared, clock, "up"
                limiter.governor = governor
                governors.append(governor)
            governors[0].observe(429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"},
                                 clock.monotonic(), "m")
            for _ in range(100):  # the hold is shared in the background
                try:
                    b.release(await b.acquire("k", "m", 0))
                except RateLimited as exc:
                    assert "upstream is at its rate limit" in exc.message
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the other process never saw the upstream's hold")
            clock.advance(21.0)
            b.release(await b.acquire("k", "m", 0))

    run(go)


def test_redis_away_fails_closed_or_limits_locally(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        rule = RateRule(None, None, 3, None, None)
        async with pair(redis_server, clock, rule) as (strict, _), \
                pair(redis_server, clock, rule, on_unavailable="local") as (lenient, _):
            redis_server.stop()
            with pytest.raises(StateUnavailable):
                await strict.acquire("k", "m", 0)
            for _ in range(3):  # this process's own buckets: still at most the limit
                lenient.release(await lenient.acquire("k", "m", 0))
            with pytest.raises(RateLimited):
                await lenient.acquire("k", "m", 0)
            assert isinstance(lenient.shared, RedisState) and lenient.shared.health()["degraded_to_local"]

    run(go)
