"""`finish_reason` of an answer, whole or event by event, whatever the endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.wire.jsoncodec import dumps
from proxy.wire.sse import Event
from proxy.wire.usage import finish_reason, finish_reason_of_event


@pytest.mark.parametrize(("body", "expected"), [
    ({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length"}]}, "length"),
    ({"choices": [{"index": 1, "finish_reason": "stop"}, {"index": 0, "finish_reason": "tool_calls"}]}, "tool_calls"),
    ({"object": "text_completion", "choices": [{"index": 0, "finish_reason": "stop", "text": "x"}]}, "stop"),
    ({"object": "response", "status": "completed", "incomplete_details": None}, "completed"),
    ({"object": "response", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
     "max_output_tokens"),
    ({"object": "list", "data": []}, None),
    ([1, 2], None),
    ({"choices": [{"index": 0, "finish_reason": None}]}, None),
])
def test_whole_answers(body: Any, expected: str | None) -> None:
    assert finish_reason(body) == expected


@pytest.mark.parametrize(("event", "expected"), [
    (Event(data=b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'), None),
    (Event(data=b'{"choices":[{"index":0,"delta":{},"finish_reason": "length"}]}'), "length"),
    (Event(data=b'{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}'), None),
    (Event(data=b"[DONE]"), None),
    (Event(event="response.completed", data=dumps({"type": "response.completed", "response": {
        "object": "response", "status": "completed"}})), "completed"),
    (Event(data=dumps({"type": "response.incomplete", "response": {
        "object": "response", "status": "incomplete", "incomplete_details": {"reason": "content_filter"}}})),
     "content_filter"),
    (Event(event="response.created", data=dumps({"type": "response.created", "response": {
        "object": "response", "status": "in_progress"}})), None),
])
def test_stream_events(event: Event, expected: str | None) -> None:
    assert finish_reason_of_event(event) == expected
