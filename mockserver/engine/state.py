"""App-wide state under typed keys, and the `Call` each JSON endpoint handler receives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from proxy.wire.jsoncodec import JSONDecodeError, loads

from ..errors import MockError
from ..settings import MockSettings
from .catalogue import Catalogue
from .clock import Sleep, VirtualClock
from .faults import FAULT, PACING, Fault, FaultCounter, Pacing
from .rng import RequestRandom, request_random
from .streaming import send_json, send_stream

T = TypeVar("T")
OFFLOAD_BYTES = 64 * 1024

SETTINGS = web.AppKey("settings", MockSettings)
CATALOGUE = web.AppKey("catalogue", Catalogue)
CLOCK = web.AppKey("clock", VirtualClock)
FAULTS = web.AppKey("faults", FaultCounter)
SLEEP = web.AppKey[Sleep]("sleep")  # a callable type: the subscript form (aiohttp's way for non-classes)

_PARSE_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


@dataclass(slots=True)
class Call:
    """Everything a handler needs about one request, gathered by the `endpoint` wrapper."""

    request: web.Request
    body: dict[str, Any]
    settings: MockSettings
    catalogue: Catalogue
    clock: VirtualClock
    pacing: Pacing
    fault: Fault | None
    sleep: Sleep
    headers: dict[str, str] = field(default_factory=dict)

    def random(self, endpoint: str, body: Any) -> RequestRandom:
        """The request's PRNG, seeded from `body` (transport-only fields already removed)."""
        rnd = request_random(self.settings.seed, endpoint, body)
        self.headers["x-request-id"] = "req_" + rnd.key.hex()[:32]
        return rnd

    async def compute(self, func: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (tokenizing a large prompt) off the event loop when the body is large."""
        if (self.request.content_length or 0) > OFFLOAD_BYTES:
            return await asyncio.to_thread(func, *args)
        return func(*args)

    async def reply(self, body: Any, chunks: int = 1) -> web.StreamResponse:
        """Answer with a JSON body, paced as if `chunks` had been streamed."""
        return await send_json(self.request, body, headers=self.headers, pacing=self.pacing, chunks=chunks,
                               sleep=self.sleep)

    async def stream(self, frames: list[bytes]) -> web.StreamResponse:
        """Answer with SSE frames."""
        return await send_stream(self.request, frames, headers=self.headers, pacing=self.pacing, fault=self.fault,
                                 sleep=self.sleep)


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


def endpoint(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Adapt a `Call` handler to aiohttp: parse the JSON body, gather state."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = loads(raw) if raw else None
        except JSONDecodeError:
            raise MockError(400, _PARSE_ERROR) from None
        if body is None:
            raise MockError(400, _PARSE_ERROR)
        if not isinstance(body, dict):
            raise MockError(
                400,
                "Invalid type for request body: expected an object, but got "
                f"{'an array' if isinstance(body, list) else 'a scalar'} instead.",
                code="invalid_type",
            )
        app = request.app
        call = Call(request, body, app[SETTINGS], app[CATALOGUE], app[CLOCK],
                    request.get(PACING, Pacing()), request.get(FAULT), app[SLEEP])
        return await handler(call)

    return wrapped
