from hypothesis import given
from hypothesis import strategies as st

from proxy.wire.sse import DONE_FRAME, Event, SSEParser, frame


def test_frame_shapes() -> None:
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert frame(b"{}", event="response.created") == b"event: response.created\ndata: {}\n\n"
    assert DONE_FRAME == b"data: [DONE]\n\n"


def test_parser_handles_comments_multiline_data_and_crlf() -> None:
    raw = b": keep-alive\r\n\r\nevent: x\r\ndata: one\r\ndata: two\r\n\r\ndata:no-space\n\n"
    assert SSEParser().feed(raw) == [Event(b"one\ntwo", "x"), Event(b"no-space")]


def test_parser_keeps_an_incomplete_event_until_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: {\"a\"") == []
    assert parser.feed(b":1}\n") == []
    assert parser.feed(b"\n") == [Event(b'{"a":1}')]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r\n") == [Event(b"a")]


payloads = st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
                    min_size=1, max_size=8)


@given(payloads, st.data())
def test_any_chunking_gives_the_same_events(datas: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(frame(d) for d in datas)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser, events, start = SSEParser(), [], 0
    for cut in [*cuts, len(stream)]:
        events += parser.feed(stream[start:cut])
        start = cut
    assert [e.data for e in events] == datas


pieces = st.sampled_from([b"data: a\n", b"data: [DONE]\n\n", b"data: b\n\n", b"data:c\n", b"data:  d\n", b"event: e\n",
                          b": f\n", b"\n", b"\r", b"\r\n", b"da", b"ta: g"])


@given(st.lists(pieces, max_size=30), st.lists(st.integers(0, 30), max_size=6))
def test_whole_frames_read_at_once_give_what_byte_by_byte_gives(parts: list[bytes], cuts: list[int]) -> None:
    """Chunks of whole `data:` frames take a shortcut: it must parse exactly as the line loop does."""
    stream = b"".join(parts)
    slow = SSEParser()
    expected = [event for i in range(len(stream)) for event in slow.feed(stream[i:i + 1])]
    fast, got, start = SSEParser(), [], 0
    for cut in sorted({min(c, len(parts)) for c in cuts} | {len(parts)}):
        got += fast.feed(b"".join(parts[start:cut]))
        start = cut
    assert got == expected
