"""fixtures: record upstream answers to files and replay them, so CI runs offline and repeatably.

Modes (config `[fixtures] mode`, `--mode`, or per request `x-oaigate-fixtures`): `live` does
nothing; `record` forwards and saves; `replay` answers only from fixtures, and a miss is an error
naming the request's key, the cassette and the closest recording with what differs;
`record-missing` replays hits and records misses. The cassette is `[fixtures] cassette` or the
request's `x-oaigate-cassette`. Recording never delays the client: chunks are relayed first and
copied on the side; the file is written after the response, off the event loop.

Who may change what the operator configured: a request's headers may ask for another mode or cassette
only where `[fixtures] allow_client_override` says so (unset: only when every upstream is the embedded
mock, the development setup) or with an admin key; anyone else gets a 403 naming the switch. Only 2xx
answers are recorded unless `record_errors`, and never past the folder's quota (`max_bytes`): then one
warning, a counter (`oaigate_fixtures_not_recorded_total{reason}`), and the request is answered as usual.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from ..config import FIXTURE_MODES, FixturesConfig
from ..durable import COMPLETE
from ..errors import FixtureMiss, InvalidRequest, OverrideRefused
from ..exchange import Exchange, Slot
from ..wire.fixtures import (
    CASSETTE_HEADER,
    FIXTURE_HEADER,
    MODE_HEADER,
    Cassette,
    Fixture,
    MatchPolicy,
    Quota,
    RecordedRequest,
    RecordedResponse,
    request_key,
)
from ..wire.fixtures.format import decode_body, encode_body
from ..wire.fixtures.hits import HITS_FILE, append_hits
from ..wire.fixtures.matching import REDACTED, normalized_body, redact_body, redact_query
from . import Stage
from .forward import relay_stored

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import Config

log = logging.getLogger("oaigate.fixtures")
INLINE_BODY_BYTES = 64 * 1024
MIN_SCRUBBED = 6  # shorter redacted strings are not searched for in answers
_STRUCTURAL = frozenset({"type", "role", "object", "status"})

MODES = FIXTURE_MODES
KEPT_RESPONSE_HEADERS = ("content-type", "x-request-id", "openai-version", "openai-processing-ms", "retry-after",
                         "retry-after-ms", "x-should-retry")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


NOT_RECORDED = "not_recorded"  # the ledger's `fixture` for a recording that was not kept


@dataclass(slots=True)
class _Recording:
    cassette: Cassette
    key: str
    body: dict[str, Any]
    number: int  # place among the recordings of `key`, taken when the request arrived
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    started: float | None = None
    size: int = 0
    over_quota: bool = False  # set when the quota cannot hold it: its chunks are no longer kept


def match_policy(config: FixturesConfig) -> MatchPolicy:
    """What the config says matching ignores and recording redacts."""
    return MatchPolicy(tuple(config.ignore_fields), {p: tuple(m.ignore_fields) for p, m in config.match.items()},
                       tuple(config.redact_fields))


_RECORDING = Slot[_Recording]("fixtures")  # an answer being recorded


class Fixtures(Stage):
    """Decides record / replay per request; `ex.replay` carries a hit to the app.

    `development`: every upstream is the embedded mock, where clients may override fixture modes
    unless `[fixtures] allow_client_override` says otherwise."""

    def __init__(self, config: FixturesConfig, *, development: bool = False) -> None:
        self.config = config
        self.root = Path(config.dir)
        self.policy = match_policy(config)
        self.allow_override = development if config.allow_client_override is None else config.allow_client_override
        self.quota = Quota(self.root, config.max_bytes)
        self.not_recorded: dict[str, int] = {}  # reason -> recordings not kept
        self._counter: Any = None
        self._warned = False
        self._buffered = 0  # bytes held by recordings in flight: together they never outgrow the quota
        self._cassettes: dict[str, Cassette] = {}
        self._saved: set[Path] = set()

    @classmethod
    def for_config(cls, config: Config) -> Fixtures:
        """The stage for a gateway's whole config: which upstreams it has decides the override default."""
        development = config.upstream.base_url == "mock" and all(r.base_url == "mock" for r in config.routes)
        return cls(config.fixtures, development=development)

    def register(self, registry: CollectorRegistry) -> None:
        """Count the recordings not kept, by reason, on the gateway's /metrics."""
        from prometheus_client import Counter

        self._counter = Counter("oaigate_fixtures_not_recorded", "Recordings not kept, by reason (over_quota, "
                                "error_status, incomplete).", ["reason"], registry=registry)
        for reason in ("over_quota", "error_status", "incomplete"):
            self._counter.labels(reason)

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

    def _check_override(self, ex: Exchange) -> None:
        """A header asking for something other than the config is an override: allowed or a 403."""
        if self.allow_override or ex.admin:
            return
        for header, configured in ((MODE_HEADER, self.config.mode), (CASSETTE_HEADER, self.config.cassette)):
            asked = ex.headers.get(header)
            if asked is not None and asked != configured:
                shown = asked if len(asked) <= 60 else asked[:57] + "..."
                raise OverrideRefused(
                    f"The {header} header asks for '{shown}', but this gateway is configured with '{configured}' "
                    "and does not let requests change it. Per-request fixture overrides need "
                    "[fixtures] allow_client_override = true in the gateway's config, or a key with admin = true.",
                    param=header)

    async def request(self, ex: Exchange) -> None:
        self._check_override(ex)
        mode = ex.headers.get(MODE_HEADER, self.config.mode)
        if mode not in MODES:
            raise InvalidRequest(f"Invalid {MODE_HEADER} header: '{mode}'. Use one of {', '.join(MODES)}.",
                                 param=MODE_HEADER)
        if mode == "live":
            return
        name = ex.headers.get(CASSETTE_HEADER, self.config.cassette)
        if not _NAME.fullmatch(name):
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
        if self.quota.full:  # nothing more fits: relay as usual, keep nothing
            ex.state.set(_RECORDING, _Recording(cassette, key, {}, 0, over_quota=True))
            return
        ex.state.set(_RECORDING, _Recording(cassette, key, redact_body(body, self.policy.redact),
                                            cassette.reserve(key)))

    def chunk(self, ex: Exchange, data: bytes) -> None:
        recording = ex.state.get(_RECORDING)
        if recording is not None and not recording.over_quota:
            if self._buffered + len(data) > self.quota.remaining:  # it cannot fit: stop holding its bytes
                self._buffered -= recording.size
                recording.over_quota, recording.chunks, recording.size = True, [], 0
                return
            recording.size += len(data)
            self._buffered += len(data)
            now = time.perf_counter()
            if recording.started is None:
                recording.started = now
            recording.chunks.append((now - recording.started, data))

    async def finish(self, ex: Exchange) -> None:
        recording = ex.state.pop(_RECORDING)
        if recording is None:
            return
        self._buffered -= recording.size
        if ex.status is None or ex.error_type is not None:  # nothing complete to keep
            self._not_kept(ex, recording, "incomplete")
            return
        if not 200 <= ex.status < 300 and not self.config.record_errors:
            self._not_kept(ex, recording, "error_status")
            return
        if recording.over_quota:
            self._not_kept(ex, recording, "over_quota")
            return
        fixture = await asyncio.to_thread(self._fixture, ex, recording)  # decoding and scrubbing: off the loop
        saved = await asyncio.to_thread(self._save, recording, fixture, ex.model)
        if saved is None:
            self._not_kept(ex, recording, "over_quota")
        else:
            self._saved.add(saved)

    def _save(self, recording: _Recording, fixture: Fixture, model: str | None) -> Path | None:
        """Write the fixture if the quota has room for it (None if not); runs off the event loop."""
        text = fixture.dumps()
        size = len(text.encode("utf-8"))
        if not self.quota.take(size):
            return None
        try:
            return recording.cassette.save(fixture, model, recording.number, text=text)
        except BaseException:
            self.quota.give_back(size)
            raise

    def _not_kept(self, ex: Exchange, recording: _Recording, reason: str) -> None:
        """A recording dropped: its place in the sequence given back, counted, and marked in the ledger."""
        if recording.number:
            recording.cassette.release(recording.key, recording.number)
        ex.fixture = NOT_RECORDED
        self.not_recorded[reason] = self.not_recorded.get(reason, 0) + 1
        if self._counter is not None:
            self._counter.labels(reason).inc()
        if reason == "over_quota" and not self._warned:
            self._warned = True
            log.warning("fixtures folder %s is at its quota ([fixtures] max_bytes = %d): recording stopped, "
                        "requests are answered as usual (counted in oaigate_fixtures_not_recorded_total)",
                        self.root, self.config.max_bytes)

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
    return await relay_stored(request, ex, recorded.status, headers, _paced(recorded, pace), on_chunk,
                              inject_stream_usage=inject_stream_usage)


async def _paced(recorded: Any, pace: bool) -> AsyncIterator[bytes]:
    """A recorded stream's chunks, each at its recorded offset when `pace`, else at once."""
    started = time.perf_counter()
    for offset, data in recorded.chunk_bytes():
        if pace:
            delay = offset - (time.perf_counter() - started)
            if delay > 0:
                await asyncio.sleep(delay)
        yield data
