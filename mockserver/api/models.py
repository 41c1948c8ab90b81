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


async def delete_model(request: web.Request) -> web.Response:
    """DELETE /v1/models/{id}: a fine-tuned model a job made here is deleted; any other is OpenAI's 403
    (yours to use, not to delete) or 404."""
    model_id = request.match_info["model"]
    catalogue = request.app[CATALOGUE]
    if catalogue.delete_fine_tune(model_id):
        await _pace(request)
        return web.Response(body=dumps({"id": model_id, "object": "model", "deleted": True}),
                            content_type="application/json")
    if catalogue.get(model_id) is None or model_id.startswith("ft:"):  # another organization's fine-tune
        raise MockError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    raise MockError(403, "You have insufficient permissions for this operation. Only fine-tuned models your "
                    "organization made can be deleted.", param="model", type="invalid_request_error",
                    code="model_not_deletable")
