"""Server-sent events as OpenAI uses them: `data: <json>\\n\\n` frames, ended by `data: [DONE]`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

DONE = b"[DONE]"
DONE_FRAME = b"data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def frame(data: bytes, event: str | None = None) -> bytes:
    """One SSE frame; `data` must not contain newlines (compact JSON never does)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed SSE event: its `event:` name (or None) and its `data:` lines joined by newlines."""

    data: bytes
    event: str | None = None


class SSEParser:
    """Incremental parser: feed it bytes as they arrive, get complete events back.

    Follows the WHATWG rules that matter for OpenAI streams: CRLF, LF or CR line ends, comment lines
    starting with ':', multi-line data joined with '\\n', a blank line dispatching the event.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    @property
    def idle(self) -> bool:
        """Between events: nothing of a half-received event is held."""
        return not self._buffer and not self._data and self._event is None

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume `chunk`; return the events it completed."""
        if self.idle and chunk.endswith(b"\n\n") \
                and b"\r" not in chunk:  # the usual case: whole `data: ...` frames, read without a line loop
            frames = chunk[:-2].split(b"\n\n")
            if all(frame.startswith(b"data: ") and b"\n" not in frame for frame in frames):
                return [Event(frame[6:]) for frame in frames]
        self._buffer += chunk
        events: list[Event] = []
        for line in self._complete_lines():
            if not line:
                if self._data:
                    events.append(Event(b"\n".join(self._data), self._event))
                self._data, self._event = [], None
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        return events

    def _complete_lines(self) -> Iterator[bytes]:
        held = b""
        buffer = self._buffer
        if buffer.endswith(b"\r"):  # may be the first half of a CRLF split across chunks
            buffer, held = buffer[:-1], b"\r"
        *lines, rest = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = rest + held
        yield from lines
