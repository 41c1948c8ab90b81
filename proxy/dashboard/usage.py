"""OpenAI's usage and costs API, answered from the ledger: with base_url `http://HOST:PORT/oaigate/v1`,
`GET organization/usage/completions|embeddings|moderations` and `organization/costs` take OpenAI's query
parameters (`start_time`, `end_time`, `bucket_width`, `group_by`, `limit`, `page`, `models`,
`api_key_ids`) and answer its `UsageResponse` pages of time buckets.

How the ledger maps: `api_key_id` is the gateway key's name, `model` the model served (else requested),
costs' `line_item` the model; `project_id`, `user_id`, `batch` and `service_tier` are not known here and
stay null. Usage counts successful requests; costs are what `oaigate spend` counts (simulated answers
left out), and a cost result also says how many requests had no price (`unpriced_requests`, not in
`amount`). A bucket's start is `start_time` rounded down to the bucket width, in UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ..db import queries
from ..db.queries import Cell, Filter, Sums, cells
from ..errors import GatewayError, InvalidRequest
from .access import integer, one, viewer
from .api import ROLLUP, _json, ledger

FAMILIES = {  # the ledger's endpoints behind each of OpenAI's usage kinds
    "completions": ("/v1/chat/completions", "/v1/completions", "/v1/responses"),
    "embeddings": ("/v1/embeddings",),
    "moderations": ("/v1/moderations",),
}
WIDTHS = {"1m": (60, "minute", 60, 1440), "1h": (3600, "hour", 24, 168), "1d": (86400, "day", 7, 31)}
GROUPS = {"model": 2, "api_key_id": 1}  # cell index of what OpenAI's group_by names
UNKNOWN = ("project_id", "user_id", "batch", "service_tier")


def setup(app: web.Application) -> None:
    for kind in FAMILIES:
        app.router.add_get(f"/oaigate/v1/organization/usage/{kind}", usage)
    app.router.add_get("/oaigate/v1/organization/costs", costs)


def _list(request: web.Request, name: str) -> list[str]:
    """An array parameter: repeated (`a=x&a=y`), with brackets (`a[]=x`) or comma-separated."""
    values = request.query.getall(name, []) + request.query.getall(f"{name}[]", [])
    return [part for value in values for part in value.split(",") if part]


def _unix(request: web.Request, name: str, required: bool) -> int | None:
    text = one(request, name)
    if text is None:
        if required:
            raise InvalidRequest(f"Missing required parameter: '{name}' (Unix seconds).", param=name)
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be Unix seconds (an integer), not {text!r}.", param=name) from None


def _iso(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _unix_of(bucket_text: str) -> int:
    return int(datetime.fromisoformat(bucket_text.replace("Z", "+00:00")).timestamp())


async def _window(request: web.Request, kind: str) -> tuple[Any, ...]:
    """Validated parameters: (viewer, widths, group fields, filter, bucket starts of this page, next page)."""
    who = await viewer(request)
    width_name = one(request, "bucket_width") or "1d"
    allowed = ("1d",) if kind == "costs" else tuple(WIDTHS)
    if width_name not in allowed:
        raise InvalidRequest(f"bucket_width must be one of {', '.join(allowed)}, not {width_name!r}.",
                             param="bucket_width")
    seconds, width, default_limit, max_limit = WIDTHS[width_name]
    if kind == "costs":
        default_limit, max_limit = 7, 180
    fields = ("line_item", "api_key_id", "project_id") if kind == "costs" else ("model", "api_key_id", *UNKNOWN)
    group_by = _list(request, "group_by")
    for name in group_by:
        if name not in fields:
            raise InvalidRequest(f"group_by: {name!r} is not one of {', '.join(fields)}.", param="group_by")
    start = _unix(request, "start_time", True)
    end = _unix(request, "end_time", False)
    assert start is not None
    now = int(time.time())
    end = now if end is None else end
    if start >= end:
        raise InvalidRequest("start_time must be before end_time (and before now).", param="start_time")
    limit = integer(request, "limit", default_limit, 1, max_limit)
    first = start - start % seconds
    cursor = one(request, "page")
    if cursor is not None:
        try:
            first = int(cursor.removeprefix("page_"))
        except ValueError:
            raise InvalidRequest(f"page {cursor!r} is not a next_page from a previous answer.", param="page") from None
        if first % seconds or first < start - start % seconds or first >= end:
            raise InvalidRequest(f"page {cursor!r} is not a next_page from a previous answer.", param="page")
    starts = list(range(first, min(end, first + limit * seconds), seconds))
    following = starts[-1] + seconds
    keys = _list(request, "api_key_ids")
    if who.key is not None:
        if any(k != who.key for k in keys):
            from ..errors import Forbidden

            raise Forbidden(f"This key may see only its own usage ({who.key}); an admin key sees every key's.",
                            param="api_key_ids")
        keys = [who.key]
    where = Filter(_iso(first), _iso(min(end, following)), key=keys[0] if len(keys) == 1 else None,
                   endpoints=FAMILIES.get(kind, ()))
    wanted = {"keys": set(keys), "models": set(_list(request, "models"))}
    return who, (seconds, width), group_by, where, wanted, starts, (f"page_{following}" if following < end else None)


async def _buckets(request: web.Request, kind: str) -> tuple[list[int], dict[int, dict[tuple[Any, ...], Sums]],
                                                             list[str], str | None]:
    _, (seconds, width), group_by, where, wanted, starts, next_page = await _window(request, kind)
    rollup = request.app[ROLLUP]

    def query(conn: Any) -> dict[Cell, Sums]:
        return cells(conn, where, "minute") if width == "minute" else rollup.cells(conn, where, None, width)

    nothing: dict[Cell, Sums] = {}
    found = await ledger(request.app, query, nothing)
    fields = ["model" if g == "line_item" else g for g in group_by]
    out: dict[int, dict[tuple[Any, ...], Sums]] = {}
    for cell, sums in found.items():
        if (wanted["keys"] and cell[1] not in wanted["keys"]) or (wanted["models"] and cell[2] not in wanted["models"]):
            continue
        if kind != "costs" and not sums[queries.OK_REQUESTS]:
            continue  # usage counts what was answered; costs count what `oaigate spend` counts
        text = {"minute": f"{cell[0][:16]}:00Z", "hour": f"{cell[0][:13]}:00:00Z",
                "day": f"{cell[0][:10]}T00:00:00Z"}[width]
        group = tuple(cell[GROUPS[f]] if f in GROUPS else None for f in fields)
        bucket = out.setdefault(_unix_of(text), {})
        bucket[group] = queries.plus(bucket.get(group, queries.ZERO), sums)
    return starts, out, group_by, next_page


def _page(starts: list[int], seconds: int, results: dict[int, list[dict[str, Any]]], next_page: str | None) -> Any:
    return {"object": "page", "has_more": next_page is not None, "next_page": next_page,
            "data": [{"object": "bucket", "start_time": s, "end_time": s + seconds, "results": results.get(s, [])}
                     for s in starts]}


async def usage(request: web.Request) -> web.Response:
    kind = request.path.rsplit("/", 1)[1]
    try:
        starts, found, group_by, next_page = await _buckets(request, kind)
        seconds = WIDTHS[one(request, "bucket_width") or "1d"][0]
    except GatewayError as exc:
        return exc.response()
    results: dict[int, list[dict[str, Any]]] = {}
    for start, groups in found.items():
        for group, sums in sorted(groups.items(), key=lambda g: [str(v) for v in g[0]]):
            requests, prompt, completion, cached = (sums[queries.OK_REQUESTS], sums[queries.OK_PROMPT],
                                                    sums[queries.OK_COMPLETION], sums[queries.OK_CACHED])
            result: dict[str, Any] = {"object": f"organization.usage.{kind}.result", "input_tokens": prompt,
                                      "num_model_requests": requests}
            if kind == "completions":
                result |= {"output_tokens": completion, "input_cached_tokens": cached,
                           "input_uncached_tokens": prompt - cached}
            named = dict(zip(group_by, group, strict=True))
            result |= {f: named.get(f) for f in (("model", "api_key_id", *UNKNOWN) if kind == "completions"
                                                 else ("model", "api_key_id", "project_id", "user_id"))}
            results.setdefault(start, []).append(result)
    return _json(_page(starts, seconds, results, next_page))


async def costs(request: web.Request) -> web.Response:
    try:
        starts, found, group_by, next_page = await _buckets(request, "costs")
    except GatewayError as exc:
        return exc.response()
    results: dict[int, list[dict[str, Any]]] = {}
    for start, groups in found.items():
        for group, sums in sorted(groups.items(), key=lambda g: [str(v) for v in g[0]]):
            row = queries.spend_row(None, sums)
            named = dict(zip(group_by, group, strict=True))
            results.setdefault(start, []).append({
                "object": "organization.costs.result",
                "amount": {"value": (row.cost_microusd or 0) / 1_000_000, "currency": "usd"},
                "line_item": named.get("line_item"), "project_id": None, "api_key_id": named.get("api_key_id"),
                "quantity": None, "quantity_unit": None, "unpriced_requests": row.unpriced_requests,
            })
    return _json(_page(starts, int(timedelta(days=1).total_seconds()), results, next_page))
