"""Running an aiohttp application until SIGINT or SIGTERM; shared by both servers' commands."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str], None],
    shutdown_timeout: float = 10.0,
    handler_cancellation: bool = False,
) -> None:
    """Bind, report the URL once requests are accepted, then run until a stop signal; clean up
    (stop accepting, let in-flight requests finish up to `shutdown_timeout`, run cleanup_ctx)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else (host, port)
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_ready(f"http://{shown}:{bound[1]}")
        await stop.wait()
    finally:
        await runner.cleanup()


def run(app: web.Application, host: str, port: int, on_ready: Callable[[str], None], *,
        handler_cancellation: bool = False) -> None:
    """Blocking entry point for a command; on uvloop where it is installed (less CPU per request,
    see benchmarks/gateway.py --uvloop)."""
    main = serve(app, host, port, on_ready=on_ready, handler_cancellation=handler_cancellation)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
