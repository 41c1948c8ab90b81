"""What the pipeline's stages share for the app's lifetime, opened and closed in `cleanup_ctx`.

`upstream_ctx` starts the embedded mock when an upstream says "mock" and resolves the upstreams;
`pipeline_ctx` then opens the ledger writer, loads prices, budgets and chains from the ledger, builds
the rate limiter and the one upstream `ClientSession`, starts the batch and background-response
pollers, and hands all of it (`Resources`) to `proxy.pipeline.default_pipeline`, which orders the
stages. On shutdown they close in reverse: pollers, in-flight finish hooks, fixture hits, session,
ledger writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .cache_store import CacheStore, SQLiteCacheStore
from .clock import Clock
from .config import Config
from .db.ledger import open_writer
from .db.ledger import target as ledger_target
from .db.writer import LedgerWriter
from .durable import COMPLETE
from .exchange import Exchange
from .pipeline import PIPELINE, default_pipeline
from .stages.auth import Authenticate
from .stages.batches import BatchBudgets
from .stages.budget import BudgetBook
from .stages.budget import rules_from_config as budget_rules
from .stages.cache import Cache
from .stages.cache import default_path as default_cache_path
from .stages.chains import Chains
from .stages.fixtures import Fixtures, match_policy
from .stages.models import UpstreamModels
from .stages.owners import OWNERS, Owners
from .stages.pending import PendingResponses
from .stages.ratelimit import RateLimiter, UpstreamGovernor
from .stages.ratelimit import rules_from_config as rate_rules
from .stages.route import Upstreams, upstreams_from_config, uses_mock
from .state import StateUnavailable, open_state
from .upstream import Target, Upstream
from .wire.pricing import PriceTable
from .wire.tokens import CURRENT as CURRENT_ENCODINGS
from .wire.tokens import LEGACY as LEGACY_ENCODINGS
from .wire.tokens import preload, preload_in_background

if TYPE_CHECKING:
    from .state.redis import RedisState

CONFIG = web.AppKey("config", Config)
UPSTREAM = web.AppKey("upstream", Upstream)
UPSTREAMS = web.AppKey("upstreams", Upstreams)

Sleep = Callable[[float], Awaitable[object]]
Observe = Callable[[Exchange, int, Mapping[str, str]], None]


@dataclass(eq=False)
class Resources:
    """The app-wide objects the stages are built over (see `proxy.pipeline.default_pipeline`)."""

    config: Config
    sleep: Sleep  # retry waits
    authenticate: Authenticate
    owners: Owners
    default: Target
    routes: list[tuple[str, Target]]
    observe: Observe | None  # feeds upstream answers to the adaptive governor (`[limits] adaptive`)
    writer: LedgerWriter | None
    prices: PriceTable
    book: BudgetBook
    chains: Chains
    limiter: RateLimiter
    session: aiohttp.ClientSession
    fixtures: Fixtures
    batches: BatchBudgets
    pending: PendingResponses
    models: UpstreamModels  # the upstreams' model lists (`model_not_found` for a model none serves)
    cache: Cache | None  # the response cache (`[cache] enabled`)


async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstreams (`[upstream]` and each `[[routes]]` entry): the embedded mock on a loopback port,
    started once if any of them says "mock", or their base_url."""
    config = app[CONFIG]
    runner, mock_url = None, None
    if uses_mock(config):
        from mockserver.app import make_app as make_mock

        runner = web.AppRunner(make_mock(config.mock), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        mock_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    app[UPSTREAMS] = upstreams = upstreams_from_config(config, mock_url)
    app[UPSTREAM] = upstreams.default
    try:
        yield
    finally:
        if runner is not None:
            await runner.cleanup()


def _targets(upstreams: Upstreams, adaptive: bool,
             per_client: bool = False) -> tuple[Target, list[tuple[str, Target]], UpstreamGovernor | None]:
    """One `Target` per distinct upstream; one adaptive governor per upstream URL and key (the
    scope of a provider's own rate limit; per client key too when `per_client`, pass-through); and the
    default upstream's governor."""
    governors: dict[tuple[str, str | None], UpstreamGovernor] = {}
    targets: dict[Upstream, Target] = {}
    for upstream in upstreams.distinct:
        governor = None
        if adaptive:
            governor = governors.setdefault((upstream.base_url, upstream.api_key),
                                            UpstreamGovernor(per_client=per_client))
        targets[upstream] = Target(upstream, governor)
    default = targets[upstreams.default]
    return default, [(pattern, targets[u]) for pattern, u in upstreams.routes], \
        governors.get((upstreams.default.base_url, upstreams.default.api_key))


def _observe(clock: Clock) -> Observe:
    """Feeds each upstream answer to the governor of the upstream that gave it."""
    def observe(ex: Exchange, status: int, headers: Mapping[str, str]) -> None:
        if ex.target is not None and ex.target.governor is not None:
            governor = ex.target.governor
            governor.observe(status, headers, clock.monotonic(), governor.key(ex))

    return observe


def pipeline_ctx(authenticate: Authenticate, sleep: Sleep, clock: Clock,
                 resume_open: bool = True) -> Callable[[web.Application], AsyncIterator[None]]:
    """The `cleanup_ctx` that opens the `Resources`, sets `app[PIPELINE]` and closes them again.
    `resume_open`: poll the batches and background responses the ledger shows open (worker 0 only)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        db = ledger_target(config.ledger) if config.ledger.enabled else ""
        writer = open_writer(config.ledger) if config.ledger.enabled else None
        if writer is not None:
            await asyncio.to_thread(writer.start)
        limits, up = config.limits, config.upstream
        prices = PriceTable(config.price_overrides(), windows=limits.context_windows)
        prices.warm_in_background()  # the first request is not the one to load genai-prices' table
        book = BudgetBook(budget_rules(config), clock, limits.timezone, limits.soft_threshold)
        chains = Chains()
        if config.ledger.enabled:
            await asyncio.to_thread(book.load_ledger, db, config.resolved_aliases())
            await asyncio.to_thread(chains.load_ledger, db)
        default, routes, governor = _targets(app[UPSTREAMS], limits.adaptive, up.pass_through)
        limiter = RateLimiter(rate_rules(config), clock, on_limit=limits.on_limit, max_wait_s=limits.max_wait_s,
                              governor=governor)
        shared = open_state(config)  # [state] url: budgets, limits and governor holds in Redis
        if shared is not None:
            await _share(shared, book, limiter, [default, *(target for _, target in routes)], clock)
        fixtures = Fixtures.for_config(config)
        if book.rules or any(rule.tpm for rule in limiter.rules):
            # every prompt gets counted: the encoding of current models before serving, so no estimate
            # waits for it; the legacy one (gpt-4, gpt-3.5) in the background. Without budgets or TPM
            # limits a prompt is counted only past a model's context window, and an answer only when it
            # reports no usage: each encoding loads on that first use, in a thread (an idle gateway keeps
            # ~45 MB less)
            await asyncio.to_thread(preload, CURRENT_ENCODINGS)
            preload_in_background(LEGACY_ENCODINGS)
        pool = up.pool_size
        connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool, keepalive_timeout=60, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
        batches = BatchBudgets(book, prices, session, default.upstream, writer, clock, poll_s=limits.batch_poll_s,
                               chains=chains.context, pass_through=up.pass_through)
        pending = PendingResponses(book, prices, session, default.upstream, writer, clock, poll_s=limits.batch_poll_s,
                                   remember=chains.remember, upstreams=app[UPSTREAMS].distinct)
        models = UpstreamModels(session, clock, limits.models_ttl_s, up.pass_through)
        cache = await _cache(config, clock) if config.cache.enabled else None
        if config.ledger.enabled and resume_open:
            await asyncio.to_thread(batches.load_ledger, db)
            await asyncio.to_thread(pending.load_ledger, db)
        app[PIPELINE] = pipeline = default_pipeline(Resources(
            config=config, sleep=sleep, authenticate=authenticate, owners=app[OWNERS],
            default=default, routes=routes, observe=_observe(clock) if limits.adaptive else None, writer=writer,
            prices=prices, book=book, chains=chains, limiter=limiter, session=session, fixtures=fixtures,
            batches=batches, pending=pending, models=models, cache=cache))
        await batches.start()
        await pending.start()
        app[COMPLETE] = pipeline.complete
        try:
            yield
        finally:
            await pending.stop()
            await batches.stop()
            await pipeline.drain()
            await fixtures.save_hits()
            await session.close()
            if shared is not None:
                await shared.stop()
            if cache is not None:
                await cache.store.close()
            if writer is not None:
                await asyncio.to_thread(writer.close)

    return ctx


async def _cache(config: Config, clock: Clock) -> Cache:
    """The response cache's stage, over Redis with `[state] url` (shared by every gateway using it), else
    its SQLite store, opened (off the event loop)."""
    store: CacheStore
    if config.state.url is not None:
        from .state.cache import RedisCacheStore

        store = RedisCacheStore.from_config(config)
    else:
        sqlite = SQLiteCacheStore(config.cache.path or default_cache_path(config.ledger.path), config.cache.max_bytes)
        await asyncio.to_thread(sqlite.open)
        store = sqlite
    return Cache(config.cache, store, clock, match_policy(config.fixtures).ignored)


async def _share(shared: RedisState, book: BudgetBook, limiter: RateLimiter, targets: list[Target],
                 clock: Clock) -> None:
    """Point the books at the shared state, and offer it the ledger's spend (again whenever Redis returns)."""
    await shared.start()
    book.shared = limiter.shared = shared
    for target in targets:
        if isinstance(target.governor, UpstreamGovernor):
            identity = f"{target.upstream.base_url}\0{target.upstream.api_key or ''}".encode()
            target.governor.shared, target.governor.wall = shared, clock
            target.governor.shared_name = hashlib.sha256(identity).hexdigest()[:16]
    shared.on_recover.append(book.seed_shared)
    if shared.available:
        with contextlib.suppress(StateUnavailable):  # else seeded once Redis answers
            await book.seed_shared()
