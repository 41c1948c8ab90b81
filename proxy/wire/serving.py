"""Running an aiohttp application until SIGINT or SIGTERM; shared by both servers' commands.

Every connection is guarded (`GuardedServer`): a request's line and headers must arrive within
`header_timeout_s` of its first byte (or of the connection opening), so connections that send header
bytes slowly or nothing at all are closed with a 408 (idle keep-alive connections between requests are
aiohttp's `keepalive_timeout`'s business); at most `max_connections` are open at once (past it a new
connection gets a 503 and is closed); a stop signal gives the requests in flight `shutdown_grace_s`
in total, then cuts them (a handler asks `cut_by_shutdown(request)` why it was cancelled).
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


def cut_by_shutdown(request: web.BaseRequest) -> bool:
    """True when the request's handler was cancelled because the server stopped (not the client)."""
    return getattr(request.protocol, "cut_by_shutdown", False)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with a header read timeout and a place in the connection count."""

    __slots__ = ("_header_timer", "_counted", "cut_by_shutdown")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = True  # counted by the server when it made this protocol
        self.cut_by_shutdown = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._manager
        super().connection_made(transport)
        if isinstance(guard, GuardedServer):
            self._arm(guard.header_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        guard = self._manager
        if self._counted and isinstance(guard, GuardedServer):
            self._counted = False
            guard.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and data and self._idle():  # the first bytes of a new request
            guard = self._manager
            if isinstance(guard, GuardedServer):
                self._arm(guard.header_timeout_s)
        super().data_received(data)
        if self._header_timer is not None and self._messages:  # its headers are complete
            self._disarm()

    def _idle(self) -> bool:
        """Waiting for the next request (not handling one, none queued)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _arm(self, seconds: float) -> None:
        self._header_timer = self._loop.call_later(seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
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
        self.open = 0
        self.refused = 0

    def __call__(self) -> RequestHandler | _Refuse:  # type: ignore[override]  # a refusal protocol, by design
        if self.open >= self.max_connections:
            self.refused += 1
            return _Refuse()
        handler = GuardedHandler(self, loop=self._loop, **self._kwargs)
        self.open += 1
        return handler

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
