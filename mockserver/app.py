"""The mock's aiohttp application: routing, middlewares (errors, auth, faults) and app-wide state."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.wire import SIMULATED_HEADER
from proxy.wire.errors import INVALID_REQUEST, SERVER_ERROR, error_response
from proxy.wire.tokens import preload

from .api import models as models_api
from .api.chat import completions as chat
from .api.chat import legacy as completions
from .api.chat import stored
from .api.embeddings import embeddings, moderations
from .api.files import batches, files, fine_tuning, uploads
from .api.media import audio, images
from .api.responses import conversations, responses
from .engine import control, dispatch, replay, rules
from .engine.caching import PROMPT_CACHE, PromptCache
from .engine.catalogue import Catalogue
from .engine.clock import Sleep, VirtualClock
from .engine.faults import (
    FAULT,
    FAULT_HEADER,
    LATENCY_HEADER,
    PACING,
    FaultCounter,
    error_for,
    parse_fault,
    parse_pacing,
)
from .engine.ratelimit import RATE_HEADERS, RequestLimit
from .engine.ratelimit import add_headers as add_rate_headers
from .engine.state import CATALOGUE, CLOCK, FAULTS, SETTINGS, SLEEP, Handler, endpoint
from .engine.streaming import cut
from .errors import MockError, readable
from .settings import MockSettings

log = logging.getLogger("oaigate.mock")
RATE_LIMIT = web.AppKey[RequestLimit | None]("rate_limit")

HANG_S = 600.0  # how long a `timeout` fault holds the request before giving up on the client

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in OpenAI's envelope; client input never causes a stack trace."""
    try:
        return await handler(request)
    except MockError as exc:
        return exc.response()
    except HttpProcessingError as exc:  # a body the client framed wrongly (multipart parts, chunks)
        reason = readable(str(exc.message or "malformed"))[:200]
        return error_response(400, f"Could not parse the body of your request: {reason}.", INVALID_REQUEST)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"Request body too large: {exc.text or 'limit exceeded'}.",
                              INVALID_REQUEST, code="request_too_large")
    except web.HTTPException as exc:
        if exc.status in (404, 405):
            return error_response(exc.status, f"Invalid URL ({request.method} {request.path})")
        return error_response(exc.status, exc.reason, INVALID_REQUEST if exc.status < 500 else SERVER_ERROR)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("mock failed on %s %s", request.method, request.path)
        return error_response(500, "The server had an error while processing your request. Sorry about that!",
                              SERVER_ERROR)


@web.middleware
async def api_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Under /v1: require a bearer token, then apply `x-mock-latency` and `x-mock-fault`."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    if not request.headers.get("Authorization", "").strip():
        raise MockError(401, _NO_KEY)
    limit = request.app[RATE_LIMIT]
    if limit is not None:
        request[RATE_HEADERS] = limit.take()
    if LATENCY_HEADER in request.headers:
        request[PACING] = parse_pacing(request.headers[LATENCY_HEADER])
    if FAULT_HEADER in request.headers:
        fault = parse_fault(request.headers[FAULT_HEADER])
        if request.app[FAULTS].should_fail(fault):
            if fault.kind == "timeout":
                await request.app[SLEEP](HANG_S)
                raise MockError(504, "The mock held this request (x-mock-fault: timeout).", type=SERVER_ERROR)
            if fault.kind != "disconnect":
                raise error_for(fault)
            request[FAULT] = fault
    response = await handler(request)
    if request.get(FAULT) is not None and not response.prepared:
        cut(request)  # a non-streamed answer to `disconnect`: the connection drops, nothing is sent
    return response


async def mark_simulated(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer says it is simulated, so a gateway in front never reports it as real spend."""
    response.headers[SIMULATED_HEADER] = "true"


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 with a small JSON body once the server accepts requests."""
    return web.json_response({"status": "ok", "service": "oaigate-mock", "seed": request.app[SETTINGS].seed})


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


async def _load_tokenizers(app: web.Application) -> None:
    """Load both encodings before the first request instead of during it (~0.5 s)."""
    await asyncio.to_thread(preload)


def make_app(settings: MockSettings | None = None, *, sleep: Sleep = asyncio.sleep) -> web.Application:
    """Build the mock server application. `sleep` is replaceable so tests control time. A bad rules
    file raises `ConfigError`."""
    settings = settings or MockSettings()
    file_rules = rules.load_file(settings.rules_file) if settings.rules_file else []
    app = web.Application(middlewares=[control.journal_middleware, errors_middleware, api_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[CATALOGUE] = Catalogue(settings.models, settings.accept_unknown_models)
    app[CLOCK] = VirtualClock(settings.clock_start)
    app[FAULTS] = FaultCounter()
    app[SLEEP] = sleep
    app[PROMPT_CACHE] = PromptCache()
    control.on_reset(app, app[PROMPT_CACHE].clear)
    app[RATE_LIMIT] = None
    if settings.rate_limit_requests is not None:
        app[RATE_LIMIT] = RequestLimit(settings.rate_limit_requests,
                                       settings.rate_limit_per_s or settings.rate_limit_requests / 60)
        app.on_response_prepare.append(add_rate_headers)
    app.on_startup.append(_load_tokenizers)
    app.on_response_prepare.append(mark_simulated)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", models_api.list_models)
    app.router.add_get("/v1/models/{model:.+}", models_api.retrieve_model)
    app.router.add_delete("/v1/models/{model:.+}", models_api.delete_model)
    app.router.add_post("/v1/chat/completions", endpoint(chat.create))
    app.router.add_post("/v1/completions", endpoint(completions.create))
    app.router.add_post("/v1/embeddings", endpoint(embeddings.create))
    app.router.add_post("/v1/moderations", endpoint(moderations.create))
    line_handlers: dict[str, Handler] = {"/v1/chat/completions": chat.create, "/v1/completions": completions.create,
                                         "/v1/embeddings": embeddings.create, "/v1/moderations": moderations.create}
    app[dispatch.LINE_HANDLERS] = line_handlers
    control.setup(app)
    rules.setup(app, file_rules, settings.rules)
    files.setup(app)
    batches.setup(app)
    fine_tuning.setup(app)
    uploads.setup(app)
    images.setup(app)
    audio.setup(app)
    stored.setup(app)
    responses.setup(app)
    conversations.setup(app, settings.seed)
    if settings.fixtures is not None:
        replay.setup(app, settings.fixtures)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
