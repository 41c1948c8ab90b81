"""What runs, in what order, for one request: the gateway's stage list and nothing else.

One `/v1` request becomes one `Exchange` (see `proxy.exchange`) that goes through three parts:

    before (each stage's `request(ex)`, in this order; any may answer the client with a GatewayError)
      Deadline        the one deadline for queueing, retries and the answer      stages/deadline.py
      RequestId       the exchange id in `x-request-id`                          stages/ledger.py
      Authenticate    the key -> principal (401); only these three run before    stages/auth.py
                      the body is read (`HEADER_STAGES` in proxy/app.py)
      Route           alias -> model; which upstream (`ex.target`)               stages/route.py
      Owners          who may see which object; who created what (404)           stages/owners.py
      Cache           answer a repeated request from the response cache; a hit   stages/cache.py
                      is served at once and skips the rest (`[cache] enabled`)
      Estimator       worst-case tokens and cost (`ex.estimate`); a prompt over  stages/estimate.py
                      the model's context window gets 400 here
      Budget          reserve the worst case against budgets (429); shared: sent stages/budget.py
                      with RateLimit's admission, one round trip
      BatchBudgets    reserve a batch's worst case                               stages/batches.py
      RateLimit       RPM/TPM/concurrency, queue or reject (429)                 stages/ratelimit.py
      Fixtures        replay a recorded answer (`ex.replay`) or miss             stages/fixtures.py
    forward           the upstream call: retries, streaming relay, chunk hooks   stages/forward.py
                      (or the replay of `ex.replay`, same hooks); once a model's stages/fallback.py
                      retries are spent, `[[fallbacks]]` re-route, re-admit
                      (estimate, budget, rate limit) and try the next model
    after (each stage's `chunk(ex, data)` per relayed chunk, then `finish(ex)`, in this order, off the
           request's critical path; a stage that fails to finish does not stop the others)
      Meter           usage and cost (a replay costs nothing)                    stages/meter.py
      Cache           store a complete 2xx answer (`[cache] enabled`)            stages/cache.py
      Owners          remember the object a request created                      stages/owners.py
      Chains          remember response chains (previous_response_id)            stages/chains.py
      BatchBudgets    settle or hand a batch's reservation to the poller         stages/batches.py
      Fixtures        record the answer (record modes)                           stages/fixtures.py
      Budget          replace the reservation by the real cost                   stages/budget.py
      PendingResponses  background responses: settle when they end              stages/pending.py
      RateLimit       release the concurrency permit, count real tokens          stages/ratelimit.py
      Metrics         Prometheus counters                                        stages/metrics.py
      Ledger          one ledger row (when the ledger is enabled)                stages/ledger.py
      AccessLog       one access-log line                                        stages/accesslog.py

To add a stage: write a `Stage` subclass in `proxy/stages/` (one concern; hooks in
`proxy/stages/__init__.py`; its per-request state in a `Slot` on the exchange, see
`proxy.exchange.StageState`), and put it in `default_pipeline` below, in `before`, `after` or both.
What it needs that lives longer than a request (a session, a poller, the ledger) belongs in
`proxy.resources`, which opens and closes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .exchange import Exchange, Slot
from .stages import Stage
from .stages.accesslog import AccessLog
from .stages.budget import Budget, BudgetBook
from .stages.deadline import Deadline
from .stages.estimate import Estimator
from .stages.fallback import Fallbacks, readmission
from .stages.fallback import rules_from_config as fallback_rules
from .stages.fixtures import Fixtures
from .stages.forward import Forward, Timeouts
from .stages.ledger import Ledger, RequestId
from .stages.meter import Meter
from .stages.metrics import Metrics
from .stages.ratelimit import RateLimit
from .stages.route import Route

if TYPE_CHECKING:
    from .db.writer import LedgerWriter
    from .resources import Resources

log = logging.getLogger("oaigate")


def default_pipeline(r: Resources) -> Pipeline:
    """The gateway's stages, in order, over the app-wide resources `r` (see `proxy.resources`)."""
    config, limits, up = r.config, r.config.limits, r.config.upstream
    # the budget's shared reservation goes out with the rate limit's admission (one round trip)
    budget = Budget(r.book, r.prices, pending=r.pending, models=r.models, along=True)
    ratelimit = RateLimit(r.limiter)
    metrics = Metrics(r.book.status if r.book.rules else None)
    r.fixtures.register(metrics.registry)
    needs_estimate = bool(r.book.rules) or any(rule.tpm for rule in r.limiter.rules)
    route = Route(config.resolved_aliases(), r.routes, r.default)
    estimator = Estimator(limits.default_max_tokens, needs_estimate, prices=r.prices, chains=r.chains.context,
                          budgeted=budget.budgeted, check_window=limits.check_context_window)
    caches = [r.cache] if r.cache is not None else []
    for cache in caches:
        cache.register(metrics.registry)
    before: list[Stage] = [
        Deadline(up.timeout_s),
        RequestId(),
        r.authenticate,
        route,
        *r.owners.stages,
        *caches,
        estimator,
        budget,
        r.batches,
        ratelimit,
        r.fixtures,
    ]
    forward = Forward(r.session, r.default.upstream, max_retries=up.max_retries,
                      timeouts=Timeouts(up.timeout_s, up.connect_timeout_s, up.first_byte_timeout_s),
                      pass_through=up.pass_through, sleep=r.sleep, on_attempt=r.observe, pool_size=up.pool_size)
    if config.fallbacks:  # a failed model is retried on the next of its `to` list, admitted again
        forward.fallbacks = estimator.fallbacks = Fallbacks(
            fallback_rules(config.fallbacks), route.select, readmission(estimator, budget, ratelimit))
        forward.fallbacks.register(metrics.registry)
    after: list[Stage] = [
        Meter(r.prices),
        *caches,
        *r.owners.stages,
        r.chains,
        r.batches,
        r.fixtures,
        budget,
        r.pending,
        ratelimit,
        metrics,
        *([Ledger(r.writer, config.ledger.log_bodies)] if r.writer is not None else []),
        AccessLog(),
    ]
    return Pipeline(before=before, forward=forward, after=after, metrics=metrics, writer=r.writer, budgets=r.book,
                    fixtures=r.fixtures, durable_wait_s=config.ledger.durable_wait_s)


# finish hooks started by `complete`: the task still running them, or None once they are done
_COMPLETING = Slot[asyncio.Task[None] | None]("pipeline")


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` now, on the caller's stack, up to its first real wait (as Python 3.12's eager tasks
    do): None when it ended without one, the usual case for the finish hooks; else a task that carries
    it on from there. Saves a task, a shield and a loop turn per request."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_carry_on(coro, waiting))


async def _carry_on(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drive `coro`, suspended on `waiting` (the future it gave the loop, or None for a bare yield), as
    its own task would: wait until that settles, then resume it (the future's result or exception
    reaches it through its own `await`); anything else raised while waiting (this task cancelled while
    the future could not be) is thrown into it where it waits."""
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # given to us as to a task: ours to wait on now
                await waiting
        except BaseException as exc:
            if waiting is None or not waiting.done():
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
                continue
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


@dataclass(eq=False)
class Pipeline:
    """The ordered stages around `forward`, and the finish tasks still running."""

    before: list[Stage]
    forward: Forward
    after: list[Stage]
    metrics: Metrics
    writer: LedgerWriter | None
    budgets: BudgetBook
    fixtures: Fixtures
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    drained: int = 0  # exchanges still finishing when the server stopped (the shutdown line says so)
    durable_wait_s: float = 0.0

    def __post_init__(self) -> None:
        # per response chunk, only the stages that look at chunks (most have the no-op hook)
        self.chunk_hooks = [stage.chunk for stage in self.after if type(stage).chunk is not Stage.chunk]

    def chunk(self, ex: Exchange, data: bytes) -> None:
        for hook in self.chunk_hooks:
            hook(ex, data)

    async def complete(self, ex: Exchange) -> None:
        """A response that reached its end normally, before its last bytes go out: run the finish hooks
        now (once: `schedule_finish` then does nothing), then wait, at most `durable_wait_s` each, until
        its ledger row is committed and what else it waits for is done (`ex.answer_waits_for`: a shared
        budget's settle, so a client that has its answer sees its spend). The hooks start on the
        caller's stack (`run_eagerly`); one that has to wait (shared state, a fixture file) goes on in a
        task of its own, so a client leaving halfway through never leaves them half done."""
        if _COMPLETING in ex.state:
            return
        ex.finished = time.perf_counter()
        task = run_eagerly(self._finish(ex))
        ex.state.set(_COMPLETING, task)
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await asyncio.shield(task)
        if self.durable_wait_s <= 0:
            return
        if ex.ledger_ticket is not None and self.writer is not None:
            await self.writer.wait_written(ex.ledger_ticket, self.durable_wait_s)
        if ex.answer_waits_for:  # a shared budget's settle, sent with the hooks: usually done by now
            await asyncio.wait(ex.answer_waits_for, timeout=self.durable_wait_s)

    def schedule_finish(self, ex: Exchange) -> None:
        if _COMPLETING in ex.state:
            return  # `complete` ran the finish hooks already
        task = asyncio.get_running_loop().create_task(self._finish(ex))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, ex: Exchange) -> None:
        for stage in self.after:
            try:
                await stage.finish(ex)
            except Exception:  # a broken stage must not lose the others' work
                log.exception("stage %s failed to finish exchange %s", type(stage).__name__, ex.id)

    async def drain(self) -> None:
        self.drained += len(self.tasks)
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


PIPELINE = web.AppKey("pipeline", Pipeline)
