"""Rate limits with a controlled clock: no real sleeping."""

from __future__ import annotations

import asyncio

import pytest

from proxy.clock import ManualClock
from proxy.stages.ratelimit import (
    Bucket,
    RateLimited,
    RateLimiter,
    RateRule,
    UpstreamGovernor,
    format_duration,
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
                         clock.monotonic(), "m")
        waiting = asyncio.create_task(limiter.acquire("a", "m", 0))
        await settle()
        clock.advance(1.9)
        await settle()
        assert not waiting.done()
        clock.advance(0.1)
        await settle()
        assert waiting.done()
        governor.observe(429, {"retry-after-ms": "500", "x-ratelimit-remaining-requests": "0"}, clock.monotonic(), "m")
        assert governor.wait(clock.monotonic(), "m") == pytest.approx(0.5)

    run(scenario())


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1, "1s"), (60, "1m0s"), (3723, "1h2m3s"),
                                               (0.0001, "1ms")])
def test_reset_format_is_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- the adaptive governor: properties over any sequence of upstream answers ----------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from proxy.stages.retry import MAX_HINT_S  # noqa: E402

EXPIRED_S = 2 * MAX_HINT_S + 1  # past the longest any evidence lasts (a count, then one refilled window)

durations = st.one_of(st.floats(0.001, 120).map(lambda s: f"{s:.3f}s"), st.integers(1, 90_000).map(lambda m: f"{m}ms"),
                      st.sampled_from(["", "soon", "1m0s", "-1s"]))
counts = st.one_of(st.integers(-3, 600).map(str), st.sampled_from(["", "x", "nan", "inf", "1e3", "0.5"]))
# A stated limit below 3 rightly holds a third request in one window: the properties below admit 3 at once.
limits = st.one_of(st.integers(3, 600).map(str), st.sampled_from(["", "x", "nan", "inf", "1e3"]))
header_sets = st.fixed_dictionaries({}, optional={
    "x-ratelimit-remaining-requests": counts, "x-ratelimit-reset-requests": durations,
    "x-ratelimit-limit-requests": limits, "x-ratelimit-remaining-tokens": counts,
    "x-ratelimit-reset-tokens": durations, "retry-after": st.sampled_from(["1", "60", "3600", "nan", "x"]),
    "retry-after-ms": st.integers(0, 120_000).map(str)})
models = st.sampled_from(["gpt-4o", "gpt-4o-mini", None])
events = st.lists(st.one_of(
    st.tuples(st.just("answer"), st.sampled_from([200, 429, 500, 503]), header_sets, models),
    st.tuples(st.just("admit"), models), st.tuples(st.just("finish"), models),
    st.tuples(st.just("time"), st.floats(0, 30))), max_size=40)


def play(governor: UpstreamGovernor, sequence: list[tuple], now: float = 0.0) -> float:
    """Feed a sequence to the governor; returns the time at its end. Finishes only what was admitted."""
    open_: list[object] = []
    for event in sequence:
        if event[0] == "answer":
            governor.observe(event[1], event[2], now, event[3])
        elif event[0] == "admit":
            governor.admitted(now, event[1])
            open_.append(event[1])
        elif event[0] == "finish" and event[1] in open_:
            open_.remove(event[1])
            governor.finished(event[1])
        elif event[0] == "time":
            now += event[1]
    return now


@settings(max_examples=300, deadline=None)
@given(events, st.lists(st.sampled_from([200, 500, 503]), min_size=1, max_size=5), models)
def test_governor_holds_nothing_once_the_evidence_has_expired(sequence: list[tuple], later: list[int],
                                                               model: str | None) -> None:
    """Whatever the upstream said, once its evidence has expired and the answers since carry no
    remaining count, admission is not held: the gateway never latches into one at a time."""
    governor = UpstreamGovernor()
    now = play(governor, sequence) + EXPIRED_S
    for status in later:
        governor.observe(status, {}, now, model)
    for _ in range(3):  # several requests at once: none of them waits for another
        assert governor.wait(now, model) == 0.0
        governor.admitted(now, model)


@settings(max_examples=300, deadline=None)
@given(events, models)
def test_governor_holds_nothing_once_every_request_is_answered_and_the_evidence_expired(
        sequence: list[tuple], model: str | None) -> None:
    governor = UpstreamGovernor()
    governor.observe(200, {}, 0.0, "warm-up")  # past the first answer (the start's one-at-a-time probe)
    now = play(governor, [*sequence, *[("finish", m) for m in ("gpt-4o", "gpt-4o-mini", None) for _ in sequence]])
    now += EXPIRED_S
    for _ in range(3):
        assert governor.wait(now, model) == 0.0
        governor.admitted(now, model)


@settings(max_examples=300, deadline=None)
@given(events, st.floats(0.001, MAX_HINT_S), st.sampled_from([200, 429]), models)
def test_a_window_at_zero_holds_until_its_reset_and_no_longer(sequence: list[tuple], reset: float, status: int,
                                                              model: str | None) -> None:
    governor = UpstreamGovernor()
    now = play(governor, sequence) + EXPIRED_S
    governor.observe(status, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": f"{reset}s"},
                     now, model)
    for fraction in (0.0, 0.5, 0.999):
        held = governor.wait(now + reset * fraction, model)
        assert held is not None and held == pytest.approx(reset * (1 - fraction))
    assert governor.wait(now + reset + 1e-9, model) == 0.0


@settings(max_examples=300, deadline=None)
@given(events)
def test_evidence_about_one_model_never_holds_another(sequence: list[tuple]) -> None:
    governor = UpstreamGovernor()
    governor.observe(200, {}, 0.0, "warm-up")  # past the first answer (the start's one-at-a-time probe)
    now = play(governor, [e for e in sequence if e[-1] != "other-model" or e[0] == "time"])
    assert governor.wait(now, "other-model") == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600), st.sampled_from(["1", "60", "3600"]), models)
def test_a_429_that_leaves_requests_is_not_a_block(remaining: int, retry_after: str, model: str | None) -> None:
    """A 429 whose x-ratelimit-remaining-requests is above zero is about that request (its tokens, say):
    it holds no one else; the request itself retries with its own backoff."""
    governor = UpstreamGovernor()
    governor.admitted(0.0, model)
    governor.observe(429, {"retry-after": retry_after, "x-ratelimit-remaining-requests": str(remaining)}, 0.0, model)
    assert governor.wait(0.0, model) == 0.0
    governor.observe(429, {"retry-after": retry_after}, 0.0, model)  # a bare 429 says nothing of a window
    assert governor.wait(0.0, model) == 0.0


def test_after_a_429_the_limiter_admits_everyone_at_once_again() -> None:
    """The reported latch: an upstream that sends x-ratelimit-* only on its 429s (the mock, vLLM). After
    the 429's reset, answers carry no count: requests must go out together, not one at a time."""
    async def scenario() -> None:
        clock = ManualClock()
        governor = UpstreamGovernor()
        limiter = RateLimiter([], clock, on_limit="queue", max_wait_s=30, governor=governor)
        first = await limiter.acquire("a", "m", 0)
        governor.observe(429, {"retry-after-ms": "1000", "x-ratelimit-limit-requests": "500",
                               "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1000ms"},
                         clock.monotonic(), "m")
        other_model = await limiter.acquire("a", "other", 0)  # another model is not held
        waiting = [asyncio.create_task(limiter.acquire("a", "m", 0)) for _ in range(5)]
        await settle()
        assert not any(t.done() for t in waiting)
        clock.advance(1.0)
        await settle()
        assert all(t.done() for t in waiting)  # all five at once, the first still in flight
        governor.observe(200, {}, clock.monotonic(), "m")
        more = [asyncio.create_task(limiter.acquire("a", "m", 0)) for _ in range(20)]
        await settle()
        assert all(t.done() for t in more)
        for permit in [first, other_model, *(t.result() for t in waiting + more)]:
            limiter.release(permit)

    run(scenario())


def test_a_count_at_zero_waits_for_an_answer_not_for_a_request_to_finish() -> None:
    """Counted down to zero, waiting requests go as soon as an answer's headers bring a fresh count (a
    slow stream ahead of them does not hold them until its end)."""
    async def scenario() -> None:
        clock = ManualClock()
        governor = UpstreamGovernor()
        limiter = RateLimiter([], clock, on_limit="queue", max_wait_s=30, governor=governor)
        governor.observe(200, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "20s"}, 0.0, "m")
        stream = await limiter.acquire("a", "m", 0)
        waiting = asyncio.create_task(limiter.acquire("a", "m", 0))
        await settle()
        assert not waiting.done()  # counted down to zero: held
        governor.observe(200, {"x-ratelimit-remaining-requests": "40", "x-ratelimit-reset-requests": "20s"},
                         clock.monotonic(), "m")  # the stream's headers
        await settle()
        assert waiting.done()
        limiter.release(stream)
        limiter.release(waiting.result())

    run(scenario())


def test_queueing_is_bounded_by_the_requests_own_deadline() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        limiter = RateLimiter([RateRule(None, None, None, None, 1)], clock, on_limit="queue", max_wait_s=30)
        first = await limiter.acquire("a", "m", 0)
        waiting = asyncio.create_task(limiter.acquire("a", "m", 0, max_wait_s=2.0))
        await settle()
        clock.advance(1.9)
        await settle()
        assert not waiting.done()
        clock.advance(0.2)
        await settle()
        with pytest.raises(RateLimited):
            waiting.result()
        limiter.release(first)

    run(scenario())


def test_with_pass_through_each_client_key_is_its_own_scope() -> None:
    """Passing the client's key upstream makes the upstream's limit that key's: one client's window at
    zero holds that client on that model only."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from proxy.exchange import Exchange

    def exchange(token: str) -> Exchange:
        ex = Exchange("POST", "/v1/chat/completions", "", CIMultiDictProxy(CIMultiDict()), b'{"model": "m"}')
        ex.client_token = token
        return ex

    governor = UpstreamGovernor(per_client=True)
    a, b = exchange("sk-a"), exchange("sk-b")
    governor.observe(429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}, 0.0,
                     governor.key(a))
    assert governor.wait(1.0, governor.key(a)) == pytest.approx(29.0)
    assert governor.wait(1.0, governor.key(b)) == 0.0
    shared = UpstreamGovernor()
    assert shared.key(a) == shared.key(b) == "m"


def test_the_governor_forgets_expired_evidence_past_its_bound() -> None:
    governor = UpstreamGovernor()
    for i in range(3 * UpstreamGovernor.MAX_KEYS):
        governor.observe(200, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s"},
                         float(i), f"model-{i}")
    assert len(governor._states) <= UpstreamGovernor.MAX_KEYS + 1


def test_a_stated_limit_of_one_holds_the_second_request_of_a_window_until_an_answer() -> None:
    """What the properties leave out: an upstream that says it takes one request per window gets one."""
    governor = UpstreamGovernor()
    governor.observe(200, {}, 0.0, "warm-up")
    governor.observe(200, {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": "1s"}, 0.0, "m")
    now = EXPIRED_S
    assert governor.wait(now, "m") == 0.0
    governor.admitted(now, "m")
    assert governor.wait(now, "m") is None  # held (softly) until the first one is answered
    governor.finished("m")
    governor.observe(200, {}, now + 0.1, "m")  # an answer with no count: nothing known, nothing held
    assert governor.wait(now + 0.1, "m") == 0.0


def test_a_request_admitted_as_its_window_refills_is_counted_once() -> None:
    """Found by the property above: the window of a count at zero refills on the admission itself; the
    request was then counted twice (in flight, and taken from what was left), so a third one was held."""
    governor = UpstreamGovernor()
    governor.observe(200, {}, 0.0, "warm-up")
    governor.observe(200, {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": "550ms"}, 0.0, "gpt-4o")
    for _ in range(3):
        assert governor.wait(121.0, "gpt-4o") == 0.0
        governor.admitted(121.0, "gpt-4o")
