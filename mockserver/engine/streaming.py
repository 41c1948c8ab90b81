"""Sending answers: JSON bodies and SSE streams, with pacing and the `disconnect` fault applied."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps

from .clock import Sleep
from .faults import Fault, Pacing


async def send_json(
    request: web.Request, body: Any, *, headers: dict[str, str], pacing: Pacing, chunks: int, sleep: Sleep
) -> web.StreamResponse:
    """A JSON answer, delayed as long as streaming its `chunks` would have taken."""
    delay = pacing.ttft_s + pacing.chunk_s * max(chunks - 1, 0)
    if delay:
        await sleep(delay)
    return web.Response(body=dumps(body), content_type="application/json", headers=headers)


async def send_stream(
    request: web.Request,
    frames: Sequence[bytes],
    *,
    headers: dict[str, str],
    pacing: Pacing,
    fault: Fault | None,
    sleep: Sleep,
) -> web.StreamResponse:
    """Relay `frames` one write each. A `disconnect` fault cuts the connection halfway through."""
    if pacing.ttft_s:
        await sleep(pacing.ttft_s)
    response = web.StreamResponse(headers={**sse.HEADERS, **headers})
    await response.prepare(request)
    cut_at = len(frames) // 2 if fault is not None and fault.kind == "disconnect" else None
    for index, frame in enumerate(frames):
        if index == cut_at:
            cut(request)
            return response
        if index and pacing.chunk_s:
            await sleep(pacing.chunk_s)
        await response.write(frame)
    await response.write_eof()
    return response


def cut(request: web.Request) -> None:
    """Drop the connection without finishing the response, the way a crashing upstream does."""
    if request.transport is not None:
        request.transport.abort()
