"""meter: the usage and cost of each exchange.

Usage comes from the response (the JSON body's `usage`, or the stream event that carries it),
parsed on the side of the relay. When the upstream reports none, it is estimated with the
tokenizer (off the event loop) and flagged `usage_source = "estimated"`, never recorded as $0.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from ..exchange import Exchange
from ..wire import usage as usage_of
from ..wire.jsoncodec import JSONDecodeError, loads
from ..wire.pricing import PriceTable
from ..wire.sse import SSEParser
from ..wire.tokens import count_chat_prompt, count_text
from . import Stage

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
STREAM_KEEP_BYTES = 4 * 1024 * 1024  # raw stream kept for estimating when no usage arrives


class _StreamState:
    __slots__ = ("sse", "parser", "usage", "model", "raw", "overflow")

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.parser = SSEParser()
        self.usage: usage_of.Usage | None = None
        self.model: str | None = None
        self.raw: list[bytes] = []
        self.overflow = 0


class Meter(Stage):
    """Fills `ex.usage`, `ex.usage_source`, `ex.model_served` and `ex.cost_micros`."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._streams: dict[int, _StreamState] = {}

    def chunk(self, ex: Exchange, data: bytes) -> None:
        if ex.response_body is not None:
            return  # a whole JSON body: read in `finish`
        state = self._streams.get(id(ex))
        if state is None:
            content_type = (ex.upstream_headers or {}).get("Content-Type", "")
            state = self._streams[id(ex)] = _StreamState("event-stream" in content_type)
        if not state.sse and not _is_generation(ex):
            return  # a file download or other body: nothing to meter, nothing to keep
        if state.overflow + len(data) <= STREAM_KEEP_BYTES:
            state.raw.append(data)
        state.overflow += len(data)
        if not state.sse:
            return
        for event in state.parser.feed(data):
            if event.data == b"[DONE]" or event.event in TERMINAL_EVENTS:
                ex.stream_ended = True
            if state.model is None and event.data.startswith(b"{"):
                state.model = _model_of(event.data)
            found = usage_of.from_event(event)
            if found is not None:
                state.usage = found

    async def finish(self, ex: Exchange) -> None:
        state = self._streams.pop(id(ex), None)
        if ex.status is None or ex.status >= 400:
            return
        whole = ex.response_body
        if state is not None and state.usage is None and state.overflow <= STREAM_KEEP_BYTES \
                and state.raw and state.raw[0].lstrip()[:1] == b"{":
            whole, state = b"".join(state.raw), None  # a JSON answer relayed without a length: read it whole
        if state is not None:
            ex.model_served = state.model
            ex.usage = state.usage
            if ex.usage is not None:
                ex.usage_source = "reported"
            elif _is_generation(ex):  # not for a file download or any other non-generation stream
                ex.usage = await asyncio.to_thread(_estimate_stream, ex, b"".join(state.raw))
                ex.usage_source = "estimated"
        elif whole is not None:
            encoding = (ex.upstream_headers or {}).get("Content-Encoding", "").strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):
                whole = await asyncio.to_thread(_decompress, whole)
            found, body = usage_of.from_json_bytes(whole)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                ex.model_served = body["model"]
            if found is not None:
                ex.usage, ex.usage_source = found, "reported"
            elif _is_generation(ex):
                ex.usage = await asyncio.to_thread(_estimate_json, ex, body)
                ex.usage_source = "estimated"
        if ex.usage is not None:
            ex.cost_micros = self.prices.cost_micros(ex.model_served or ex.model, ex.usage)


def _decompress(data: bytes) -> bytes:
    """A gzip or zlib body, decoded (the upstream compressed although asked not to); b"" if corrupt."""
    try:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 32).decompress(data, 64 * 1024 * 1024)
    except zlib.error:
        return b""


def _model_of(data: bytes) -> str | None:
    try:
        payload = loads(data)
    except JSONDecodeError:
        return None
    if isinstance(payload, dict):
        model = payload.get("model")
        if model is None and isinstance(payload.get("response"), dict):
            model = payload["response"].get("model")
        return model if isinstance(model, str) else None
    return None


def _is_generation(ex: Exchange) -> bool:
    return ex.method == "POST" and ex.path in (
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def _prompt_tokens(ex: Exchange) -> int:
    body, model = ex.json or {}, ex.model or ""
    if isinstance(body.get("messages"), list):
        return count_chat_prompt(body["messages"], model, body.get("tools"))
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            return count_text(value, model)
        if isinstance(value, list):
            return sum(count_text(v, model) if isinstance(v, str) else len(v) if isinstance(v, list) else 1
                       for v in value)
    return 0


def _texts(payload: Any) -> list[str]:
    """Generated text in a response body or stream event, whatever the endpoint."""
    found: list[str] = []
    if not isinstance(payload, dict):
        return found
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("message"), choice.get("delta"), choice):
            if isinstance(holder, dict):
                for key in ("content", "text", "refusal"):
                    if isinstance(holder.get(key), str):
                        found.append(holder[key])
                for call in holder.get("tool_calls") or []:
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        found.append(str(call["function"].get("arguments") or ""))
    if payload.get("type") == "response.output_text.delta" and isinstance(payload.get("delta"), str):
        found.append(payload["delta"])
    return found


def _estimate_json(ex: Exchange, body: Any) -> usage_of.Usage:
    completion = sum(count_text(t, ex.model or "") for t in _texts(body))
    return usage_of.Usage(_prompt_tokens(ex), completion)


def _estimate_stream(ex: Exchange, raw: bytes) -> usage_of.Usage:
    parser, texts = SSEParser(), []
    for event in parser.feed(raw + b"\n\n"):
        try:
            texts += _texts(loads(event.data))
        except JSONDecodeError:
            continue
    return usage_of.Usage(_prompt_tokens(ex), count_text("".join(texts), ex.model or ""))
