"""accesslog: one line per request at `info` (off below it), and a rate-limited warning for each
upstream failure the gateway could not retry away and each budget refusal."""

from __future__ import annotations

import logging

from ..exchange import Exchange
from ..logs import RateLimitedWarning
from . import Stage

access = logging.getLogger("oaigate.access")
log = logging.getLogger("oaigate")

UPSTREAM_FAILURES = frozenset({"upstream_error", "upstream_timeout", "upstream_disconnected"})


class AccessLog(Stage):
    """Last in line: the exchange is complete (status, cost, timings) when it runs."""

    def __init__(self, warn: RateLimitedWarning | None = None) -> None:
        self.warn = warn or RateLimitedWarning(log)

    async def finish(self, ex: Exchange) -> None:
        error = ex.error_type
        if error in UPSTREAM_FAILURES:
            self.warn("upstream", f"upstream {ex.upstream or '?'} failed after {ex.attempts} attempt(s): {error} "
                      f"({ex.method} {ex.path}, key {ex.principal})", upstream=ex.upstream, error_type=error)
        elif error == "budget_exceeded":
            self.warn("budget", f"budget refused a request of key {ex.principal} for model {ex.model}",
                      key=ex.principal, model=ex.model, error_type=error)
        if access.isEnabledFor(logging.INFO):
            cost = "unknown" if ex.cost_micros is None else f"${ex.cost_micros / 1e6:.6f}"
            access.info(
                "%s %s %s key=%s model=%s %.1fms cost=%s%s", ex.method, ex.path, ex.status or 0, ex.principal,
                ex.model_served or ex.model, ex.elapsed_ms(), cost, f" error={error}" if error else "",
                extra={"method": ex.method, "path": ex.path, "status": ex.status or 0, "key": ex.principal,
                       "model": ex.model_served or ex.model, "latency_ms": round(ex.elapsed_ms(), 3),
                       "cost_microusd": ex.cost_micros, "error_type": error, "request_id": ex.id})
