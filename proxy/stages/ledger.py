"""ledger: one row per exchange, handed to the batching writer (never written on the event loop)."""

from __future__ import annotations

import math
import time

from ..db.writer import LedgerWriter
from ..exchange import Exchange
from ..wire import SIMULATED_HEADER
from . import Stage

BODY_LIMIT = 64 * 1024
REQUEST_ID_HEADER = "x-oaigate-request-id"


_second: list[tuple[int, str]] = [(-1, "")]  # the last whole second formatted, and its text


def _iso(ts: float) -> str:
    """`ts` as UTC ISO 8601 with milliseconds and a `Z`, exactly as `datetime.fromtimestamp(ts, UTC)
    .isoformat(timespec="milliseconds")` writes it, with the whole-second part formatted once per second."""
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)  # datetime rounds to the microsecond (half to even), then cuts to milliseconds
    second = int(whole)
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    elif us < 0:
        second, us = second - 1, us + 1_000_000
    cached, text = _second[0]
    if cached != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second[0] = (second, text)
    return f"{text}.{us // 1000:03d}Z"


def _body(data: bytes | None) -> str | None:
    if data is None:
        return None
    text = data[:BODY_LIMIT].decode("utf-8", "replace")
    return text + ("…[truncated]" if len(data) > BODY_LIMIT else "")


class RequestId(Stage):
    """Names the exchange's ledger row on every answer: `x-oaigate-request-id: <id>` (first stage)."""

    async def request(self, ex: Exchange) -> None:
        ex.response_headers[REQUEST_ID_HEADER] = ex.id


class Ledger(Stage):
    """Turns a finished exchange into a `requests` row; its ticket goes in `ex.ledger_ticket`."""

    def __init__(self, writer: LedgerWriter, log_bodies: bool = False) -> None:
        self.writer, self.log_bodies = writer, log_bodies

    async def finish(self, ex: Exchange) -> None:
        usage = ex.usage
        latency_ms = ex.elapsed_ms()
        ex.ledger_ticket = self.writer.submit({
            "id": ex.id,
            "started_at": _iso(ex.started_wall),
            "finished_at": _iso(ex.started_wall + latency_ms / 1000),
            "key_name": ex.principal,
            "method": ex.method,
            "endpoint": ex.path,
            # what the client asked for (an alias stays one; a fallback's row names the first model)
            "model_requested": ex.model_alias or ex.fallback_from or ex.model,
            "model_served": ex.model_served,
            "status": ex.status if ex.status is not None else 0,
            "stream": int(ex.stream),
            "prompt_tokens": usage.prompt if usage else None,
            "completion_tokens": usage.completion if usage else None,
            "cached_tokens": usage.cached if usage else None,
            "reasoning_tokens": usage.reasoning if usage else None,
            "usage_source": ex.usage_source,
            "cost_microusd": ex.cost_micros,
            "replayed_cost_microusd": ex.replayed_cost_micros,
            "latency_ms": round(latency_ms, 3),
            "ttfb_ms": round(ex.ttfb_s * 1000, 3) if ex.ttfb_s is not None else None,
            "overhead_ms": round(ex.overhead_s * 1000, 3),
            "upstream": ex.upstream,
            "attempts": ex.attempts,
            "fixture": ex.fixture,
            "error_type": ex.error_type,
            "upstream_request_id": ex.upstream_request_id,
            "object_id": ex.object_id,
            "simulated": int(ex.fixture == "hit" or (ex.upstream_headers is not None
                                                     and SIMULATED_HEADER in ex.upstream_headers)),
            "finish_reason": ex.finish_reason,
            "fallback_from": ex.fallback_from,
            "models_tried": ex.models_tried,
            "cache": ex.cache,
            "saved_microusd": ex.saved_micros,
            "request_body": _body(ex.body) if self.log_bodies else None,
            "response_body": _body(ex.response_body) if self.log_bodies else None,
        })
