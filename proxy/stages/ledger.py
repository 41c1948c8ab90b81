"""ledger: one row per exchange, handed to the batching writer (never written on the event loop)."""

from __future__ import annotations

from datetime import UTC, datetime

from ..db.writer import LedgerWriter
from ..exchange import Exchange
from ..wire import SIMULATED_HEADER
from . import Stage

BODY_LIMIT = 64 * 1024
REQUEST_ID_HEADER = "x-oaigate-request-id"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """Turns a finished exchange into a `requests` row (its ticket: `writer.accepted` right after)."""

    def __init__(self, writer: LedgerWriter, log_bodies: bool = False) -> None:
        self.writer, self.log_bodies = writer, log_bodies

    async def finish(self, ex: Exchange) -> None:
        usage = ex.usage
        latency_ms = ex.elapsed_ms()
        self.writer.submit({
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
