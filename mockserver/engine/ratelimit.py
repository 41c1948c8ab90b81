"""An emulated upstream rate limit (`[mock] rate_limit_requests`), so clients and the gateway can be
tested against OpenAI-style `x-ratelimit-*` headers and real 429s, not only injected ones."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from ..errors import MockError

RATE_HEADERS = web.RequestKey("rate_headers", dict)


def _duration(seconds: float) -> str:
    return f"{math.ceil(seconds * 1000)}ms" if seconds < 1 else f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


class RequestLimit:
    """A token bucket of `capacity` requests refilled at `per_s` a second."""

    def __init__(self, capacity: int, per_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.per_s, self._now = capacity, per_s, now
        self.level, self.updated = float(capacity), now()

    def take(self) -> dict[str, str]:
        """Take one request; the headers to send. Raises the 429 OpenAI sends when none is left."""
        now = self._now()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_s)
        self.updated = now
        if self.level < 1:
            wait = (1 - self.level) / self.per_s
            raise MockError(
                429, f"Rate limit reached for requests (mock limit: {self.capacity} requests). Please try again "
                f"in {_duration(wait)}.", type="requests", code="rate_limit_exceeded",
                headers={**self._headers(), "retry-after-ms": str(math.ceil(wait * 1000)),
                         "retry-after": str(math.ceil(wait))})
        self.level -= 1
        return self._headers()

    def _headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.capacity),
            "x-ratelimit-remaining-requests": str(int(self.level)),
            "x-ratelimit-reset-requests": _duration((self.capacity - self.level) / self.per_s),
        }


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: put the limit's headers on every answer, streams included."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)
