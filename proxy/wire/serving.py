"""Running an aiohttp application until SIGINT or SIGTERM; shared by both servers' commands.

Every connection is guarded (`GuardedServer`): a request's line and headers must arrive within
`header_timeout_s` of its first byte (or of the connection opening), so connections that send header
bytes slowly or nothing at all are closed with a 408 (idle keep-alive connections between requests are
aiohttp's `keepalive_timeout`'s business); at most `max_connections` are open at once (past it a new
connection gets a 503 and is closed); a stop signal gives the requests in flight `shutdown_grace_s`
in total, then cuts them (a handler asks `cut_by_shutdown(request)` why it was cancelled).

The header timeout costs no timer per request: a connection notes when its wait for a request's head
began (nothing at all when the head arrives whole in one read, the usual case), and one sweep per
server, every `sweep_period(header_timeout_s)` = min(1 s, header_timeout_s / 4) while connections are
open, cuts the waits that are `header_timeout_s` old. A slow client is therefore cut no sooner than
`header_timeout_s` after its wait began and no later than `header_timeout_s` + one sweep period
(later only by as long as the event loop is kept busy). Bytes of a next head that arrive while a
request is being handled (pipelining) start no wait, as with the timer before: such a connection is
left to `keepalive_timeout` once it is idle.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .errors import SERVER_ERROR
from .jsoncodec import dumps

HEADER_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 1024
SHUTDOWN_GRACE_S = 10.0
KEEPALIVE_TIMEOUT_S = 75.0  # aiohttp's web.run_app default (a bare AppRunner would keep idle ones an hour)
CUT_WAIT_S = 1.0  # after the grace, how long cut handlers get to unwind (write their rows)
SWEEP_PERIOD_MAX_S = 1.0

# the cyclic GC's youngest generation is collected after this many new container objects (Python's
# default: 700, a collection every few requests)
GC_YOUNG_THRESHOLD = 20_000

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def _busy_answer() -> bytes:
    body = dumps({"error": {"message": "The server has too many open connections; please retry shortly.",
                            "type": SERVER_ERROR, "param": None, "code": "too_many_connections"}})
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


_BUSY = _busy_answer()


def settle_heap() -> None:
    """Once started, before serving: what start-up made (modules, config, tables) is kept for good, so
    it leaves the cyclic GC's reach (`gc.freeze`), and the youngest generation is collected every
    `GC_YOUNG_THRESHOLD` allocations instead of every 700. A request's objects are freed by reference
    counting as it ends; with Python's defaults a busy gateway spent ~5% of its event loop's CPU in the
    collector (perf), the older generations walking the whole start-up heap."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 50)


def sweep_period(header_timeout_s: float) -> float:
    """How often a server sweeps for slow heads: how late past `header_timeout_s` a slow client may be cut."""
    return min(SWEEP_PERIOD_MAX_S, header_timeout_s / 4)


def cut_by_shutdown(request: web.BaseRequest) -> bool:
    """True when the request's handler was cancelled because the server stopped (not the client)."""
    return getattr(request.protocol, "cut_by_shutdown", False)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol, noting when it began waiting for a request's head (for its
    server's sweep), with a place in the connection count."""

    __slots__ = ("header_wait_since", "_counted", "cut_by_shutdown")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.header_wait_since: float | None = None  # loop.time() the current wait for a head began
        self._counted = True  # counted by the server when it made this protocol
        self.cut_by_shutdown = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.header_wait_since = self._loop.time()  # the opening starts the wait for the first head
        super().connection_made(transport)  # registers with the server, which starts its sweep

    def connection_lost(self, exc: BaseException | None) -> None:
        guard = self._manager
        if self._counted and isinstance(guard, GuardedServer):
            self._counted = False
            guard.open -= 1
        self.header_wait_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        RequestHandler.data_received(self, data)  # (not super(): this runs for every read)
        if self._messages:  # a head is complete (the usual case: one read brings a whole head)
            self.header_wait_since = None
        elif self.header_wait_since is None and (waiter := self._waiter) is not None and not waiter.done() \
                and not (self._force_close or self._close):
            # the read began a request's head but did not finish it, while waiting for one (not
            # handling one: then the bytes are its body, or a pipelined head, as before it was)
            self.header_wait_since = self._loop.time()

    def _headers_too_slow(self) -> None:
        self.header_wait_since = None
        if self.transport is not None and not self._messages and not self._request_in_progress:
            self.transport.write(_TIMED_OUT)
            self.force_close()


class _Refuse(asyncio.Protocol):
    """A connection past `max_connections`: a 503 in OpenAI's envelope, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_BUSY)
        transport.close()


class GuardedServer(Server):
    """aiohttp's low-level server with `GuardedHandler` connections, a connection cap, and a shutdown
    that gives requests in flight one grace period in total (aiohttp's waits its timeout twice)."""

    def __init__(self, server: Server, *, header_timeout_s: float, max_connections: int) -> None:
        super().__init__(server.request_handler, request_factory=server.request_factory,
                         handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs)
        self.header_timeout_s, self.max_connections = header_timeout_s, max_connections
        self.sweep_period_s = sweep_period(header_timeout_s)
        self.open = 0
        self.refused = 0
        self.sweeps = 0  # how many sweeps ran (for tests and curiosity)
        self._sweeper: asyncio.TimerHandle | None = None
        self._stopped = False

    def __call__(self) -> RequestHandler | _Refuse:  # type: ignore[override]  # a refusal protocol, by design
        if self.open >= self.max_connections:
            self.refused += 1
            return _Refuse()
        handler = GuardedHandler(self, loop=self._loop, **self._kwargs)
        self.open += 1
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if self._sweeper is None and not self._stopped:
            self._sweeper = self._loop.call_later(self.sweep_period_s, self._sweep)

    @property
    def sweeping(self) -> bool:
        """Whether a sweep is scheduled (while connections are open, until shutdown)."""
        return self._sweeper is not None

    def _sweep(self) -> None:
        """Cuts every connection whose wait for a request's head is `header_timeout_s` old, then comes
        back in one period while any connection is open."""
        self._sweeper = None
        if not self._connections or self._stopped:
            return
        self.sweeps += 1
        due = self._loop.time() - self.header_timeout_s
        for handler in tuple(self._connections):
            if isinstance(handler, GuardedHandler):
                since = handler.header_wait_since
                if since is not None and since <= due:
                    handler._headers_too_slow()
        self._sweeper = self._loop.call_later(self.sweep_period_s, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:
        handlers = list(self._connections)
        busy = [t for h in handlers if (t := h._task_handler) is not None and not t.done()]
        if busy and timeout:
            await asyncio.wait(busy, timeout=timeout)
        cut = []
        for handler in handlers:
            task = handler._task_handler
            if task is not None and not task.done():
                if isinstance(handler, GuardedHandler):
                    handler.cut_by_shutdown = True
                task.cancel()
                cut.append(task)
        if cut:
            await asyncio.wait(cut, timeout=CUT_WAIT_S)
        for handler in handlers:
            handler.force_close()
        self._connections.clear()
        self._stopped = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a `GuardedServer`."""

    def __init__(self, app: web.Application, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT_S)
        super().__init__(app, **kwargs)
        self._header_timeout_s, self._max_connections = header_timeout_s, max_connections

    async def _make_server(self) -> Server:
        return GuardedServer(await super()._make_server(), header_timeout_s=self._header_timeout_s,
                             max_connections=self._max_connections)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str], None],
    shutdown_timeout: float = SHUTDOWN_GRACE_S,
    handler_cancellation: bool = False,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    reuse_port: bool = False,
) -> None:
    """Bind, report the URL once requests are accepted, then run until a stop signal; clean up
    (stop accepting, let in-flight requests finish within `shutdown_timeout` in total, cut the rest,
    run cleanup_ctx)."""
    runner = GuardedRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           handler_cancellation=handler_cancellation, header_timeout_s=header_timeout_s,
                           max_connections=max_connections)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else (host, port)
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        settle_heap()
        on_ready(f"http://{shown}:{bound[1]}")
        await stop.wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, on_ready: Callable[[str], None], *,
        handler_cancellation: bool = False, shutdown_grace_s: float = SHUTDOWN_GRACE_S,
        header_timeout_s: float = HEADER_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
        reuse_port: bool = False) -> None:
    """Blocking entry point for a command; on uvloop where it is installed (less CPU per request,
    see benchmarks/gateway.py --uvloop)."""
    main = serve(app, host, port, on_ready=on_ready, handler_cancellation=handler_cancellation,
                 shutdown_timeout=shutdown_grace_s, header_timeout_s=header_timeout_s,
                 max_connections=max_connections, reuse_port=reuse_port)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
