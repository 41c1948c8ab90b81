"""Fault and pacing injection from request headers (DESIGN.md contract).

`x-mock-fault: KIND[;times=N][;id=ID][;retry_after_ms=MS]` with KIND in 429, 500, 503, timeout,
disconnect. With `times=N` the first N requests carrying the same `id` (or, without an id, the same
KIND and N) fail and later ones succeed. `x-mock-latency: ttft_ms=MS;chunk_ms=MS` paces answers.

Every number is a whole, non-negative decimal within a bound (MAX_PACING_MS per pacing value,
MAX_RETRY_AFTER_MS, MAX_TIMES; an id has at most MAX_ID_CHARS): anything else is a 400, never a hang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiohttp import web

from ..errors import MockError

FAULT_HEADER = "x-mock-fault"
LATENCY_HEADER = "x-mock-latency"
KINDS = ("429", "500", "503", "timeout", "disconnect")
MAX_PACING_MS = 60_000  # per value: ttft_ms, chunk_ms
MAX_RETRY_AFTER_MS = 3_600_000
MAX_TIMES = 1_000_000
MAX_ID_CHARS = 200
MAX_COUNTED_IDS = 10_000  # fault counters kept; the oldest are forgotten beyond it


@dataclass(frozen=True, slots=True)
class Fault:
    """A parsed `x-mock-fault` header."""

    kind: str
    times: int | None = None
    id: str | None = None
    retry_after_ms: int = 1000

    @property
    def counter_key(self) -> str:
        return self.id if self.id is not None else f"{self.kind};times={self.times}"


@dataclass(frozen=True, slots=True)
class Pacing:
    """Seconds before the first byte and between stream chunks."""

    ttft_s: float = 0.0
    chunk_s: float = 0.0


def _params(value: str, header: str) -> tuple[str, dict[str, str]]:
    head, *rest = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for item in rest:
        if not item:
            continue
        name, sep, val = item.partition("=")
        if not sep:
            raise _bad(header, f"expected NAME=VALUE, got '{_short(item)}'")
        name = name.strip().lower()
        if name in params:
            raise _bad(header, f"'{_short(name)}' is given twice")
        params[name] = val.strip()
    return head, params


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _int(params: dict[str, str], name: str, header: str, limit: int) -> int | None:
    """A whole decimal number in 0..limit (ASCII digits only: no sign, exponent, `_`, nan or inf)."""
    if name not in params:
        return None
    text = params[name]
    if not (text.isascii() and text.isdigit()):
        if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
            raise _bad(header, f"'{name}' must not be negative")
        raise _bad(header, f"'{name}' must be a whole number of at most {limit}, got '{_short(text)}'")
    if len(text.lstrip("0")) > len(str(limit)) or int(text) > limit:
        raise _bad(header, f"'{name}' must be at most {limit}, got '{_short(text)}'")
    return int(text)


def _bad(header: str, reason: str) -> MockError:
    return MockError(400, f"Invalid '{header}' header: {reason}.", param=header, code="invalid_header")


def parse_fault(value: str) -> Fault:
    """Parse `x-mock-fault`; a malformed header is a 400, never a silent no-op."""
    kind, params = _params(value, FAULT_HEADER)
    if kind not in KINDS:
        raise _bad(FAULT_HEADER, f"unknown kind '{_short(kind)}', expected one of {', '.join(KINDS)}")
    unknown = set(params) - {"times", "id", "retry_after_ms"}
    if unknown:
        raise _bad(FAULT_HEADER, f"unknown parameter '{_short(min(unknown))}'")
    retry = _int(params, "retry_after_ms", FAULT_HEADER, MAX_RETRY_AFTER_MS)
    fault_id = params.get("id")
    if fault_id is not None and len(fault_id) > MAX_ID_CHARS:
        raise _bad(FAULT_HEADER, f"'id' must have at most {MAX_ID_CHARS} characters")
    return Fault(kind, _int(params, "times", FAULT_HEADER, MAX_TIMES), fault_id, 1000 if retry is None else retry)


def parse_pacing(value: str) -> Pacing:
    """Parse `x-mock-latency: ttft_ms=MS;chunk_ms=MS` (either part optional)."""
    _, params = _params(";" + value, LATENCY_HEADER)
    unknown = set(params) - {"ttft_ms", "chunk_ms"}
    if unknown:
        raise _bad(LATENCY_HEADER, f"unknown parameter '{_short(min(unknown))}'")
    ttft = _int(params, "ttft_ms", LATENCY_HEADER, MAX_PACING_MS) or 0
    chunk = _int(params, "chunk_ms", LATENCY_HEADER, MAX_PACING_MS) or 0
    return Pacing(ttft / 1000, chunk / 1000)


# Where the middleware leaves the parsed headers on the request (typed keys: aiohttp warns on str keys).
PACING = web.RequestKey("pacing", Pacing)
FAULT = web.RequestKey("fault", Fault)


class FaultCounter:
    """Counts requests per fault key so `times=N` fails exactly the first N."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def should_fail(self, fault: Fault) -> bool:
        if fault.times is None:
            return True
        seen = self._seen.pop(fault.counter_key, 0)  # re-inserted last: the dict is kept in use order
        self._seen[fault.counter_key] = seen + 1
        if len(self._seen) > MAX_COUNTED_IDS:
            del self._seen[next(iter(self._seen))]
        return seen < fault.times

    def reset(self) -> None:
        self._seen.clear()


def error_for(fault: Fault) -> MockError:
    """The error answered for an HTTP-status fault, with the headers OpenAI sends."""
    if fault.kind == "429":
        seconds = max(1, math.ceil(fault.retry_after_ms / 1000))
        return MockError(
            429,
            "Rate limit reached for requests (mock fault injected by x-mock-fault). "
            f"Please try again in {fault.retry_after_ms}ms.",
            type="requests",
            code="rate_limit_exceeded",
            headers={
                "retry-after": str(seconds),
                "retry-after-ms": str(fault.retry_after_ms),
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{fault.retry_after_ms}ms",
                "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": f"{fault.retry_after_ms}ms",
            },
        )
    if fault.kind == "503":
        return MockError(503, "The engine is currently overloaded, please try again later.", type="server_error")
    return MockError(500, "The server had an error while processing your request. Sorry about that!",
                     type="server_error")
