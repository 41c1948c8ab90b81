"""meter: the usage and cost of each exchange.

Usage comes from the response (the JSON body's `usage`, or the stream event that carries it),
parsed on the side of the relay. When the upstream reports none, it is estimated with the
tokenizer (off the event loop) and flagged `usage_source = "estimated"`, never recorded as $0.
A `background: true` response not seen ended (queued, or its stream cut by the client) is charged
later, when it ends, for its final usage (`pending`), never for the part relayed.
A fixture replay (`ex.fixture == "hit"`) costs nothing: its would-be cost moves to
`replayed_cost_micros`, so every later stage (budget, metrics, ledger) sees 0, whatever its place.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from ..exchange import Exchange, Slot
from ..wire import usage as usage_of
from ..wire.jsoncodec import JSONDecodeError, loads
from ..wire.pricing import PriceTable
from ..wire.sse import SSEParser
from ..wire.tokens import count_chat_prompt, count_text
from . import Stage

TERMINAL_EVENTS = frozenset({*usage_of.RESPONSE_ENDS, "error"})
# POST paths whose answer is a new object with its own `id` (who owns it; what a chained request builds on)
CREATING_PATHS = frozenset({
    "/v1/files", "/v1/batches", "/v1/responses", "/v1/chat/completions", "/v1/uploads",
    "/v1/fine_tuning/jobs", "/v1/conversations", "/v1/vector_stores", "/v1/assistants", "/v1/threads",
    "/v1/containers", "/v1/videos", "/v1/videos/characters", "/v1/videos/edits", "/v1/videos/extensions",
    "/v1/evals", "/v1/skills", "/v1/audio/voice_consents", "/v1/chatkit/sessions",
})
# Only a request that makes something is charged: these POSTs. A GET of a stored response, chat
# completion or batch (or a cancel, an update) shows the same `usage` again and is never priced, so
# each call is charged once, and the spend rebuilt from the ledger equals the live one.
METERED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/responses/compact",
                           "/v1/embeddings", "/v1/moderations"})
METERED_PREFIXES = ("/v1/images/", "/v1/audio/")
STREAM_KEEP_BYTES = 4 * 1024 * 1024  # raw stream kept for estimating when no usage arrives
RUNNING = frozenset({"queued", "in_progress"})  # a background response's status before it ends


def _quiet_until(data: bytes) -> int:
    """How much of `data`, read from a frame boundary, is whole frames that say nothing the meter reads:
    no usage, no end (`[DONE]`, a Responses terminal type), no finish_reason but null ones. Most of a
    stream is such deltas; a few byte searches skip parsing them (`test_meter_stream` checks that this
    changes nothing). 0 when it cannot tell (named events: an `error` event ends the stream by its name)."""
    if data.find(b"event:") != -1:
        return 0
    first = len(data)  # where the first thing the meter reads may start
    for marker in (b'"usage"', b"[DONE]"):
        at = data.find(marker, 0, first)
        if at != -1:
            first = at
    if data.count(b'"finish_reason"', 0, first) != data.count(b'"finish_reason":null', 0, first):
        at = data.find(b'"finish_reason"', 0, first)  # not all null (the usual: all are): the first that is not
        while at != -1 and data.startswith(b'"finish_reason":null', at):
            at = data.find(b'"finish_reason"', at + 15, first)
        if at != -1:
            first = at
    if (end := usage_of.RESPONSE_END.search(data, 0, first)) is not None:
        first = end.start()
    cut = data.rfind(b"\n\n", 0, first)  # the end of the last frame wholly before it
    return cut + 2 if cut != -1 else 0


class _StreamState:
    __slots__ = ("sse", "parser", "usage", "model", "object_id", "raw", "overflow")

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.parser = SSEParser()
        self.usage: usage_of.Usage | None = None
        self.model: str | None = None
        self.object_id: str | None = None
        self.raw: list[bytes] = []
        self.overflow = 0


_STREAM = Slot[_StreamState]("meter")  # a relayed body, read as it goes


class Meter(Stage):
    """Fills `ex.usage`, `ex.usage_source`, `ex.model_served`, `ex.cost_micros` (0 for a replay) and
    `ex.replayed_cost_micros`."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices

    def chunk(self, ex: Exchange, data: bytes) -> None:
        if ex.response_body is not None:
            return  # a whole JSON body: read in `finish`
        state = ex.state.get(_STREAM)
        if state is None:
            content_type = (ex.upstream_headers or {}).get("Content-Type", "")
            state = _StreamState("event-stream" in content_type)
            ex.state.set(_STREAM, state)
        if not state.sse and not _is_generation(ex):
            return  # a file download or other body: nothing to meter, nothing to keep
        if state.overflow + len(data) <= STREAM_KEEP_BYTES:
            state.raw.append(data)
        state.overflow += len(data)
        if not state.sse:
            return
        if state.model is not None and state.parser.idle and (quiet := _quiet_until(data)):
            data = data[quiet:]
            if not data:
                return
        for event in state.parser.feed(data):
            if event.data == b"[DONE]" or event.event in TERMINAL_EVENTS:
                ex.stream_ended = True
            if state.model is None and event.data.startswith(b"{"):
                state.model, state.object_id = _model_and_id_of(event.data)
            found = usage_of.from_event(event)
            if found is not None:
                state.usage = found
            reason = usage_of.finish_reason_of_event(event)
            if reason is not None:
                ex.finish_reason = reason

    async def finish(self, ex: Exchange) -> None:
        await self._meter(ex)
        if ex.fixture == "hit":  # a replay spends nothing; the ledger keeps what it would have cost live
            ex.replayed_cost_micros, ex.cost_micros = ex.cost_micros, 0

    async def _meter(self, ex: Exchange) -> None:
        state = ex.state.pop(_STREAM)
        if ex.status is None or ex.status >= 400:
            return
        await self._read(ex, state)
        if not is_metered(ex):
            ex.usage = None  # what it shows was charged when it was made
            ex.usage_source = None
        if ex.usage is not None:
            ex.cost_micros = self.prices.cost_micros(ex.model_served or ex.model, ex.usage)

    async def _read(self, ex: Exchange, state: _StreamState | None) -> None:
        whole = ex.response_body
        if state is not None and state.usage is None and state.overflow <= STREAM_KEEP_BYTES \
                and state.raw and state.raw[0].lstrip()[:1] == b"{":
            whole, state = b"".join(state.raw), None  # a JSON answer relayed without a length: read it whole
        if state is not None:
            ex.model_served = state.model
            if _creates_object(ex):
                ex.object_id = state.object_id
            ex.usage = state.usage
            if _background(ex) and not (ex.stream_ended and state.usage is not None):
                _settle_later(ex)  # cut before its end: it runs on upstream, billed in full
            elif ex.usage is not None:
                ex.usage_source = "reported"
            elif _is_generation(ex):  # not for a file download or any other non-generation stream
                ex.usage = await asyncio.to_thread(_estimate_stream, ex, b"".join(state.raw))
                ex.usage_source = "estimated"
        elif whole is not None:
            encoding = (ex.upstream_headers or {}).get("Content-Encoding", "").strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):
                whole = await asyncio.to_thread(_decompress, whole)
            found, body = usage_of.from_json_bytes(whole)
            ex.finish_reason = usage_of.finish_reason(body)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                ex.model_served = body["model"]
            if isinstance(body, dict) and _creates_object(ex) and isinstance(body.get("id"), str):
                ex.object_id = body["id"]
            if found is not None:
                ex.usage, ex.usage_source = found, "reported"
            elif ex.path == "/v1/responses" and isinstance(body, dict) and body.get("status") in RUNNING:
                _settle_later(ex)  # `background`: charged when it ends
            elif _is_generation(ex):
                ex.usage = await asyncio.to_thread(_estimate_json, ex, body)
                ex.usage_source = "estimated"


def is_metered(ex: Exchange) -> bool:
    """A request whose usage is its own cost (see METERED_PATHS)."""
    return ex.method == "POST" and (ex.path in METERED_PATHS or ex.path.startswith(METERED_PREFIXES))


def _background(ex: Exchange) -> bool:
    """A `background: true` Responses request: it runs to its end upstream, whether the client stays or not."""
    return ex.method == "POST" and ex.path == "/v1/responses" and (ex.json or {}).get("background") is True


def _settle_later(ex: Exchange) -> None:
    """A background response not ended yet: `pending` charges it when it ends, by its id. With no id
    (cut before its first event) it can never be looked up: charged its worst case now, when known."""
    ex.usage, ex.usage_source = None, "pending"
    if ex.object_id is not None:
        ex.settle_later = True
    elif ex.estimate is not None:
        ex.usage, ex.usage_source = usage_of.Usage(ex.estimate.prompt, ex.estimate.completion), "reserved"


def _decompress(data: bytes) -> bytes:
    """A gzip or zlib body, decoded (the upstream compressed although asked not to); b"" if corrupt."""
    try:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 32).decompress(data, 64 * 1024 * 1024)
    except zlib.error:
        return b""


def _creates_object(ex: Exchange) -> bool:
    """A POST whose answer's `id` names a new object (a chat completion only when it is stored)."""
    if ex.method != "POST" or ex.path not in CREATING_PATHS:
        return False
    return ex.path != "/v1/chat/completions" or (ex.json or {}).get("store") is True


def _model_and_id_of(data: bytes) -> tuple[str | None, str | None]:
    """The model and object id a stream's first event names (a chunk's own, or its `response`'s)."""
    try:
        payload = loads(data)
    except JSONDecodeError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    holder = payload["response"] if isinstance(payload.get("response"), dict) else payload
    model, object_id = holder.get("model"), holder.get("id")
    return (model if isinstance(model, str) else None, object_id if isinstance(object_id, str) else None)


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
