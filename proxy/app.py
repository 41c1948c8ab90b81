"""The gateway's aiohttp application: one catch-all `/v1` route running the stage pipeline.

App-wide things (the upstream ClientSession, the embedded mock, the ledger writer, the stages)
live under `web.AppKey`s and are opened and closed in `cleanup_ctx`, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from .body import receive_body
from .clock import Clock
from .config import Config
from .db.ledger import open_writer, target
from .db.writer import LedgerWriter
from .durable import COMPLETE
from .errors import GatewayError, InvalidRequest, NotFound
from .exchange import Exchange
from .stages import Stage
from .stages.accesslog import AccessLog
from .stages.auth import Authenticate
from .stages.batches import BatchBudgets
from .stages.budget import Budget, BudgetBook
from .stages.budget import rules_from_config as budget_rules
from .stages.chains import Chains
from .stages.deadline import Deadline
from .stages.estimate import Estimator
from .stages.fixtures import Fixtures, replay
from .stages.forward import Forward, Timeouts, Upstream
from .stages.ledger import Ledger, RequestId
from .stages.meter import Meter
from .stages.metrics import Metrics
from .stages.owners import OWNERS, Owners, filter_lists
from .stages.pending import PendingResponses
from .stages.ratelimit import RateLimit, RateLimiter, UpstreamGovernor
from .stages.ratelimit import rules_from_config as rate_rules
from .stages.route import Route, Target, Upstreams, upstreams_from_config, uses_mock
from .wire.jsoncodec import JSONDepthError, dumps
from .wire.pricing import PriceTable
from .wire.serving import cut_by_shutdown
from .wire.tokens import preload

log = logging.getLogger("oaigate")

MAX_BODY_BYTES = 600 * 1024 * 1024  # OpenAI accepts files up to 512 MB


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
    completing: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # by id(ex), until schedule_finish

    def chunk(self, ex: Exchange, data: bytes) -> None:
        for stage in self.after:
            stage.chunk(ex, data)

    async def complete(self, ex: Exchange) -> None:
        """A response that reached its end normally, before its last bytes go out: run the finish hooks
        now (once: `schedule_finish` then does nothing), then wait, at most `durable_wait_s`, until its
        ledger row is committed. The hooks run in their own task, so a client leaving halfway through
        never leaves them half done."""
        if id(ex) in self.completing:
            return
        ex.finished = time.perf_counter()
        task = asyncio.get_running_loop().create_task(self._finish(ex, durable=True))
        self.completing[id(ex)] = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.shield(task)

    def schedule_finish(self, ex: Exchange) -> None:
        if self.completing.pop(id(ex), None) is not None:
            return  # `complete` ran the finish hooks already
        task = asyncio.get_running_loop().create_task(self._finish(ex))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, ex: Exchange, durable: bool = False) -> None:
        for stage in self.after:
            try:
                await stage.finish(ex)
            except Exception:  # a broken stage must not lose the others' work
                log.exception("stage %s failed to finish exchange %s", type(stage).__name__, ex.id)
        if durable and self.writer is not None and self.durable_wait_s > 0:
            # the ledger stage (last) has just submitted this exchange's row: the latest ticket covers it
            await self.writer.wait_written(self.writer.accepted, self.durable_wait_s)

    async def drain(self) -> None:
        self.drained += len(self.tasks)
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


CONFIG = web.AppKey("config", Config)
PIPELINE = web.AppKey("pipeline", Pipeline)
AUTHENTICATE = web.AppKey("authenticate", Authenticate)
UPSTREAM = web.AppKey("upstream", Upstream)
UPSTREAMS = web.AppKey("upstreams", Upstreams)

Sleep = Callable[[float], Awaitable[object]]


def make_app(config: Config, *, config_file: str = "config.toml", sleep: Sleep = asyncio.sleep,
             clock: Clock | None = None) -> web.Application:
    """Build the gateway. Nothing is opened until the app starts (see `cleanup_ctx`). `sleep` (retry
    waits) and `clock` (budget periods, rate limits) are replaceable so tests control time."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args={"max_field_size": 65536})
    app[CONFIG] = config
    app[AUTHENTICATE] = authenticate = Authenticate(config.keys, config_file)  # fails now on a missing key_env
    app[OWNERS] = owners = Owners(config, authenticate)  # with [[keys]]: who created what; lists filtered
    if owners.enabled:
        app.middlewares.append(filter_lists)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_pipeline_ctx(authenticate, sleep, clock or Clock()))
    app.cleanup_ctx.append(owners.ctx)  # after the pipeline's: the ledger writer has migrated the schema
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/oaigate/budgets", budgets)
    app.router.add_route("*", "/v1/{tail:.*}", handle)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
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
             per_client: bool = False) -> tuple[Target, list[tuple[str, Target]]]:
    """One `Target` per distinct upstream; one adaptive governor per upstream URL and key (the
    scope of a provider's own rate limit; per client key too when `per_client`, pass-through)."""
    governors: dict[tuple[str, str | None], UpstreamGovernor] = {}
    targets: dict[Upstream, Target] = {}
    for upstream in upstreams.distinct:
        governor = None
        if adaptive:
            governor = governors.setdefault((upstream.base_url, upstream.api_key),
                                            UpstreamGovernor(per_client=per_client))
        targets[upstream] = Target(upstream, governor)
    return targets[upstreams.default], [(pattern, targets[u]) for pattern, u in upstreams.routes]


def _observe(clock: Clock) -> Callable[[Exchange, int, Mapping[str, str]], None]:
    """Feeds each upstream answer to the governor of the upstream that gave it."""
    def observe(ex: Exchange, status: int, headers: Mapping[str, str]) -> None:
        if ex.target is not None and ex.target.governor is not None:
            governor = ex.target.governor
            governor.observe(status, headers, clock.monotonic(), governor.key(ex))

    return observe


def _pipeline_ctx(authenticate: Authenticate, sleep: Sleep,
                  clock: Clock) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        db = target(config.ledger) if config.ledger.enabled else ""
        writer = open_writer(config.ledger) if config.ledger.enabled else None
        if writer is not None:
            await asyncio.to_thread(writer.start)
        await asyncio.to_thread(preload)
        limits = config.limits
        prices = PriceTable(config.price_overrides())
        book = BudgetBook(budget_rules(config), clock, limits.timezone, limits.soft_threshold)
        chains = Chains()
        if config.ledger.enabled:
            await asyncio.to_thread(book.load_ledger, db, config.resolved_aliases())
            await asyncio.to_thread(chains.load_ledger, db)
        rate_rules_ = rate_rules(config)
        default, routes = _targets(app[UPSTREAMS], limits.adaptive, config.upstream.pass_through)
        limiter = RateLimiter(rate_rules_, clock, on_limit=limits.on_limit, max_wait_s=limits.max_wait_s,
                              governor=default.governor)
        budget, ratelimit, fixtures = Budget(book, prices), RateLimit(limiter), Fixtures.for_config(config)
        needs_estimate = bool(book.rules) or any(r.tpm for r in rate_rules_)
        pool = config.upstream.pool_size
        connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool, keepalive_timeout=60, ttl_dns_cache=300)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",))
        up = config.upstream
        forward = Forward(session, default.upstream, max_retries=up.max_retries,
                          timeouts=Timeouts(up.timeout_s, up.connect_timeout_s, up.first_byte_timeout_s),
                          pass_through=up.pass_through, sleep=sleep,
                          on_attempt=_observe(clock) if limits.adaptive else None, pool_size=pool)
        metrics = Metrics(book.status if book.rules else None)
        fixtures.register(metrics.registry)
        batches = BatchBudgets(book, prices, session, default.upstream, writer, clock, poll_s=limits.batch_poll_s,
                               chains=chains.context, pass_through=up.pass_through)
        pending = PendingResponses(book, prices, session, default.upstream, writer, clock, poll_s=limits.batch_poll_s,
                                   remember=chains.remember, upstreams=app[UPSTREAMS].distinct)
        budget.pending = pending
        if config.ledger.enabled:
            await asyncio.to_thread(batches.load_ledger, db)
            await asyncio.to_thread(pending.load_ledger, db)
        app[PIPELINE] = Pipeline(
            before=[Deadline(config.upstream.timeout_s), RequestId(), authenticate,
                    Route(config.resolved_aliases(), routes, default),
                    *app[OWNERS].stages,
                    Estimator(limits.default_max_tokens, needs_estimate, prices=prices, chains=chains.context,
                              budgeted=budget.budgeted), budget, batches, ratelimit, fixtures],
            forward=forward,
            after=[Meter(prices), *app[OWNERS].stages, chains, batches, fixtures, budget, pending, ratelimit, metrics]
            + ([Ledger(writer, config.ledger.log_bodies)] if writer is not None else []) + [AccessLog()],
            metrics=metrics,
            writer=writer,
            budgets=book,
            fixtures=fixtures,
            durable_wait_s=config.ledger.durable_wait_s,
        )
        await batches.start()
        await pending.start()
        app[COMPLETE] = app[PIPELINE].complete
        try:
            yield
        finally:
            await pending.stop()
            await batches.stop()
            await app[PIPELINE].drain()
            await fixtures.save_hits()
            await session.close()
            if writer is not None:
                await asyncio.to_thread(writer.close)

    return ctx


HEADER_STAGES: tuple[type[Stage], ...] = (Deadline, RequestId, Authenticate)  # run before the body is read


async def handle(request: web.Request) -> web.StreamResponse:
    """Every `/v1` request: stages before, forward (relay), then the finish hooks off the path.

    The body is read (or set up to stream, see `proxy.body`) only once the header stages (the key
    check) have passed: a client with a wrong key costs no memory, whatever it uploads."""
    pipeline = request.app[PIPELINE]
    ex = Exchange(request.method, request.path, request.query_string, request.headers, b"")
    try:
        if odd_path(request.rel_url.raw_path):
            raise NotFound(f"Invalid URL ({request.method} {request.path})")
        body_pending = True
        for stage in pipeline.before:
            if body_pending and not isinstance(stage, HEADER_STAGES):
                body_pending = False
                await receive_body(request, ex, request.app[CONFIG])
            await stage.request(ex)
        if body_pending:
            await receive_body(request, ex, request.app[CONFIG])
        if ex.replay is not None:
            return await replay(request, ex, ex.replay, pace=pipeline.fixtures.config.pace, on_chunk=pipeline.chunk)
        return await pipeline.forward(request, ex, pipeline.chunk)
    except (GatewayError, JSONDepthError, RecursionError) as exc:
        # a body nested deeper than the JSON writer goes, met where the gateway re-serializes it
        return _error(request, ex, exc if isinstance(exc, GatewayError)
                      else InvalidRequest(str(JSONDepthError()), code="invalid_value"))
    except (asyncio.CancelledError, ConnectionResetError):
        if not ex.stream_ended:  # a client that leaves once it has the last event did not abandon anything
            # cut because the server stopped and its grace ran out: not the client's doing
            ex.error_type = "shutdown" if cut_by_shutdown(request) else "client_disconnected"
        raise
    except Exception:
        if _response_started(request):  # too late for an envelope: the client's response is cut
            raise
        log.exception("unexpected error on exchange %s", ex.id)
        return _error(request, ex, GatewayError("The gateway had an error while processing your request.",
                                                code="internal_error"))
    finally:
        ex.finished = time.perf_counter()
        pipeline.schedule_finish(ex)


_ODD_PARTS = ("//", "/./", "/../", "\\")
_TWO_WORD = frozenset({"chat", "fine_tuning", "audio", "images", "realtime", "organization"})


def odd_path(raw_path: str) -> bool:
    """A `/v1` path spelled other than the API spells it: `//`, `.`/`..`, a trailing `/`, or an endpoint
    name (`/v1/NAME`, `/v1/chat/NAME`...) not in lower case or with an escape in it (`%2F`, `%2E`). An
    upstream (or a proxy in front of it) may resolve such a spelling to an endpoint whose budget,
    estimate and owner checks it would skip, so it is answered 404, as OpenAI answers it. Ids after the
    endpoint name keep their case and escapes (`/v1/models/org%2Fmodel`)."""
    if any(part in raw_path for part in _ODD_PARTS) or raw_path.endswith(("/", "/.", "/..")):
        return True
    parts = raw_path.split("/", 4)  # "", "v1", name, second...
    names = parts[2:4] if len(parts) > 3 and parts[2] in _TWO_WORD else parts[2:3]
    return any(name != name.lower() or "%" in name for name in names)


async def _caller(request: web.Request) -> Exchange:
    """The calling key (`principal`, `admin`); raises the 401 `GatewayError` for no or a wrong key."""
    ex = Exchange(request.method, request.path, request.query_string, request.headers, b"")
    await request.app[AUTHENTICATE].request(ex)
    return ex


def _error(request: web.Request, ex: Exchange, exc: GatewayError) -> web.Response:
    """The envelope for an error the gateway answers itself; the connection closes when the client's
    body was left unread (nothing more of it is wanted)."""
    ex.status = exc.status
    ex.error_type = exc.code or type(exc).__name__
    ex.overhead_s = max(time.perf_counter() - ex.started - ex.upstream_wait_s, 0.0)
    response = exc.response()
    response.headers.update(ex.response_headers)
    response.headers["x-oaigate-overhead-ms"] = f"{ex.overhead_s * 1000:.3f}"
    if not request.content.is_eof():
        response.force_close()
    return response


def _response_started(request: web.Request) -> bool:
    """Whether the client's response (headers at least) is already on its way."""
    writer = request.writer
    return bool(getattr(writer, "_headers_buf", None) or getattr(writer, "_headers_written", False)
                or getattr(writer, "output_size", 0))


async def healthz(request: web.Request) -> web.Response:
    """200 once serving; reports the ledger writer's backlog and dropped rows. With [[keys]], only a
    caller with a valid key sees more than the status."""
    if request.app[CONFIG].keys:
        try:
            await _caller(request)
        except GatewayError:
            return web.Response(body=dumps({"status": "ok"}), content_type="application/json")
    writer = request.app[PIPELINE].writer
    ledger = None if writer is None else {"backlog": writer.backlog, "written": writer.written,
                                          "dropped": writer.dropped, "write_failures": writer.failures,
                                          "durability_timeouts": writer.durability_timeouts, "batches": writer.batches,
                                          "synchronous": writer.synchronous,
                                          "backend": getattr(writer, "backend", "sqlite")}
    body = {"status": "ok", "service": "oaigate", "upstream": request.app[UPSTREAM].name,
            "upstreams": [u.name for u in request.app[UPSTREAMS].distinct], "ledger": ledger}
    return web.Response(body=dumps(body), content_type="application/json")


async def budgets(request: web.Request) -> web.Response:
    """The calling key's budgets: limit, spent, reserved, remaining, when it resets. With [[keys]], a
    key sees the budgets that name it (its own, and its share of a `key = "*"` one); an admin sees all."""
    try:
        ex = await _caller(request)
    except GatewayError as exc:
        return exc.response()
    book = request.app[PIPELINE].budgets
    if not request.app[CONFIG].keys:
        found = book.status(ex.principal)
    else:
        found = book.status(None) if ex.admin else book.status(ex.principal, own_only=True)
    body = {"key": ex.principal, "budgets": found}
    return web.Response(body=dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text. With [[keys]], a valid key is needed unless `server.metrics_public`."""
    config = request.app[CONFIG]
    if config.keys and not config.server.metrics_public:
        try:
            await _caller(request)
        except GatewayError as exc:
            return exc.response()
    return web.Response(body=request.app[PIPELINE].metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def not_found(request: web.Request) -> web.Response:
    from .wire.errors import error_response

    started = time.perf_counter()
    response = error_response(404, f"Invalid URL ({request.method} {request.path})")
    if not request.content.is_eof():  # its body is not wanted: close rather than wait for the rest
        response.force_close()
    response.headers["x-oaigate-overhead-ms"] = f"{(time.perf_counter() - started) * 1000:.3f}"
    return response
