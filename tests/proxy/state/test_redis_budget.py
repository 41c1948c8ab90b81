"""BudgetBook on a real Redis: two books (two gateway processes) share one budget; reservations are
atomic, expire when their process is gone, and the ledger seeds a period's counter only once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.clock import ManualClock
from proxy.stages.budget import BudgetBook, BudgetExceeded, BudgetRule
from proxy.state import StateUnavailable
from proxy.state.redis import RedisState

from ...redis_server import RedisServer

LIMIT = 50_000  # $0.05 in micro-dollars


def make_state(server: RedisServer, **kwargs: object) -> RedisState:
    from types import SimpleNamespace

    config = SimpleNamespace(state=SimpleNamespace(url=server.url, password_env=None, prefix=kwargs.get("prefix", "t:"),
                                                   reservation_ttl_s=kwargs.get("ttl", 60.0),
                                                   on_unavailable=kwargs.get("on_unavailable", "closed"),
                                                   # generous: a loaded machine (the full suite) is no outage
                                                   timeout_s=kwargs.get("timeout", 2.0)),
                             upstream=SimpleNamespace(timeout_s=600.0))
    return RedisState.from_config(config)


def book(state: RedisState, clock: ManualClock, rules: list[BudgetRule] | None = None) -> BudgetBook:
    b = BudgetBook(rules or [BudgetRule(None, None, LIMIT, None, "day")], clock)
    b.shared = state
    return b


@contextlib.asynccontextmanager
async def pair(server: RedisServer, clock: ManualClock, **kwargs: object) -> AsyncIterator[tuple[BudgetBook,
                                                                                                  BudgetBook]]:
    """Two books on one Redis, as two gateway processes have."""
    a, b = make_state(server, **kwargs), make_state(server, **kwargs)
    try:
        yield book(a, clock), book(b, clock)
    finally:
        await a.stop()
        await b.stop()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_two_books_never_overspend_one_budget_together(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock) as (a, b):
            worst, real = 3_000, 2_000

            async def one(which: BudgetBook) -> bool:
                try:
                    held = await which.admit(None, "m", worst, 10)
                except BudgetExceeded:
                    return False
                await asyncio.sleep(random.random() / 1000)
                await which.asettle(held, real, 8)
                return True

            results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(100)))
            admitted = sum(results)
            # each admission needed worst-case room: spent + reserved + worst <= limit at the time
            assert admitted * real <= LIMIT
            assert admitted >= LIMIT // worst  # and the room was really used, not wasted
            status_a, status_b = a.status()[0], b.status()[0]
            await a.admit(None, "m", 0, 0)  # refresh both mirrors
            await b.admit(None, "m", 0, 0)
            assert a.status()[0]["spent_usd"] == b.status()[0]["spent_usd"] == f"{admitted * real / 1e6:.6f}"
            assert status_a["reserved_usd"] is not None and status_b is not None
            with pytest.raises(BudgetExceeded):
                await a.admit(None, "m", LIMIT - admitted * real + 1, 1)
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", LIMIT - admitted * real + 1, 1)

    run(go)


def test_a_dead_processes_reservation_expires_and_settled_spend_stays(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, ttl=30.0) as (a, b):
            settled = await a.admit(None, "m", 10_000, 1)
            await a.asettle(settled, 10_000, 1)
            await a.admit(None, "m", 40_000, 1)  # held, never settled: its process "dies"
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", 1_000, 1)
            clock.advance(29.0)
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", 1_000, 1)
            clock.advance(2.0)
            held = await b.admit(None, "m", 40_000, 1)  # the dead reservation is gone: its room is free again
            await b.asettle(held, 40_000, 1)
            assert b.status()[0]["spent_usd"] == "0.050000"
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", 1, 0)

    run(go)


def test_a_settle_after_expiry_counts_its_cost_once(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock, ttl=10.0) as (a, b):
            slow = await a.admit(None, "m", 20_000, 5)
            clock.advance(11.0)
            await b.admit(None, "m", 0, 0)  # purges the expired reservation
            await a.asettle(slow, 15_000, 4)
            assert a.status()[0]["spent_usd"] == "0.015000"
            assert a.status()[0]["reserved_usd"] == "0.000000"

    run(go)


def test_the_ledger_seeds_a_period_once(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock) as (a, b):
            for which in (a, b):  # both processes found the same $0.02 in the (shared) ledger at start
                which.accounts(None, "m")[0].spent_micros = 20_000
                await which.seed_shared()
            assert a.status()[0]["spent_usd"] == b.status()[0]["spent_usd"] == "0.020000"
            held = await a.admit(None, "m", 30_000, 0)
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", 1, 0)
            await a.asettle(held, 30_000, 0)
            a.accounts(None, "m")[0].spent_micros = 20_000  # a restart re-reads the ledger...
            await a.seed_shared()
            assert a.status()[0]["spent_usd"] == "0.050000"  # ...and Redis keeps its own counter

    run(go)


def test_periods_roll_over_in_redis(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        async with pair(redis_server, clock) as (a, b):
            held = await a.admit(None, "m", LIMIT, 0)
            await a.asettle(held, LIMIT, 0)
            with pytest.raises(BudgetExceeded):
                await b.admit(None, "m", 1, 0)
            clock.advance(86_400)
            await b.admit(None, "m", LIMIT, 0)

    run(go)


def test_unreachable_redis_fails_closed_fast_or_enforces_locally(redis_server: RedisServer) -> None:
    async def go() -> None:
        clock = ManualClock()
        closed, local = make_state(redis_server), make_state(redis_server, on_unavailable="local")
        try:
            strict, lenient = book(closed, clock), book(local, clock)
            await strict.admit(None, "m", 1_000, 0)
            redis_server.stop()
            with pytest.raises(StateUnavailable) as refused:
                await strict.admit(None, "m", 1_000, 0)
            assert refused.value.status == 503 and refused.value.headers["x-should-retry"] == "true"
            with pytest.raises(StateUnavailable):  # marked down: refused at once, no round trip
                await strict.admit(None, "m", 1_000, 0)
            assert closed.health()["mode"] == "closed"
            held = await lenient.admit(None, "m", 40_000, 0)
            assert local.health()["degraded_to_local"] is True
            with pytest.raises(BudgetExceeded):  # this process's own view still enforces the limit
                await lenient.admit(None, "m", 20_000, 0)
            await lenient.asettle(held, 30_000, 0)
            assert local.health()["backlog"] == 1
            redis_server.start()
            for _ in range(200):  # the probe finds Redis again by itself
                if closed.available and local.available:
                    break
                await asyncio.sleep(0.05)
            assert closed.available and local.available and local.backlog == []
            await strict.admit(None, "m", 0, 0)
            assert strict.status()[0]["spent_usd"] == "0.030000"  # spend settled while away was not lost
        finally:
            await closed.stop()
            await local.stop()

    run(go)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 20_000), st.floats(0, 1), st.booleans()),
                min_size=1, max_size=40))
def test_random_concurrent_schedules_never_overspend(tmp_path_factory: pytest.TempPathFactory,
                                                     redis_server: RedisServer,
                                                     steps: list[tuple[int, int, float, bool]]) -> None:
    """Whatever interleaving, each request reserving its worst case and settling at most that (or
    failing and settling nothing): spent never passes the limit, and equals the sum of what settled."""
    async def run() -> None:
        clock = ManualClock()
        prefix = f"p{uuid.uuid4().hex}:"  # hypothesis seeds `random`: not unique
        states = [make_state(redis_server, prefix=prefix) for _ in range(2)]
        books = [book(s, clock) for s in states]
        settled: list[int] = []

        async def one(which: int, worst: int, fraction: float, fails: bool) -> None:
            try:
                held = await books[which].admit(None, "m", worst, 0)
            except BudgetExceeded:
                return
            await asyncio.sleep(0)
            cost = 0 if fails else int(worst * fraction)
            await books[which].asettle(held, cost, 0)
            settled.append(cost)

        await asyncio.gather(*(one(*step) for step in steps))
        sm, rm = (int(v or 0) for v in await states[0].client.hmget(
            f"{prefix}budget:day|global|{int(clock.wall()) // 86400 * 86400}", "sm", "rm"))
        assert sm == sum(settled) <= LIMIT and rm == 0
        for s in states:
            await s.stop()

    asyncio.run(run())




def test_a_hung_redis_times_out_instead_of_hanging(redis_server: RedisServer) -> None:
    """A server that accepts nothing any more (SIGSTOP): each call gives up after `timeout_s`."""
    import os
    import signal
    import time

    async def go() -> None:
        clock = ManualClock()
        state = make_state(redis_server, timeout=0.5)
        try:
            strict = book(state, clock)
            await strict.admit(None, "m", 1_000, 0)
            assert redis_server.proc is not None
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(StateUnavailable):
                    await strict.admit(None, "m", 1_000, 0)
                assert time.monotonic() - started < 10 * state.timeout_s  # bounded by the timeout (a generous bound)
                assert state.health()["available"] is False
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            for _ in range(200):  # the probe finds it answering again
                if state.available:
                    break
                await asyncio.sleep(0.05)
            held = await strict.admit(None, "m", 1_000, 0)
            await strict.asettle(held, 1_000, 0)
        finally:
            await state.stop()

    run(go)
