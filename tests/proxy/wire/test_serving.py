"""The header guard of `proxy.wire.serving` through real sockets, on a server whose clock the test moves.

The server (a `GuardedRunner`) runs in a thread on an event loop whose `time()` is real time plus a skew
the test adds to (`jump`): timers that come due by then run, so "T seconds later" takes no T seconds.
The loop also counts the timers `proxy.wire.serving` schedules, to show they do not grow with
connections or requests (one sweep per server)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.wire import serving
from proxy.wire.serving import GuardedHandler, GuardedRunner, GuardedServer, sweep_period

T = 60.0  # header_timeout_s of the servers under a moved clock
P = sweep_period(T)
MARGIN = 5.0  # real seconds the test itself may take between two moves of the clock, at most
HEAD = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n"
R = TypeVar("R")


class SkewLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs at real speed plus the jumps the test makes."""

    def __init__(self) -> None:
        super().__init__()
        self.skew = 0.0
        self.guard_timers = 0  # timers scheduled by proxy.wire.serving's own code

    def time(self) -> float:
        return super().time() + self.skew

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        if getattr(callback, "__module__", None) == serving.__name__:
            self.guard_timers += 1
        return super().call_at(when, callback, *args, context=context)


class Guarded:
    """A `GuardedRunner` serving GET /hello on 127.0.0.1 in a thread, on a `SkewLoop`."""

    def __init__(self, header_timeout_s: float) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(body=b"hello")

        app = web.Application()
        app.router.add_get("/hello", hello)
        self.loop = SkewLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = GuardedRunner(app, header_timeout_s=header_timeout_s, access_log=None, keepalive_timeout=3600)
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.server: GuardedServer
        self.run(self._start())

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.address = self.runner.addresses[0][:2]
        assert isinstance(self.runner.server, GuardedServer)
        self.server = self.runner.server  # kept: the runner forgets it at cleanup

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def on_loop(self, func: Callable[[], R]) -> R:
        async def call() -> R:
            return func()
        result: R = self.run(call())
        return result

    def jump(self, seconds: float) -> None:
        """Moves the server's clock forward; returns once every timer due by then (the sweep) has run."""
        async def move() -> None:
            self.loop.skew += seconds
            marker = self.loop.create_future()
            self.loop.call_at(self.loop.time(), marker.set_result, None)  # runs after the timers due before
            await marker
        self.run(move())

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not self.on_loop(condition):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server never got there: {what}")
            time.sleep(0.005)

    def handlers(self) -> list[GuardedHandler]:
        return [h for h in self.server.connections if isinstance(h, GuardedHandler)]

    def waits(self) -> int:
        """Connections whose wait for a request's head is running (call on the loop)."""
        return sum(h.header_wait_since is not None for h in self.handlers())

    def waiting(self) -> int:
        """`waits()`, from the test's thread."""
        return self.on_loop(self.waits)

    def all_idle(self, n: int) -> None:
        """Waits until `n` connections are open, each waiting for its next request."""
        def idle() -> bool:
            handlers = self.handlers()
            return len(handlers) == n and all((w := h._waiter) is not None and not w.done() for h in handlers)
        self.wait_until(idle, f"{n} idle connections")

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address)
        sock.settimeout(20)
        return sock

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def guarded() -> Iterator[Guarded]:
    server = Guarded(T)
    yield server
    server.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[Guarded]:
    server = Guarded(T)
    yield server
    server.close()


def response(sock: socket.socket) -> bytes:
    """One whole answer to GET /hello (status line to body)."""
    got = b""
    while not got.endswith(b"hello"):
        data = sock.recv(65536)
        assert data, f"closed after {got!r}"
        got += data
    return got


def until_closed(sock: socket.socket) -> bytes:
    got = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data


def cut_with_408(sock: socket.socket) -> bool:
    answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    return True


def test_the_sweep_period_bounds_the_lateness() -> None:
    assert sweep_period(30.0) == 1.0 and sweep_period(60.0) == 1.0
    assert sweep_period(2.0) == 0.5 and sweep_period(0.2) == pytest.approx(0.05)


def test_a_connection_that_sends_nothing_is_cut_within_the_timeout_and_one_sweep(guarded: Guarded) -> None:
    assert guarded.server.sweep_period_s == P
    with guarded.connect() as silent:
        guarded.wait_until(lambda: guarded.waits() == 1, "the connection opened")
        guarded.jump(T - MARGIN)
        assert guarded.waiting() == 1  # not yet
        guarded.jump(MARGIN + P)
        assert cut_with_408(silent)


def test_a_head_trickling_past_the_timeout_is_cut_and_one_just_under_it_is_served(guarded: Guarded) -> None:
    slow, fast = guarded.connect(), guarded.connect()
    with slow, fast:
        for sock in (slow, fast):  # a first request each, then both sit idle far longer than the timeout
            sock.sendall(HEAD)
            assert response(sock).startswith(b"HTTP/1.1 200")
        guarded.all_idle(2)
        guarded.jump(3 * T)
        for sock in (slow, fast):  # the next head's first bytes start its wait
            sock.sendall(HEAD[:5])
        guarded.wait_until(lambda: guarded.waits() == 2, "both waits started")
        for piece in (HEAD[5:10], HEAD[10:20], HEAD[20:30]):
            guarded.jump((T - MARGIN) / 3)
            slow.sendall(piece)
            fast.sendall(piece)
        assert guarded.waiting() == 2  # T - MARGIN after their first bytes: neither is cut
        fast.sendall(HEAD[30:])
        assert response(fast).startswith(b"HTTP/1.1 200")
        guarded.jump(MARGIN + P)  # T + P after its first byte, the slow one's head is still not whole
        assert cut_with_408(slow)
        fast.sendall(HEAD)  # the served one goes on
        assert response(fast).startswith(b"HTTP/1.1 200")


def test_an_idle_keep_alive_connection_is_not_this_guards_business(guarded: Guarded) -> None:
    with guarded.connect() as kept:
        kept.sendall(HEAD)
        assert response(kept).startswith(b"HTTP/1.1 200")
        guarded.all_idle(1)
        with guarded.connect() as silent:  # opened at the same time, never sends: cut, so sweeps did run
            guarded.wait_until(lambda: guarded.waits() == 1, "the silent connection opened")
            sweeps = guarded.server.sweeps
            for _ in range(5):
                guarded.jump(T)
            assert cut_with_408(silent)
            assert guarded.server.sweeps >= sweeps + 5
        kept.sendall(HEAD)
        assert response(kept).startswith(b"HTTP/1.1 200")


def test_many_connections_share_one_sweep_and_no_timer_per_request(guarded: Guarded) -> None:
    n, rounds = 40, 3
    socks = [guarded.connect() for _ in range(n)]
    try:
        timers = guarded.loop.guard_timers
        for _ in range(rounds):  # every request's head comes in two reads, so each one waits
            guarded.all_idle(n)
            for sock in socks:
                sock.sendall(HEAD[:7])
            guarded.wait_until(lambda: guarded.waits() == n, "every wait started")
            for sock in socks:
                sock.sendall(HEAD[7:])
            for sock in socks:
                assert response(sock).startswith(b"HTTP/1.1 200")
        guarded.all_idle(n)
        for sock in socks:  # then all stall at once: the sweeps cut every one
            sock.sendall(HEAD[:7])
        guarded.wait_until(lambda: guarded.waits() == n, "every wait started")
        sweeps = guarded.server.sweeps
        guarded.jump(T + P)
        assert all(cut_with_408(sock) for sock in socks)
        assert guarded.server.sweeps > sweeps
        # the only timers serving.py scheduled were the sweep's: one at the start, one per sweep after it
        assert guarded.loop.guard_timers - timers <= guarded.server.sweeps + 1
    finally:
        for sock in socks:
            sock.close()


def test_the_sweep_runs_only_while_connections_are_open_and_stops_at_shutdown() -> None:
    server = Guarded(T)
    try:
        assert not server.on_loop(lambda: server.server.sweeping)  # no connection yet: no sweep
        with server.connect() as sock:
            server.wait_until(lambda: server.server.sweeping, "a sweep is scheduled")
            sock.sendall(HEAD)
            assert response(sock).startswith(b"HTTP/1.1 200")
        server.wait_until(lambda: not server.server.connections, "the connection is gone")
        server.jump(P)
        assert not server.on_loop(lambda: server.server.sweeping)  # none open: the sweep stopped
        with server.connect() as sock:
            server.wait_until(lambda: server.server.sweeping, "a new connection restarts it")
            server.run(server.runner.cleanup())
            assert not server.on_loop(lambda: server.server.sweeping)
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(10)
        server.loop.close()


def test_on_a_real_clock_a_short_timeout_cuts_silent_and_trickling_heads() -> None:
    server = Guarded(0.2)
    try:
        with server.connect() as silent, server.connect() as trickle:
            for i in range(len(HEAD) - 4):  # one byte every 50 ms: the head would take about 3 s
                try:
                    trickle.sendall(HEAD[i:i + 1])
                except OSError:
                    break
                if server.on_loop(lambda: len(server.server.connections)) < 2:
                    break
                time.sleep(0.05)
            assert cut_with_408(trickle)
            assert cut_with_408(silent)
    finally:
        server.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(idle=st.floats(0, 3 * T),
       cuts=st.lists(st.integers(1, len(HEAD) - 1), min_size=1, max_size=4, unique=True).map(sorted),
       pauses=st.lists(st.floats(0, T / 2), min_size=4, max_size=4))
def test_a_head_is_served_iff_it_is_whole_within_the_timeout_of_its_first_byte(
        shared: Guarded, idle: float, cuts: list[int], pauses: list[float]) -> None:
    pieces = [HEAD[a:b] for a, b in zip([0, *cuts], [*cuts, len(HEAD)], strict=True)]
    pauses = pauses[:len(pieces) - 1]
    waited = sum(pauses)
    if T - MARGIN < waited < T + P:  # out of the band where either outcome is right
        pauses[-1] += T + P - waited
        waited = T + P
    with shared.connect() as sock:
        sock.sendall(HEAD)
        assert response(sock).startswith(b"HTTP/1.1 200")
        shared.all_idle(1)
        shared.jump(idle)  # idle between requests: not counted
        sock.sendall(pieces[0])
        shared.wait_until(lambda: shared.waits() == 1, "the wait started")
        cut = False
        for pause, piece in zip(pauses, pieces[1:], strict=True):
            shared.jump(pause)
            if shared.waiting() == 0:  # cut by a sweep (its head is not whole yet)
                cut = True
                break
            sock.sendall(piece)
        if waited >= T + P:
            assert cut and cut_with_408(sock)
        else:
            assert not cut
            assert response(sock).startswith(b"HTTP/1.1 200")
    shared.wait_until(lambda: not shared.server.connections, "the connection is gone")
