from proxy.wire.sse import Event
from proxy.wire.usage import Usage, from_event, from_json_bytes, from_usage_object


def test_chat_usage_with_details() -> None:
    usage = from_usage_object({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                               "prompt_tokens_details": {"cached_tokens": 4},
                               "completion_tokens_details": {"reasoning_tokens": 3}})
    assert usage == Usage(10, 5, 4, 3)
    assert usage.total == 15


def test_embeddings_and_responses_usage() -> None:
    assert from_usage_object({"prompt_tokens": 7, "total_tokens": 7}) == Usage(7, 0)
    assert from_usage_object({"input_tokens": 9, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1},
                              "output_tokens_details": {"reasoning_tokens": 1}}) == Usage(9, 2, 1, 1)


def test_junk_is_not_usage() -> None:
    assert from_usage_object(None) is None
    assert from_usage_object({"foo": 1}) is None
    assert from_usage_object({"prompt_tokens": "x", "completion_tokens": -3}) == Usage(0, 0)
    assert from_json_bytes(b"not json") == (None, None)


def test_stream_events() -> None:
    assert from_event(Event(b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}')) == Usage(3, 4)
    assert from_event(Event(b'{"choices":[{"delta":{}}],"usage":null}')) is None
    assert from_event(Event(b"[DONE]")) is None
    completed = b'{"type":"response.completed","response":{"usage":{"input_tokens":5,"output_tokens":6}}}'
    assert from_event(Event(completed, "response.completed")) == Usage(5, 6)
