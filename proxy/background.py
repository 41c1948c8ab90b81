"""Run an aiohttp app on a free loopback port in a background thread, for callers that block (the sync
SDK, a pytest fixture): the pytest plugin's mock and gateway, and the test suite's servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar

from aiohttp import web

T = TypeVar("T")


class BackgroundServer:
    """`start()` it, then use `url` (`http://127.0.0.1:PORT`); `stop()` runs the app's cleanup and ends
    the thread. Also a context manager. The app is built on the server's own loop, by `make_app`."""

    def __init__(self, make_app: Callable[[], web.Application], *, host: str = "127.0.0.1", port: int = 0,
                 name: str = "oaigate-server") -> None:
        self._make_app = make_app
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._runner: web.AppRunner | None = None
        self._stopped = False
        self.app: web.Application | None = None
        self.url = ""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
            if self._runner is not None:
                self._loop.run_until_complete(self._runner.cleanup())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
        finally:
            self._loop.close()

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    def start(self, timeout: float = 30.0) -> Self:
        """Start serving; returns once the port accepts connections, or raises what went wrong."""
        self._thread.start()
        try:
            self.run(self._start(), timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def call(self, func: Callable[[], object]) -> None:
        """Run `func` on the server's loop soon (for touching app state from another thread)."""
        self._loop.call_soon_threadsafe(func)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, run the app's cleanup, end the thread; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.ident is None:  # never started
            self._loop.close()
            return
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
