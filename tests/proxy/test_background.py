"""`proxy.background.BackgroundServer`: serves on a free loopback port, reports a failed start, stops cleanly."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from aiohttp import web

from proxy.background import BackgroundServer


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)
    return app


def test_serves_runs_coroutines_on_its_loop_and_stops_once() -> None:
    with BackgroundServer(_app) as server:
        assert server.url.startswith("http://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(server.url + "/", timeout=10) as response:
            assert response.read() == b"hello"
        assert server.run(asyncio.sleep(0, result=42)) == 42
    server.stop()


def test_a_failed_start_raises_its_error_and_leaves_nothing_running() -> None:
    def broken() -> web.Application:
        raise RuntimeError("no app today")

    server = BackgroundServer(broken)
    with pytest.raises(RuntimeError, match="no app today"):
        server.start()
    assert not server._thread.is_alive()


def test_a_server_never_started_can_be_stopped() -> None:
    BackgroundServer(_app).stop()
