"""fixtures: record upstream answers to files and replay them, so CI runs offline and repeatably.

Modes (config `[fixtures] mode`, `--mode`, or per request `x-oaigate-fixtures`): `live` does
nothing; `record` forwards and saves; `replay` answers only from fixtures, and a miss is an error
naming the request's key, the cassette and the closest recording with what differs;
`record-missing` replays hits and records misses. The cassette is `[fixtures] cassette` or the
request's `x-oaigate-cassette`. Recording never delays the client: chunks are relayed first and
copied on the side; the file is written after the response, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..config import FixturesConfig
from ..durable import COMPLETE
from ..errors import GatewayError, InvalidRequest
from ..exchange import Exchange
from ..wire.fixtures import (
    CASSETTE_HEADER,
    FIXTURE_HEADER,
    MODE_HEADER,
    Cassette,
    Fixture,
    MatchPolicy,
    RecordedRequest,
    RecordedResponse,
    request_key,
)
from ..wire.fixtures.format import decode_body, encode_body
from ..wire.fixtures.hits import HITS_FILE, append_hits
from ..wire.fixtures.matching import REDACTED, normalized_body, redact_body, redact_query
from . import Stage
from .forward import StreamUsageStripper, prepare_body

log = logging.getLogger("oaigate.fixtures")
INLINE_BODY_BYTES = 64 * 1024
MIN_SCRUBBED = 6  # shorter redacted strings are not searched for in answers
_STRUCTURAL = frozenset({"type", "role", "object", "status"})

MODES = ("live", "record", "replay", "record-missing")
KEPT_RESPONSE_HEADERS = ("content-type", "x-request-id", "openai-version", "openai-processing-ms", "retry-after",
                         "retry-after-ms", "x-should-retry")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class FixtureMiss(GatewayError):
    type, code = "invalid_request_error", "fixture_not_found"


@dataclass(slots=True)
class _Recording:
    cassette: Cassette
    key: str
    body: dict[str, Any]
    number: int  # place among the recordings of `key`, taken when the request arrived
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    started: float | None = None


def match_policy(config: FixturesConfig) -> MatchPolicy:
    """What the config says matching ignores and recording redacts."""
    return MatchPolicy(tuple(config.ignore_fields), {p: tuple(m.ignore_fields) for p, m in config.match.items()},
                       tuple(config.redact_fields))


class Fixtures(Stage):
    """Decides record / replay per request; `ex.replay` carries a hit to the app."""

    def __init__(self, config: FixturesConfig) -> None:
        self.config = config
        self.root = Path(config.dir)
        self.policy = match_policy(config)
        self._cassettes: dict[str, Cassette] = {}
        self._recording: dict[int, _Recording] = {}
        self._saved: set[Path] = set()

    async def cassette(self, name: str) -> Cassette:
        """The cassette `name`, loaded once (off the event loop)."""
        found = self._cassettes.get(name)
        if found is None:
            found = await asyncio.to_thread(Cassette, self.root / name, name, self.config.repeat)
            found = self._cassettes.setdefault(name, found)
        return found

    def rewind(self, name: str) -> None:
        """Start the cassette `name` over: its sequences replay from their first recording again."""
        found = self._cassettes.get(name)
        if found is not None:
            found.rewind()

    @property
    def hits(self) -> set[Path]:
        return {path for c in self._cassettes.values() for path in c.hits}

    async def request(self, ex: Exchange) -> None:
        mode = ex.headers.get(MODE_HEADER, self.config.mode)
        if mode not in MODES:
            raise InvalidRequest(f"Invalid {MODE_HEADER} header: '{mode}'. Use one of {', '.join(MODES)}.",
                                 param=MODE_HEADER)
        if mode == "live":
            return
        name = ex.headers.get(CASSETTE_HEADER, self.config.cassette)
        if not _NAME.match(name):
            raise InvalidRequest(f"Invalid {CASSETTE_HEADER} header: use letters, digits, '.', '_' and '-'.",
                                 param=CASSETTE_HEADER)
        cassette = await self.cassette(name)
        content_type = ex.headers.get("Content-Type", "")
        if len(ex.body) > INLINE_BODY_BYTES:  # a large upload: parse and hash it off the event loop
            body = await asyncio.to_thread(normalized_body, ex.body, content_type)
        else:
            body = normalized_body(ex.body, content_type)
        query = redact_query(ex.query_string)
        key = request_key(ex.method, ex.path, query, body, self.policy)
        if mode in ("replay", "record-missing"):
            fixture = cassette.take(key)
            if fixture is not None:
                ex.fixture, ex.replay = "hit", fixture
                return
            if mode == "replay":
                ex.fixture = "miss"
                miss = await asyncio.to_thread(cassette.miss, key, ex.method, ex.path, query, body,
                                               self.policy.ignored(ex.path))
                error = FixtureMiss(miss.explain(ex.method, ex.path), headers={"x-should-retry": "false"},
                                    request_key=key, cassette=name, closest=miss.closest)
                error.status = self.config.miss_status
                raise error
        ex.fixture = "recorded"
        self._recording[id(ex)] = _Recording(cassette, key, redact_body(body, self.policy.redact),
                                             cassette.reserve(key))

    def chunk(self, ex: Exchange, data: bytes) -> None:
        recording = self._recording.get(id(ex))
        if recording is not None:
            now = time.perf_counter()
            if recording.started is None:
                recording.started = now
            recording.chunks.append((now - recording.started, data))

    async def finish(self, ex: Exchange) -> None:
        if ex.fixture == "hit":
            ex.replayed_cost_micros, ex.cost_micros = ex.cost_micros, 0  # a replay spends nothing
        recording = self._recording.pop(id(ex), None)
        if recording is None:
            return
        if ex.status is None or ex.error_type is not None:  # nothing complete to keep
            recording.cassette.release(recording.key, recording.number)
            return
        fixture = await asyncio.to_thread(self._fixture, ex, recording)  # decoding and scrubbing: off the loop
        self._saved.add(await asyncio.to_thread(recording.cassette.save, fixture, ex.model, recording.number))

    def _fixture(self, ex: Exchange, recording: _Recording) -> Fixture:
        """The fixture of a finished exchange: the response decoded, redacted echoes scrubbed."""
        upstream_headers = ex.upstream_headers or {}
        headers = {k.lower(): v for k, v in upstream_headers.items() if k.lower() in KEPT_RESPONSE_HEADERS}
        content_type = headers.get("content-type", "")
        chunks = recording.chunks
        encoding = next((v for k, v in upstream_headers.items() if k.lower() == "content-encoding"), "")
        if encoding.strip().lower() not in ("", "identity"):
            decoded = _decompress(chunks, encoding.strip().lower())
            if decoded is None:  # an encoding we cannot undo: keep the bytes, and say how they are encoded
                headers["content-encoding"] = encoding
            else:
                chunks = decoded
        chunks = _scrub(chunks, _redacted_values(ex.json, self.policy.redact))
        if "event-stream" in content_type:
            response = RecordedResponse(ex.status or 0, headers, chunks=[
                {"t": round(t, 4), **encode_body(c, "text/plain")} for t, c in chunks])
        else:
            data = b"".join(c for _, c in chunks)
            response = RecordedResponse(ex.status or 0, headers, body=encode_body(data, content_type))
        return Fixture(
            RecordedRequest(ex.method, ex.path, redact_query(ex.query_string), recording.body, recording.key,
                            self.policy.ignored(ex.path)),
            response,
            datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            usage=None if ex.usage is None else {"prompt_tokens": ex.usage.prompt,
                                                 "completion_tokens": ex.usage.completion},
            meta={"ttfb_s": round(ex.ttfb_s, 4)} if ex.ttfb_s is not None else {},
        )

    async def save_hits(self) -> None:
        """Append the fixtures this gateway replayed or recorded to the hits file (see `fixtures prune`)."""
        used = self.hits | self._saved
        self._saved = set()
        for cassette in self._cassettes.values():
            cassette.hits.clear()
        if used:
            try:
                await asyncio.to_thread(append_hits, self.root, used)
            except OSError as exc:  # a read-only checkout: prune loses this run, nothing else does
                log.warning("could not list the fixtures used in %s: %s", self.root / HITS_FILE, exc)


def _decompress(chunks: list[tuple[float, bytes]], encoding: str) -> list[tuple[float, bytes]] | None:
    """A gzip or deflate answer, decoded chunk by chunk (timings kept); None if it cannot be decoded.
    The client was relayed the bytes as they came; the fixture keeps what they mean."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # a gzip or zlib header, either
    try:
        decoded = [(t, decoder.decompress(c)) for t, c in chunks]
        if chunks and (rest := decoder.flush()):
            decoded.append((chunks[-1][0], rest))
    except zlib.error:
        return None
    return [(t, c) for t, c in decoded if c]


def _redacted_values(body: Any, fields: tuple[str, ...]) -> list[str]:
    """The strings in the request's redacted fields, which the answer may echo (`/v1/responses` does).

    Structural values (`type`, `role`, `object` members) and strings under MIN_SCRUBBED characters are
    left alone: scrubbing `"message"` or `"user"` everywhere would break the recorded answer."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and len(value) >= MIN_SCRUBBED:
            found.add(value)
        elif isinstance(value, dict):
            for name, item in value.items():
                if name not in _STRUCTURAL:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    if isinstance(body, dict):
        for name in fields:
            walk(body.get(name))
    return sorted(found, key=len, reverse=True)


def _scrub(chunks: list[tuple[float, bytes]], values: list[str]) -> list[tuple[float, bytes]]:
    """Replace each JSON string equal to a redacted value (not an object key) by the redaction marker.
    A value split across two stream chunks is not seen."""
    if not values:
        return chunks
    needles = {n for v in values for n in (orjson.dumps(v), json.dumps(v).encode())}
    pattern = re.compile(b"(?:" + b"|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
                         + rb")(?!\s*:)")
    marker = orjson.dumps(REDACTED)
    return [(t, pattern.sub(marker, c)) for t, c in chunks]


async def replay(request: web.Request, ex: Exchange, fixture: Fixture, *, pace: bool, on_chunk: Any,
                 inject_stream_usage: bool = True) -> web.StreamResponse:
    """Answer from a fixture: a body at once, or the stream's chunks byte for byte (paced if asked)."""
    recorded = fixture.response
    ex.status = recorded.status
    ex.upstream_headers = CIMultiDict(recorded.headers)
    ex.upstream_request_id = recorded.headers.get("x-request-id")
    headers = {**recorded.headers, **ex.response_headers, FIXTURE_HEADER: "hit"}
    complete = request.app.get(COMPLETE)  # finish hooks and the ledger commit, before the last bytes
    if recorded.chunks is None:
        body = decode_body(recorded.body or {"text": ""})
        ex.response_body = body
        on_chunk(ex, body)
        if complete is not None:
            await complete(ex)
        return web.Response(status=recorded.status, body=body, headers=headers)
    prepare_body(ex, inject_stream_usage)  # a recorded chat stream has the usage chunk the gateway asked for
    stripper = StreamUsageStripper() if ex.strip_stream_usage else None
    response = web.StreamResponse(status=recorded.status, headers=headers)
    await response.prepare(request)
    started = time.perf_counter()
    for offset, data in recorded.chunk_bytes():
        if pace:
            delay = offset - (time.perf_counter() - started)
            if delay > 0:
                await asyncio.sleep(delay)
        on_chunk(ex, data)
        if stripper is not None:
            data = stripper.feed(data)
        if data:
            if ex.stream_ended and complete is not None:
                await complete(ex)
            await response.write(data)
    if stripper is not None and (rest := stripper.flush()):
        await response.write(rest)
    if complete is not None:
        await complete(ex)
    await response.write_eof()
    return response
