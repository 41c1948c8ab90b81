"""The hook that finishes an exchange before its last bytes go out (see `Pipeline.complete`).

The app stores it under `COMPLETE`; `forward` and the fixture replay await it for a response that
reached its end normally: before returning a whole body, or before relaying a stream's terminal
event. Apps without it (a bare `Forward` in a test) skip the wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .exchange import Exchange

Complete = Callable[[Exchange], Awaitable[None]]
COMPLETE: web.AppKey[Complete] = web.AppKey("complete")
