"""When and how long to wait before retrying an upstream call: exponential backoff with full
jitter, overridden by what the upstream asks for (`retry-after-ms`, `retry-after`,
`x-ratelimit-reset-*`), capped."""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BASE_S = 0.5
MAX_BACKOFF_S = 8.0
MAX_HINT_S = 60.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def should_retry(status: int, headers: Mapping[str, str]) -> bool:
    """OpenAI's SDK rule: `x-should-retry` decides when present, else the status does."""
    hint = headers.get("x-should-retry", "").lower()
    if hint == "true":
        return True
    if hint == "false":
        return False
    return status in RETRY_STATUSES


def parse_duration(value: str) -> float | None:
    """`6m0s`, `1.5s`, `20ms` (OpenAI's x-ratelimit-reset-* format) in seconds."""
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _capped(seconds: float) -> float | None:
    """`seconds` clamped to [0, MAX_HINT_S]; None for NaN (`float("nan")` parses)."""
    return None if math.isnan(seconds) else min(max(seconds, 0.0), MAX_HINT_S)


def _http_date_wait(value: str, now: Callable[[], float]) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # not a date: ignore the hint
        return None
    if parsed.tzinfo is None:  # `-0000`: HTTP dates are always GMT
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return _capped(parsed.timestamp() - now())


def hinted_wait(status: int, headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The wait the upstream asked for, in seconds (capped), or None if it did not say.

    `x-ratelimit-reset-*` ride on every OpenAI response; they only mean "wait" on a 429. A malformed
    hint is ignored, never raised."""
    wait = None
    value = headers.get("retry-after-ms")
    if value:
        with contextlib.suppress(ValueError):
            wait = _capped(float(value) / 1000)
    value = headers.get("retry-after")
    if wait is None and value:
        try:
            wait = _capped(float(value))
        except ValueError:
            wait = _http_date_wait(value, now)
    if wait is not None or status != 429:
        return wait
    parsed = [parse_duration(headers[h]) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
              if headers.get(h)]
    resets = [r for r in parsed if r is not None]
    if resets:
        return min(max(resets), MAX_HINT_S)
    return None


def backoff(attempt: int, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rand() * min(MAX_BACKOFF_S, BASE_S * 2 ** (attempt - 1))
