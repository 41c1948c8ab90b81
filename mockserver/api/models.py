"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from aiohttp import web

from proxy.wire.jsoncodec import dumps

from ..engine.faults import PACING, Pacing
from ..engine.state import CATALOGUE, SLEEP
from ..errors import MockError


async def _pace(request: web.Request) -> None:
    """`x-mock-latency` applies here too: a one-object answer waits `ttft_ms`."""
    pacing: Pacing | None = request.get(PACING)
    if pacing is not None and pacing.ttft_s:
        await request.app[SLEEP](pacing.ttft_s)


async def list_models(request: web.Request) -> web.Response:
    catalogue = request.app[CATALOGUE]
    body = {"object": "list", "data": [m.card() for m in catalogue.list()]}
    await _pace(request)
    return web.Response(body=dumps(body), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    model = request.app[CATALOGUE].get(model_id)
    if model is None:
        raise MockError(
            404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    await _pace(request)
    return web.Response(body=dumps(model.card()), content_type="application/json")
