"""pending: a background Responses request (`background: true`) is charged when it ends, once.

Its `POST` answers at once with `status: "queued"` and no usage. Its reservation is kept (not settled
at $0) until the response is seen ended: on any `GET /v1/responses/{id}` or cancel that shows a
terminal status, or by the poll every `limits.batch_poll_s`. Then its usage replaces the reservation
and one ledger row records it (`method = "SETTLE"`, `endpoint = /v1/responses/{id}`, `object_id`),
so a restart rebuilds the same spend. The `POST` row has `usage_source = "pending"` and no cost.

A streamed background request is held the same way when its stream ends before the response does
(the client went away): upstream it runs on, and is billed in full, so it is never charged for the
part relayed. Each response is looked up on the upstream that served it (`[[routes]]`).

When its final usage cannot be learned (the upstream answers 404: deleted or unknown; or the poll
fails `max_failures` times in a row), it fails closed: charged its reserved worst case, never $0,
in a `SETTLE` row with `usage_source = "reserved"`.

After a restart, a response still pending (its `POST` row has no `SETTLE` row yet) is looked up by
the poll and charged when it ends; it holds no reservation meanwhile (its worst case was not kept),
so if its usage cannot be learned its `SETTLE` row says `usage_source = "unknown"`, with no cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..clock import Clock
from ..db.writer import LedgerWriter
from ..exchange import Exchange
from ..wire.jsoncodec import JSONDecodeError, loads
from ..wire.pricing import PriceTable
from ..wire.usage import Usage, from_body
from . import Stage
from .budget import BudgetBook, Reservation
from .forward import Upstream
from .settling import Poller, unsettled

log = logging.getLogger("oaigate.pending")

ENDED = frozenset({"completed", "failed", "incomplete", "cancelled"})
SETTLE_METHOD = "SETTLE"
PREFIX = "/v1/responses/"
MAX_POLL_FAILURES = 30  # polls in a row with no answer before a response is charged its worst case


@dataclass(slots=True)
class Pending:
    principal: str | None
    model: str | None
    reservation: Reservation
    upstream: Upstream | None = None  # the one that serves it (None: the default)
    worst: Usage | None = None  # what was reserved for it (None after a restart: not kept)
    worst_micros: int | None = None
    failures: int = 0  # polls in a row that learned nothing


class PendingResponses(Poller, Stage):
    """Holds background responses' reservations until they end; see the module's docstring."""

    def __init__(self, book: BudgetBook, prices: PriceTable, session: aiohttp.ClientSession, upstream: Upstream,
                 writer: LedgerWriter | None, clock: Clock, *, poll_s: float = 60.0,
                 remember: Callable[[str, int], None] | None = None, upstreams: Iterable[Upstream] = (),
                 max_failures: int = MAX_POLL_FAILURES) -> None:
        self.book, self.prices, self.session, self.upstream = book, prices, session, upstream
        self.writer, self.clock, self.poll_s, self.max_failures = writer, clock, poll_s, max_failures
        self.upstreams = {u.name: u for u in reversed([upstream, *upstreams])}  # by ledger name, default first
        self.remember = remember or (lambda _id, _tokens: None)
        self.open: dict[str, Pending] = {}
        self.log = log

    def hold(self, ex: Exchange, reservation: Reservation | None) -> None:
        """Keep `ex`'s reservation until its response ends (called by `budget` instead of settling)."""
        if ex.object_id:
            worst = Usage(ex.estimate.prompt, ex.estimate.completion) if ex.estimate is not None else None
            micros = self.prices.cost_micros(ex.model, worst) if worst is not None else None
            self.open[ex.object_id] = Pending(ex.principal, ex.model, reservation or Reservation(),
                                              ex.target.upstream if ex.target is not None else None, worst, micros)

    async def finish(self, ex: Exchange) -> None:
        if ex.settle_later and ex.object_id and ex.object_id not in self.open:
            self.hold(ex, None)  # no budget applied: still charged in the ledger when it ends
        if not self.open or ex.status != 200 or not ex.path.startswith(PREFIX) or ex.response_body is None:
            return
        try:
            body = loads(ex.response_body)
        except JSONDecodeError:
            return
        if isinstance(body, dict):
            self.settle(body)

    def settle(self, body: dict[str, Any]) -> None:
        """Charge a response that has ended for its usage, once."""
        response_id = body.get("id")
        if body.get("status") not in ENDED or not isinstance(response_id, str):
            return
        pending = self.open.pop(response_id, None)
        if pending is None:
            return
        usage = from_body(body)
        model = body.get("model") if isinstance(body.get("model"), str) else pending.model
        micros = self.prices.cost_micros(model, usage) if usage is not None else 0
        tokens = usage.total if usage is not None else 0
        self.book.settle(pending.reservation, micros or 0, tokens)
        if usage is not None:
            self.remember(response_id, tokens)
        self._record(response_id, pending, model, usage, "reported" if usage else None, micros)

    def settle_reserved(self, response_id: str, why: str) -> None:
        """Charge a response whose usage cannot be learned its reserved worst case (fail closed), once."""
        pending = self.open.pop(response_id, None)
        if pending is None:
            return
        usage, micros = pending.worst, pending.worst_micros
        self.book.settle(pending.reservation, micros or 0, usage.total if usage is not None else 0)
        source = "reserved" if usage is not None else "unknown"
        log.warning("background response %s: %s; charged %s", response_id, why,
                    "its reserved worst case" if usage is not None else "nothing (its worst case was not kept)")
        self._record(response_id, pending, pending.model, usage, source, micros)

    def _record(self, response_id: str, pending: Pending, model: str | None, usage: Usage | None,
                source: str | None, micros: int | None) -> None:
        if self.writer is None:
            return
        now = datetime.fromtimestamp(self.clock.wall(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.writer.submit({
            "id": "gw_settle_" + response_id, "started_at": now, "finished_at": now, "key_name": pending.principal,
            "method": SETTLE_METHOD, "endpoint": PREFIX + response_id, "model_requested": pending.model,
            "model_served": model, "status": 200, "stream": 0,
            "prompt_tokens": usage.prompt if usage else None, "completion_tokens": usage.completion if usage else None,
            "cached_tokens": usage.cached if usage else None, "reasoning_tokens": usage.reasoning if usage else None,
            "usage_source": source, "cost_microusd": micros, "latency_ms": 0.0,
            "overhead_ms": 0.0, "upstream": (pending.upstream or self.upstream).name, "attempts": 0,
            "object_id": response_id,
        })

    async def poll_once(self) -> None:
        for response_id, pending in list(self.open.items()):
            upstream = pending.upstream or self.upstream
            headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
            data = None
            try:
                async with self.session.get(upstream.base_url.rstrip("/") + "/responses/" + response_id,
                                            headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as reply:
                    if reply.status == 404:  # deleted or unknown: its usage can no longer be learned
                        self.settle_reserved(response_id, f"not found on {upstream.name} (404)")
                        continue
                    if reply.status == 200:
                        data = await reply.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            try:
                body = loads(data) if data else None
            except JSONDecodeError:
                body = None
            if isinstance(body, dict) and body.get("id") == response_id:
                pending.failures = 0
                self.settle(body)
                continue
            pending.failures += 1
            if pending.failures >= self.max_failures:
                self.settle_reserved(response_id, f"{pending.failures} polls of {upstream.name} in a row failed")

    def load_ledger(self, path: str) -> int:
        """Background responses made and not yet charged (at start, off the event loop)."""
        rows = unsettled(path, "object_id, key_name, COALESCE(model_requested, model_served), upstream",
                         "method = 'POST' AND endpoint = '/v1/responses' AND usage_source = 'pending'", SETTLE_METHOD)
        for response_id, key_name, model, upstream in rows:
            self.open.setdefault(response_id, Pending(key_name, model, Reservation(), self.upstreams.get(upstream)))
        return len(rows)
