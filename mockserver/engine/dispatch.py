"""Running one request through an endpoint's handler in-process, without HTTP (for batch lines).

The handler gets a `LineCall`: a `Call` whose `reply` keeps the JSON body instead of sending it, on
a stand-in request that carries the app, no headers and the body's size. No pacing, no faults. A
handler that would stream answers 400: the Batch API has no streaming.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from proxy.wire.errors import SERVER_ERROR, error_body
from proxy.wire.jsoncodec import dumps

from ..errors import MockError, invalid
from .clock import VirtualClock
from .faults import Pacing
from .state import CATALOGUE, CLOCK, SETTINGS, Call, Handler

log = logging.getLogger("oaigate.mock")

LINE_HANDLERS = web.AppKey("line_handlers", dict[str, Handler])


class _LineRequest:
    """What handlers may read of `call.request` when no HTTP request exists."""

    def __init__(self, app: web.Application, method: str, url: str, size: int) -> None:
        self.app, self.method, self.path, self.content_length = app, method, url, size
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.query: MultiDictProxy[str] = MultiDictProxy(MultiDict())

    def get(self, key: Any, default: Any = None) -> Any:
        return default


async def _no_sleep(seconds: float) -> None:
    """Batch lines run at once: no pacing, whatever a rule asks."""


@dataclass(slots=True)
class LineCall(Call):
    """A `Call` that captures the answer's body."""

    answer: Any = None

    async def reply(self, body: Any, chunks: int = 1) -> web.StreamResponse:
        self.answer = body
        return web.Response()

    async def stream(self, frames: list[bytes]) -> web.StreamResponse:
        raise invalid("Streaming is not supported in the Batch API: remove 'stream' from the request body.",
                      "stream", "invalid_value")


@dataclass(frozen=True, slots=True)
class LineResult:
    """A line's HTTP status, JSON body and the request id its handler drew (None when it failed early)."""

    status: int
    body: Any
    request_id: str | None


async def run_line(app: web.Application, method: str, url: str, body: dict[str, Any],
                   now: int | None = None) -> LineResult:
    """Answer `method url` with `body` the way the endpoint would over HTTP, errors included, as if at
    virtual time `now` (default: the app's clock)."""
    handler = app[LINE_HANDLERS].get(url) if method == "POST" else None
    if handler is None:
        return LineResult(404, error_body(f"Invalid URL ({method} {url})"), None)
    request = cast(web.Request, _LineRequest(app, method, url, len(dumps(body))))
    clock = app[CLOCK] if now is None else VirtualClock(now)
    call = LineCall(request, body, app[SETTINGS], app[CATALOGUE], clock, Pacing(), None, _no_sleep)
    try:
        await handler(call)
        status, answer = 200, call.answer
    except MockError as exc:
        status, answer = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
    except Exception:
        log.exception("mock failed on a batch line for %s %s", method, url)
        status = 500
        answer = error_body("The server had an error while processing your request. Sorry about that!",
                            SERVER_ERROR)
    request_id = call.headers.get("x-request-id")
    return LineResult(status, answer, request_id.removeprefix("req_") if request_id else None)
