"""batches: a Batch API job's worst case reserved at create, its real cost charged when it ends.

- **Create** (`POST /v1/batches`) on a budgeted key: the gateway fetches the input file from the
  upstream with its own pooled session (`GET {base}/files/{id}/content`), estimates every line as a
  direct request would be (prompt counted, cap x answers; a line with no cap is bounded by the model's
  context window), prices the sum at the Batch API's rates and reserves it, all or nothing. A line it
  cannot estimate, or a file it cannot fetch, refuses the batch (400): never waved through.
- **End**: when a batch is seen in a terminal state (any `GET /v1/batches/{id}`, a cancel, a list, or
  the background poll every `limits.batch_poll_s` on the gateway's clock), its output file is fetched
  and the usage of its successful lines, priced at batch rates, replaces the reservation. A batch that
  failed or was cancelled before running anything releases it. The settlement is one ledger row
  (`method = "BATCH"`, `endpoint = /v1/batches/{id}`, `object_id` = the batch id, tokens and cost), so
  a restart rebuilds the same spend; the create row itself costs nothing.
- Every batch is settled that way, budgeted or not, so the ledger holds what each batch cost.
- **Restart**: a batch created (ledger row with its `object_id`) but not yet settled is looked up
  again at start: if it has ended it is settled then; if it still runs, its worst case is computed
  again from its input file and reserved again, so it cannot be spent twice. Until that lookup
  succeeds (an unreachable upstream) it holds no reservation; the poll retries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ..clock import Clock
from ..db.writer import LedgerWriter
from ..errors import InvalidRequest, Unestimable
from ..exchange import Exchange, Slot
from ..wire.jsoncodec import JSONDecodeError, loads
from ..wire.pricing import PriceTable
from ..wire.tokens import PromptTooLong, count_request_prompt
from ..wire.usage import Usage, from_body
from . import Stage
from .budget import BudgetBook, Reservation
from .estimate import CAP_FIELDS, answers, prompt_bound
from .forward import Upstream
from .settling import Poller, unsettled

log = logging.getLogger("oaigate.batches")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_FILE_BYTES = 210 * 1024 * 1024  # OpenAI's batch input files are at most 200 MB
SETTLE_METHOD = "BATCH"
BATCH_HOLD_S = 25 * 3600.0  # a batch's shared reservation outlives its 24 h completion window


@dataclass(slots=True)
class OpenBatch:
    principal: str | None
    model: str | None
    reservation: Reservation | None


@dataclass(frozen=True, slots=True)
class Worst:
    model: str | None
    usage: Usage
    lines: int


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_HELD = Slot[tuple[Reservation, str | None]]("batches")  # reservation and model, until created


class BatchBudgets(Poller, Stage):
    """Reserves, settles and releases Batch API jobs; see the module's docstring."""

    def __init__(self, book: BudgetBook, prices: PriceTable, session: aiohttp.ClientSession, upstream: Upstream,
                 writer: LedgerWriter | None, clock: Clock, *, poll_s: float = 60.0,
                 chains: Callable[[str], int | None] | None = None, pass_through: bool = False) -> None:
        self.book, self.prices, self.session, self.upstream = book, prices, session, upstream
        self.writer, self.clock, self.poll_s = writer, clock, poll_s
        self.chains = chains or (lambda _: None)
        self.pass_through = pass_through
        self.open: dict[str, OpenBatch] = {}
        self._settling: set[str] = set()
        self.log = log

    # --- the request path --------------------------------------------------------------------------

    async def request(self, ex: Exchange) -> None:
        if ex.method != "POST" or ex.path != "/v1/batches" or not self.book.rules:
            return
        if not any(rule.key in (None, "*", ex.principal) for rule in self.book.rules):
            return  # no budget can apply to this key, whatever the batch's model
        body = ex.json
        if body is None or not isinstance(body.get("input_file_id"), str):
            if self.book.accounts(ex.principal, None):
                raise Unestimable("The batch request could not be read (a JSON body with an input_file_id), so "
                                  "its cost cannot be estimated and the budget cannot be enforced.")
            return
        data = await self._fetch(f"/files/{body['input_file_id']}/content", ex.client_token)
        if data is None:
            if self.book.accounts(ex.principal, None):
                raise Unestimable(f"The gateway could not read the batch's input file '{body['input_file_id']}' "
                                  "from the upstream to estimate its cost.", param="input_file_id")
            return
        model = _first_model(data)
        headroom = self.book.headroom(ex.principal, model)
        if headroom is None:
            return
        bound = prompt_bound(self.prices, model, headroom)
        worst = await asyncio.to_thread(self.worst_case, data, str(body.get("endpoint", "")), bound)
        micros = self.prices.cost_micros(worst.model, worst.usage, batch=True)
        held = await self.book.admit(ex.principal, worst.model, micros, worst.usage.total, ttl_s=BATCH_HOLD_S)
        ex.state.set(_HELD, (held, worst.model))

    async def finish(self, ex: Exchange) -> None:
        pending = ex.state.pop(_HELD)
        if ex.method == "POST" and ex.path == "/v1/batches":
            reservation, model = pending if pending is not None else (Reservation(), None)
            if ex.status == 200 and ex.object_id:  # every batch is settled in the ledger, budgeted or not
                self.open[ex.object_id] = OpenBatch(ex.principal, model, reservation)
            else:
                self.book.settle(reservation, 0, 0)
            return
        if ex.status != 200 or not self.open or not ex.path.startswith("/v1/batches") or ex.response_body is None:
            return
        try:
            card = loads(ex.response_body)
        except JSONDecodeError:
            return
        cards = card.get("data") if isinstance(card, dict) and card.get("object") == "list" else [card]
        for item in cards if isinstance(cards, list) else []:
            if isinstance(item, dict) and item.get("id") in self.open and item.get("status") in TERMINAL:
                await self.settle(item["id"], item)

    # --- estimating ------------------------------------------------------------------------------

    def worst_case(self, data: bytes, endpoint: str, bound: int | None) -> Worst:
        """Every line's worst case, summed (off the event loop). Raises `Unestimable` for a line that
        cannot be bounded; stops counting once past `bound` (the reservation then refuses it)."""
        prompt = completion = lines = 0
        model = None
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                line = loads(raw)
            except JSONDecodeError:
                continue  # the upstream fails the batch on it: nothing runs
            body = line.get("body") if isinstance(line, dict) else None
            url = line.get("url") if isinstance(line, dict) else None
            if not isinstance(body, dict):
                continue
            path = url if isinstance(url, str) else endpoint
            line_model = body.get("model") if isinstance(body.get("model"), str) else None
            model = model or line_model
            window = self.prices.context_window(line_model)
            chained = 0
            previous = body.get("previous_response_id")
            if isinstance(previous, str) and previous:
                chained = self.chains(previous) or 0
                if not chained:
                    if window is None:
                        raise Unestimable(f"Line {number} of the batch builds on an unknown response and no context "
                                          "window bounds it.", param="input_file_id")
                    chained = window
            left = None if bound is None else max(bound - prompt - chained, 0)
            try:
                counted = count_request_prompt(body, line_model or "", left) + chained
            except PromptTooLong as exc:
                return Worst(model, Usage(prompt + chained + exc.counted, completion), lines + 1)
            prompt += counted
            lines += 1
            fields = CAP_FIELDS.get(path)
            if fields is None:
                continue
            caps = [body[f] for f in fields if isinstance(body.get(f), int) and body[f] >= 0]
            if caps:
                cap = caps[0]
            elif path == "/v1/completions":
                cap = 16
            elif window is not None:
                cap = max(window - counted, 0)
            else:
                raise Unestimable(f"Line {number} of the batch sets no output cap ({', '.join(fields) or 'none'}) "
                                  f"and no context window is known for model '{line_model}' to bound it.",
                                  param="input_file_id")
            completion += cap * answers(path, body)
        return Worst(model, Usage(prompt, completion), lines)

    # --- settling --------------------------------------------------------------------------------

    async def settle(self, batch_id: str, card: dict[str, Any]) -> None:
        """Charge a batch that has ended for what its output file shows, once."""
        batch = self.open.get(batch_id)
        if batch is None or batch_id in self._settling:
            return
        self._settling.add(batch_id)
        try:
            usage, model = Usage(), batch.model or (card.get("model") if isinstance(card.get("model"), str) else None)
            output = card.get("output_file_id")
            if isinstance(output, str):
                data = await self._fetch(f"/files/{output}/content", None)
                if data is None:
                    log.warning("batch %s ended but its output file could not be read; retrying later", batch_id)
                    return
                usage = await asyncio.to_thread(_output_usage, data)
            if self.open.pop(batch_id, None) is None:
                return
            micros = self.prices.cost_micros(model, usage, batch=True) if usage.total else 0
            if batch.reservation is not None:
                self.book.settle(batch.reservation, micros or 0, usage.total)
            else:
                held = self.book.reserve_unchecked(batch.principal, model)
                self.book.settle(held, micros or 0, usage.total)
            self._write(batch_id, batch, model, usage, micros)
        finally:
            self._settling.discard(batch_id)

    def _write(self, batch_id: str, batch: OpenBatch, model: str | None, usage: Usage, micros: int | None) -> None:
        if self.writer is None:
            return
        now = _iso(self.clock.wall())
        self.writer.submit({
            "id": "gw_settle_" + batch_id, "started_at": now, "finished_at": now, "key_name": batch.principal,
            "method": SETTLE_METHOD, "endpoint": f"/v1/batches/{batch_id}", "model_requested": model,
            "model_served": model, "status": 200, "stream": 0, "prompt_tokens": usage.prompt,
            "completion_tokens": usage.completion, "cached_tokens": usage.cached, "reasoning_tokens": usage.reasoning,
            "usage_source": "reported", "cost_microusd": micros, "latency_ms": 0.0, "overhead_ms": 0.0,
            "upstream": self.upstream.name, "attempts": 0, "object_id": batch_id,
        })

    async def poll_once(self) -> None:
        """Look up every open batch once; settle the ones that ended, reserve again the ones that have no
        reservation (after a restart)."""
        for batch_id in list(self.open):
            data = await self._fetch(f"/batches/{batch_id}", None)
            if data is None:
                continue
            try:
                card = loads(data)
            except JSONDecodeError:
                continue
            if not isinstance(card, dict):
                continue
            if card.get("status") in TERMINAL:
                await self.settle(batch_id, card)
            elif (batch := self.open.get(batch_id)) is not None and batch.reservation is None:
                await self._reserve_again(batch_id, batch, card)

    async def _reserve_again(self, batch_id: str, batch: OpenBatch, card: dict[str, Any]) -> None:
        file_id = card.get("input_file_id")
        data = await self._fetch(f"/files/{file_id}/content", None) if isinstance(file_id, str) else None
        if data is None:
            return
        try:
            worst = await asyncio.to_thread(self.worst_case, data, str(card.get("endpoint", "")), None)
        except InvalidRequest:
            return
        batch.model = batch.model or worst.model
        micros = self.prices.cost_micros(worst.model, worst.usage, batch=True) or 0
        batch.reservation = self.book.reserve_unchecked(batch.principal, worst.model, micros, worst.usage.total)

    async def start(self) -> None:
        """At start: look up the batches the ledger says are open, then poll on the clock."""
        if self.open:
            try:
                await asyncio.wait_for(self.poll_once(), 30)
            except TimeoutError:
                log.warning("open batches not all looked up at start; the poll will retry")
        await super().start()

    def load_ledger(self, path: str) -> int:
        """The batches created and not settled, from the ledger (once at start, off the event loop)."""
        rows = unsettled(path, "object_id, key_name",
                         "method = 'POST' AND endpoint = '/v1/batches' AND status = 200", SETTLE_METHOD)
        for batch_id, key_name in rows:
            self.open.setdefault(batch_id, OpenBatch(key_name, None, None))
        return len(rows)

    # --- upstream --------------------------------------------------------------------------------

    async def _fetch(self, path: str, client_token: str | None) -> bytes | None:
        """GET `path` under the upstream's base URL with the gateway's own session; None on any failure."""
        token = client_token if self.pass_through else self.upstream.api_key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["Accept-Encoding"] = "identity"
        try:
            async with self.session.get(self.upstream.base_url.rstrip("/") + path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=120)) as response:
                if response.status != 200:
                    if response.status == 404 and path.startswith("/batches/"):
                        self._forget(path.removeprefix("/batches/"))
                    return None
                if (response.content_length or 0) > MAX_FILE_BYTES:
                    return None
                data = await response.content.read(MAX_FILE_BYTES + 1)
                return None if len(data) > MAX_FILE_BYTES else data
        except (aiohttp.ClientError, TimeoutError):
            return None

    def _forget(self, batch_id: str) -> None:
        """A batch the upstream no longer knows: release what it held (nothing can be charged for it)."""
        batch = self.open.pop(batch_id, None)
        if batch is not None and batch.reservation is not None:
            self.book.settle(batch.reservation, 0, 0)
            log.warning("batch %s is unknown upstream: its reservation is released", batch_id)


def _first_model(data: bytes) -> str | None:
    for raw in data.split(b"\n", 64)[:64]:
        if b'"model"' in raw:
            try:
                line = loads(raw)
            except JSONDecodeError:
                continue
            body = line.get("body") if isinstance(line, dict) else None
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                return body["model"]
    return None


def _output_usage(data: bytes) -> Usage:
    """The usage of every successful line of a batch output file, summed."""
    prompt = completion = cached = reasoning = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = loads(raw)
        except JSONDecodeError:
            continue
        response = line.get("response") if isinstance(line, dict) else None
        if not isinstance(response, dict) or response.get("status_code") != 200:
            continue
        found = from_body(response.get("body"))
        if found is not None:
            prompt, completion = prompt + found.prompt, completion + found.completion
            cached, reasoning = cached + found.cached, reasoning + found.reasoning
    return Usage(prompt, completion, cached, reasoning)
