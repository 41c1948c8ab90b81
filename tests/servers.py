"""The suite's name for `proxy.background.BackgroundServer` (a server in a background thread), and
`Held`, a `sleep` for such a server that holds its pauses until the test lets them go."""

from __future__ import annotations

import asyncio

from proxy.background import BackgroundServer

ServerThread = BackgroundServer


class Held:
    """An injected `sleep` that holds every pause (a paced stream between chunks) until `release()`."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        await self.gate.wait()

    def release(self, server: ServerThread) -> None:
        """Let every pause of `server` (the one this `sleep` was given to) go on, now and later."""
        async def open_gate() -> None:
            self.gate.set()

        server.run(open_gate())


__all__ = ["Held", "ServerThread"]
