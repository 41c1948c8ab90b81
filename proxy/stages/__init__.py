"""The gateway's pipeline: an ordered list of stages, each one concern, each with hooks.

The order, as `proxy.pipeline.default_pipeline` builds it (one line per stage there):

    request:  Deadline -> RequestId -> Authenticate -> Route -> Owners* -> Cache* -> Estimator
              -> Budget -> BatchBudgets -> RateLimit -> Fixtures
    forward:  Forward (or, for a fixture hit, the replay; for a cache hit, the cached answer)
    finish:   Meter -> Cache* -> Owners* -> Chains -> BatchBudgets -> Fixtures -> Budget
              -> PendingResponses -> RateLimit -> Metrics -> Ledger* -> AccessLog

    * Owners only with `[[keys]]`; Cache only with `[cache] enabled`; Ledger only with
      `[ledger] enabled`.

`request(ex)` runs in order before the upstream is called and may raise a `GatewayError`;
`chunk(ex, data)` sees every response body chunk as it is relayed (keep it cheap);
`finish(ex)` runs in order after the client has its response, off the request's critical path.
"""

from __future__ import annotations

from ..exchange import Exchange


class Stage:
    """Base class with no-op hooks; a stage overrides the ones it needs."""

    async def request(self, ex: Exchange) -> None:
        """Before forwarding; raise a GatewayError to answer the client now."""

    def chunk(self, ex: Exchange, data: bytes) -> None:
        """A piece of the response body, as relayed to the client."""

    async def finish(self, ex: Exchange) -> None:
        """After the response is complete (or failed)."""
