"""Raw-HTTP helpers for end-to-end tests: POST JSON, split SSE frames, check error envelopes."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from tests.openapi import spec_available, validate

AUTH = {"Authorization": "Bearer sk-test"}

@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method: str, url: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """Any method with an optional JSON body (or `raw` bytes) and `headers` (no key unless given);
    never raises on 4xx/5xx."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with _OPENER.open(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


def post(url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """POST JSON (or `raw` bytes) with a bearer token unless `headers` says otherwise; never raises on 4xx/5xx."""
    data = raw if raw is not None else json.dumps(body).encode()
    return call("POST", url, raw=data, headers=AUTH if headers is None else headers)


UNCHECKED: list[str] = []  # components not checked for want of the description: the session summary says so


def conforms(component: str, instance: Any) -> None:
    """Validate against the OpenAPI component. Without the description: a failure under CI (`CI=true`),
    elsewhere a note counted in the session's summary, never a silent pass."""
    if spec_available() or os.environ.get("CI") == "true":
        validate(component, instance)  # under CI a missing description fails here
        return
    UNCHECKED.append(component)


def sse_payloads(raw: bytes) -> list[Any]:
    """The JSON payloads of an OpenAI SSE stream, asserting its framing: `data: ...\\n\\n` frames, `[DONE]` last."""
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"", "the stream must end with a blank line"
    frames = frames[:-1]
    assert frames and frames[-1] == b"data: [DONE]"
    payloads = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        payloads.append(json.loads(frame[len(b"data: "):]))
    return payloads


def error_of(reply: Reply, status: int) -> dict[str, Any]:
    """The error object of an OpenAI envelope, after checking status, shape and schema."""
    assert reply.status == status, reply.body
    assert reply.headers.get_content_type() == "application/json"
    body = reply.json()
    conforms("ErrorResponse", body)
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def joined_deltas(chunks: list[dict[str, Any]]) -> dict[int, str]:
    """Choice index -> the concatenated content deltas of a chat stream."""
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts.setdefault(choice["index"], "")
            texts[choice["index"]] += choice["delta"].get("content") or ""
    return texts
