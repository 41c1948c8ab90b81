"""Token usage as the API reports it, from a JSON body or from the events of a stream.

One normalized shape for every endpoint: chat and legacy completions (`prompt_tokens`,
`completion_tokens`), embeddings (`prompt_tokens` only) and the Responses API (`input_tokens`,
`output_tokens`, found in `response.completed` / `response.incomplete` events when streaming).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .jsoncodec import JSONDecodeError, loads
from .sse import Event


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one exchange. `cached` is part of `prompt`; `reasoning` is part of `completion`."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def from_usage_object(usage: Any) -> Usage | None:
    """Normalize a `usage` object of any endpoint; None when it is not one."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:  # Responses API
        details_in = usage.get("input_tokens_details") or {}
        details_out = usage.get("output_tokens_details") or {}
        return Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")),
                     _int(details_in.get("cached_tokens")), _int(details_out.get("reasoning_tokens")))
    if "prompt_tokens" not in usage and "completion_tokens" not in usage:
        return None
    details_in = usage.get("prompt_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or {}
    return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")),
                 _int(details_in.get("cached_tokens")), _int(details_out.get("reasoning_tokens")))


def from_body(body: Any) -> Usage | None:
    """Usage of a parsed JSON response body (a Responses API object keeps it at top level too)."""
    if isinstance(body, dict):
        return from_usage_object(body.get("usage"))
    return None


def from_json_bytes(data: bytes) -> tuple[Usage | None, Any]:
    """Parse a JSON response; returns its usage (or None) and the parsed body (None if not JSON)."""
    try:
        body = loads(data)
    except JSONDecodeError:
        return None, None
    return from_body(body), body


def from_event(event: Event) -> Usage | None:
    """Usage carried by one stream event, if any: a chat/completions usage chunk, or a Responses
    API terminal event whose `response` holds it. Cheap for the events that cannot hold it."""
    if b'"usage"' not in event.data or event.data == b"[DONE]":
        return None
    try:
        payload = loads(event.data)
    except JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    found = from_usage_object(payload.get("usage"))
    if found is None and isinstance(payload.get("response"), dict):
        found = from_usage_object(payload["response"].get("usage"))
    return found


def finish_reason(body: Any) -> str | None:
    """Why an answer ended: its first choice's `finish_reason` (chat, legacy completions, or a stream
    chunk's), or a Responses object's `incomplete_details.reason` else its `status`; a Responses
    stream's terminal event holds the object under `response`. None when the body says nothing."""
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                reason = choice.get("finish_reason")
                return reason if isinstance(reason, str) else None
        return None
    inner = body.get("response")
    holder: dict[str, Any] = inner if isinstance(inner, dict) else body
    if holder.get("object") != "response":
        return None
    details = holder.get("incomplete_details")
    if isinstance(details, dict) and isinstance(details.get("reason"), str):
        return str(details["reason"])
    status = holder.get("status")
    return status if isinstance(status, str) else None


def finish_reason_of_event(event: Event) -> str | None:
    """`finish_reason` of one stream event; cheap (no parsing) for the events that cannot hold one."""
    data = event.data
    if b'"finish_reason"' in data:
        if data.count(b'"finish_reason"') == 1 and (b'"finish_reason":null' in data or _NULL_REASON.search(data)):
            return None
    elif event.event not in RESPONSE_ENDS and not RESPONSE_END.search(data):
        return None
    try:
        payload = loads(data)
    except JSONDecodeError:
        return None
    return finish_reason(payload)


RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")
RESPONSE_END = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
_NULL_REASON = re.compile(rb'"finish_reason"\s*:\s*null')
