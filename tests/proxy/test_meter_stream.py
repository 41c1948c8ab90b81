"""The meter reads a stream the same however it is cut: the whole frames at the start of a chunk that
say nothing it reads are skipped without parsing (`_quiet_until`), and that skip changes no result."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import Exchange
from proxy.stages.meter import _STREAM, Meter
from proxy.wire.pricing import PriceTable

SSE = CIMultiDictProxy(CIMultiDict({"Content-Type": "text/event-stream"}))

CHAT = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,'
DELTA = b"data: " + CHAT + b'"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
USAGE = (b"data: " + CHAT[:-len(b'"choices":[{"index":0,')] + b'"choices":[],"usage":{"prompt_tokens":3,'
         b'"completion_tokens":5,"total_tokens":8}}\n\n')
ERROR = b'event: error\ndata: {"message":"overloaded"}\n\n'  # ends the stream by its name only
LENGTH = b"data: " + CHAT + b'"delta":{},"finish_reason":"length"}]}\n\n'
INCOMPLETE = (b'data: {"type":"response.incomplete","response":{"object":"response","status":"incomplete",'
              b'"incomplete_details":{"reason":"max_output_tokens"}}}\n\n')  # says so by its type only
# pieces of chat and Responses streams, including the ones the meter must see (usage, ends, reasons)
FRAMES = st.sampled_from([
    DELTA,
    b"data: " + CHAT + b'"delta":{"content":"Hi"},"finish_reason": null}]}\n\n',
    LENGTH,
    USAGE,
    b"data: [DONE]\n\n",
    b": keep-alive\n\n",
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x"}\n\n',
    b'data: {"type":"response.output_text.delta","delta":"x"}\n\n',
    INCOMPLETE,
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"resp_1","object":'
    b'"response","status":"completed","model":"gpt-4o","usage":{"input_tokens":4,"output_tokens":6,'
    b'"total_tokens":10}}}\n\n',
    b"data: " + CHAT + b'"delta":{"content":"a\\r\\nb"},"finish_reason":null}]}\r\n\r\n',
    ERROR,
])


def _read(chunks: list[bytes]) -> tuple[object, ...]:
    meter = Meter(PriceTable({}))
    ex = Exchange("POST", "/v1/chat/completions", "", SSE, b"")
    ex.upstream_headers, ex.status = SSE, 200
    for chunk in chunks:
        meter.chunk(ex, chunk)
    state = ex.state.get(_STREAM)
    assert state is not None
    return (state.usage, state.model, state.object_id, ex.finish_reason, ex.stream_ended, b"".join(state.raw))


@settings(max_examples=300)
@given(st.lists(FRAMES, min_size=1, max_size=12), st.lists(st.integers(0, 12), max_size=6))
@example([DELTA, DELTA, INCOMPLETE], [1])  # after quiet frames in one chunk, each thing the meter reads
@example([DELTA, DELTA, USAGE], [1])
@example([DELTA, DELTA, LENGTH], [1])
@example([DELTA, DELTA, b"data: [DONE]\n\n"], [1])
@example([DELTA, DELTA, ERROR], [1])
def test_any_cut_of_a_stream_is_metered_as_it_is_byte_by_byte(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    bounds = sorted({0, len(frames), *(c for c in cuts if c <= len(frames))})
    by_frames = [b"".join(frames[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    by_byte = [stream[i:i + 1] for i in range(len(stream))]  # never whole frames: always parsed
    assert _read(by_frames) == _read(by_byte)


@settings(max_examples=300)
@given(st.lists(FRAMES, min_size=1, max_size=12), st.lists(st.integers(0, 2000), max_size=8))
def test_a_stream_cut_anywhere_is_metered_as_it_is_byte_by_byte(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    bounds = sorted({0, len(stream), *(c for c in cuts if c <= len(stream))})
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert _read(pieces) == _read([stream[i:i + 1] for i in range(len(stream))])
