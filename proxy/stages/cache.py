"""cache: identical requests answered from a stored answer, for nothing, instead of paying twice.

    [cache]
    enabled = true
    ttl_s = 3600
    scope = "key"            # a key only ever gets its own answers; "global": shared by every key
    deterministic_only = true   # only temperature 0 or a seed (embeddings always)

The key is the canonical request (method, path, query, the JSON body with the fixtures' ignored fields
left out) and, with scope "key", the caller. Only complete successful (2xx) answers are stored, a
stream as the SSE frames the upstream sent, replayed byte for byte (so it goes through the same usage
stripping as the first answer); a stream request never gets a non-stream answer, or the reverse. A hit
is answered before estimates, budgets and rate limits (no reservation), costs 0, and its ledger row
says `cache = 'hit'` with `saved_microusd`, what it would have cost.

Per request: `x-oaigate-cache: no-store` (or `Cache-Control: no-store`) neither reads nor stores;
`x-oaigate-cache: refresh` (or `Cache-Control: no-cache`) goes upstream and stores the new answer.
Every cacheable endpoint's answer says `x-oaigate-cache: hit | miss | bypass`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from ..cache_store import CachedAnswer, CacheStore
from ..clock import Clock
from ..durable import COMPLETE
from ..errors import InvalidRequest
from ..exchange import Exchange
from ..wire import SIMULATED_HEADER
from ..wire.fixtures.matching import canonical_query, strip
from ..wire.jsoncodec import canonical
from . import Stage
from .forward import relay_stored

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import CacheConfig

log = logging.getLogger("oaigate.cache")
CACHE_HEADER = "x-oaigate-cache"
# headers a hit answers with, as the first answer had them (the mock's mark: a hit of its answer is simulated too)
KEPT_HEADERS = ("content-type", "openai-version", "openai-processing-ms", "x-request-id", SIMULATED_HEADER)
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_ALWAYS_DETERMINISTIC = ("/v1/embeddings", "/v1/moderations")


@dataclass(slots=True, eq=False)
class CacheState:
    """One exchange's part in the cache: its key, the answer of a hit, or the answer being recorded."""

    key: str
    answer: CachedAnswer | None = None
    store: bool = True
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False


def default_path(ledger_path: str) -> str:
    """The cache's file next to the ledger's: `oaigate.db` -> `oaigate.cache.db`."""
    ledger = Path(ledger_path)
    return str(ledger.with_name(ledger.stem + ".cache" + (ledger.suffix or ".db")))


def directive(ex: Exchange) -> str | None:
    """What the request asks of the cache: "no-store", "refresh" or None. A bad value is a 400."""
    asked = ex.headers.get(CACHE_HEADER)
    if asked is not None:
        value = asked.strip().lower()
        if value not in ("no-store", "refresh"):
            raise InvalidRequest(f"Invalid {CACHE_HEADER} header: {asked[:40]!r}. Use no-store or refresh.",
                                 param=CACHE_HEADER)
        return value
    control = {d.strip().lower().split("=", 1)[0] for v in ex.headers.getall("Cache-Control", ()) for d in v.split(",")}
    if "no-store" in control:
        return "no-store"
    if "no-cache" in control:
        return "refresh"
    return None


def deterministic(path: str, body: dict[str, Any]) -> bool:
    """Whether the same request gets the same answer: temperature 0 or a seed (embeddings always)."""
    if path in _ALWAYS_DETERMINISTIC:
        return True
    temperature = body.get("temperature")
    return (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0) \
        or body.get("seed") is not None


class Cache(Stage):
    """Looks a request up before it is admitted (`request`), records its answer (`chunk`), stores it or
    accounts a hit (`finish`, placed right after the meter). `serve` answers a hit."""

    def __init__(self, config: CacheConfig, store: CacheStore, clock: Clock,
                 ignored: Callable[[str], tuple[str, ...]] = lambda _: ()) -> None:
        self.config, self.store, self.clock, self.ignored = config, store, clock, ignored
        self.include = tuple(config.include)
        self.counts = {"hit": 0, "miss": 0, "bypass": 0}
        self._counter: Any = None
        self._saved: Any = None

    def register(self, registry: CollectorRegistry) -> None:
        """`oaigate_cache_requests_total{result}` and `oaigate_cache_saved_usd_total` on /metrics."""
        from prometheus_client import Counter

        self._counter = Counter("oaigate_cache_requests", "Cacheable requests by result (hit, miss, bypass).",
                                ["result"], registry=registry)
        for result in self.counts:
            self._counter.labels(result)
        self._saved = Counter("oaigate_cache_saved_usd", "What cache hits would have cost, USD.", registry=registry)

    def cacheable_path(self, ex: Exchange) -> bool:
        return ex.method == "POST" and any(p == ex.path or fnmatch.fnmatchcase(ex.path, p) for p in self.include)

    def key(self, ex: Exchange) -> str:
        assert ex.json is not None
        ignored = self.ignored(ex.path)
        compared = {"scope": ex.principal if self.config.scope == "key" else None, "method": ex.method,
                    "path": ex.path, "query": canonical_query(ex.query_string), "body": strip(ex.json, ignored)}
        return hashlib.sha256(canonical(compared)).hexdigest()

    def _count(self, result: str) -> None:
        self.counts[result] += 1
        if self._counter is not None:
            self._counter.labels(result).inc()

    async def request(self, ex: Exchange) -> None:
        if not self.cacheable_path(ex):
            return
        asked = directive(ex)
        body = ex.json
        if (asked == "no-store" or body is None or body.get("background") is True
                or (self.config.deterministic_only and not deterministic(ex.path, body))):
            ex.cache = "bypass"
        else:
            state = CacheState(self.key(ex) if len(ex.body) < 64 * 1024
                               else await asyncio.to_thread(self.key, ex))
            ex.cached = state
            if asked != "refresh":
                try:
                    state.answer = await self.store.get(state.key, self.clock.wall())
                except Exception:  # a broken cache never fails a request: it is a miss
                    log.exception("the response cache could not be read")
            ex.cache = "hit" if state.answer is not None else "miss"
            if state.answer is not None and state.answer.stream != ex.stream:
                state.answer, ex.cache = None, "miss"  # never a stream for a non-stream request, or back
        ex.response_headers[CACHE_HEADER] = ex.cache
        self._count(ex.cache)

    def chunk(self, ex: Exchange, data: bytes) -> None:
        state = ex.cached
        if ex.cache != "miss" or state is None or state.too_big:
            return
        state.size += len(data)
        if state.size > self.config.max_bytes:
            state.too_big, state.chunks = True, []
            return
        state.chunks.append(data)

    async def finish(self, ex: Exchange) -> None:
        state: CacheState | None = ex.cached
        if state is None:
            return
        if ex.cache == "hit":
            # a hit spends nothing: what it would have cost is `saved`, its tokens count nowhere
            ex.saved_micros, ex.cost_micros = ex.cost_micros, 0
            ex.usage, ex.usage_source = None, None
            if self._saved is not None and ex.saved_micros:
                self._saved.inc(ex.saved_micros / 1_000_000)
            return
        if not self._complete(ex, state):
            return
        headers = {k.lower(): v for k, v in (ex.upstream_headers or {}).items() if k.lower() in KEPT_HEADERS}
        now = self.clock.wall()
        answer = CachedAnswer(ex.status or 0, headers, b"".join(state.chunks), ex.stream, now)
        state.chunks = []
        try:
            await self.store.put(state.key, answer, now + self.config.ttl_s)
        except Exception:
            log.exception("the response cache could not store an answer")

    @staticmethod
    def _complete(ex: Exchange, state: CacheState) -> bool:
        """An answer worth keeping: 2xx, whole, plain (not compressed), not a replayed fixture."""
        if state.too_big or ex.status is None or not 200 <= ex.status < 300 or ex.error_type is not None:
            return False
        if ex.fixture == "hit" or ex.settle_later or not state.chunks:
            return False
        headers = ex.upstream_headers or {}
        if headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            return False
        return not ex.stream or ex.stream_ended


async def serve(request: web.Request, ex: Exchange, on_chunk: Any) -> web.StreamResponse:
    """Answer a hit: the stored body at once, or a stream's frames, event by event, byte for byte."""
    answer: CachedAnswer = ex.cached.answer
    ex.status = answer.status
    ex.upstream_headers = CIMultiDict(answer.headers)
    ex.upstream_request_id = answer.headers.get("x-request-id")
    ex.ttfb_s = time.perf_counter() - ex.started
    headers = {**answer.headers, **ex.response_headers}
    complete = request.app.get(COMPLETE)
    if not answer.stream:
        ex.response_body = answer.body
        on_chunk(ex, answer.body)
        if complete is not None:
            await complete(ex)
        return web.Response(status=answer.status, body=answer.body, headers=headers)
    return await relay_stored(request, ex, answer.status, headers, _events(answer.body), on_chunk)


async def _events(body: bytes) -> AsyncIterator[bytes]:
    """A stored stream's frames, one SSE event at a time (and any tail after the last one)."""
    start = 0
    for match in _EVENT_END.finditer(body):
        yield body[start:match.end()]
        start = match.end()
    if start < len(body):
        yield body[start:]


__all__ = ["CACHE_HEADER", "Cache", "CacheState", "default_path", "deterministic", "directive", "serve"]
