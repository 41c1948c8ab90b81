"""The gateway's aiohttp application: one catch-all `/v1` route running the stage pipeline.

The stage order is `proxy.pipeline`; the app-wide things the stages share (the upstream
ClientSession, the embedded mock, the ledger writer, pollers) are `proxy.resources`, opened and
closed in `cleanup_ctx`, in that order. This module is the HTTP side: routes and error answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from aiohttp import web

from . import dashboard
from .body import receive_body
from .clock import Clock
from .config import Config
from .errors import GatewayError, InvalidRequest, NotFound
from .exchange import Exchange
from .pipeline import PIPELINE
from .resources import CONFIG, UPSTREAM, UPSTREAMS, Sleep, pipeline_ctx, upstream_ctx
from .stages import Stage
from .stages.auth import Authenticate
from .stages.cache import serve as serve_cached
from .stages.deadline import Deadline
from .stages.fixtures import replay
from .stages.forward import ClientGone
from .stages.ledger import RequestId
from .stages.owners import FORM_REFERENCES, OWNERS, Owners, filter_lists
from .state import StateUnavailable
from .state import check_config as check_state
from .wire.jsoncodec import JSONDepthError, dumps
from .wire.serving import cut_by_shutdown

log = logging.getLogger("oaigate")

MAX_BODY_BYTES = 600 * 1024 * 1024  # OpenAI accepts files up to 512 MB

AUTHENTICATE = web.AppKey("authenticate", Authenticate)


def make_app(config: Config, *, config_file: str = "config.toml", sleep: Sleep = asyncio.sleep,
             clock: Clock | None = None, worker: int = 0) -> web.Application:
    """Build the gateway. Nothing is opened until the app starts (see `cleanup_ctx`). `sleep` (retry
    waits) and `clock` (budget periods, rate limits) are replaceable so tests control time. `worker`:
    this process's index under `serve --workers`; only worker 0 resumes the batches and background
    responses that the ledger shows open, so they are polled and settled once."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args={"max_field_size": 65536})
    app[CONFIG] = config
    check_state(config, config_file)  # fails now on an unset [state] password_env
    # fails now on a missing key_env or admin_key_env
    app[AUTHENTICATE] = authenticate = Authenticate(config.keys, config_file, config.server.admin_key_env)
    app[OWNERS] = owners = Owners(config, authenticate)  # with [[keys]]: who created what; lists filtered
    if owners.enabled:
        app.middlewares.append(filter_lists)
    app.cleanup_ctx.append(upstream_ctx)
    app.cleanup_ctx.append(pipeline_ctx(authenticate, sleep, clock or Clock(), resume_open=worker == 0))
    app.cleanup_ctx.append(owners.ctx)  # after the pipeline's: the ledger writer has migrated the schema
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/oaigate/budgets", budgets)
    dashboard.setup(app)  # /dashboard, /oaigate/spend, /requests, /limits, /status, /oaigate/v1/organization/...
    app.router.add_route("*", "/v1/{tail:.*}", handle)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


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
                await receive_body(request, ex, request.app[CONFIG], FORM_REFERENCES)
            await stage.request(ex)
            if ex.cache == "hit":  # answered from the cache: nothing to admit, nothing to forward
                return await serve_cached(request, ex, pipeline.chunk)
        if body_pending:
            await receive_body(request, ex, request.app[CONFIG], FORM_REFERENCES)
        if ex.replay is not None:
            return await replay(request, ex, ex.replay, pace=pipeline.fixtures.config.pace, on_chunk=pipeline.chunk)
        return await pipeline.forward(request, ex, pipeline.chunk)
    except (GatewayError, JSONDepthError, RecursionError) as exc:
        # a body nested deeper than the JSON writer goes, met where the gateway re-serializes it
        return _error(request, ex, exc if isinstance(exc, GatewayError)
                      else InvalidRequest(str(JSONDepthError()), code="invalid_value"))
    except (asyncio.CancelledError, ConnectionResetError) as exc:
        if not ex.stream_ended:  # a client that leaves once it has the last event did not abandon anything
            # cut because the server stopped and its grace ran out: not the client's doing
            ex.error_type = "shutdown" if cut_by_shutdown(request) else "client_disconnected"
        if isinstance(exc, ClientGone):
            return exc.response  # a client may hang up: no "Error handling request" traceback in the log
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
# the paths most requests take, spelled as the API spells them: answered without looking closer
_COMMON_PATHS = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions",
                           "/v1/models", "/v1/moderations"})


def odd_path(raw_path: str) -> bool:
    """A `/v1` path spelled other than the API spells it: `//`, `.`/`..`, a trailing `/`, or an endpoint
    name (`/v1/NAME`, `/v1/chat/NAME`...) not in lower case or with an escape in it (`%2F`, `%2E`). An
    upstream (or a proxy in front of it) may resolve such a spelling to an endpoint whose budget,
    estimate and owner checks it would skip, so it is answered 404, as OpenAI answers it. Ids after the
    endpoint name keep their case and escapes (`/v1/models/org%2Fmodel`)."""
    if raw_path in _COMMON_PATHS:
        return False
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
    shared = request.app[PIPELINE].budgets.shared
    state: dict[str, object] = {"backend": "local"}
    if shared is not None:
        if shared.available:
            with contextlib.suppress(StateUnavailable):
                await shared.ping()
        state = shared.health()
    body = {"status": "ok", "service": "oaigate", "pid": os.getpid(), "upstream": request.app[UPSTREAM].name,
            "upstreams": [u.name for u in request.app[UPSTREAMS].distinct], "ledger": ledger, "state": state}
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
