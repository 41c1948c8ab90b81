"""forward: send the request upstream (retrying with jittered backoff) and relay the response.

Bodies, paths and query strings pass untouched. JSON answers are read whole (they are small and
the meter needs them); anything else, SSE streams included, is relayed chunk by chunk as it
arrives. A response is never retried once a byte of it has reached the client.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..body import body_headers
from ..durable import COMPLETE
from ..errors import UpstreamError, UpstreamTimeout
from ..exchange import Exchange
from ..upstream import FORWARDED_HEADERS, Upstream
from ..upstream import NEVER_FORWARDED as _NEVER
from ..upstream import NOT_DOWNSTREAM as _NOT_DOWNSTREAM
from ..wire.jsoncodec import dumps
from .retry import backoff, hinted_wait, should_retry

if TYPE_CHECKING:
    from .fallback import Fallbacks

log = logging.getLogger("oaigate.forward")

READ_WHOLE_LIMIT = 8 * 1024 * 1024

Sleep = Callable[[float], Awaitable[object]]
ChunkHook = Callable[[Exchange, bytes], None]
AttemptHook = Callable[[Exchange, int, Mapping[str, str]], None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    total_s: float = 600.0
    connect_s: float = 10.0
    first_byte_s: float = 120.0


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names the `Connection` header lists: hop-by-hop for this message (RFC 9110 7.6.1)."""
    return frozenset(t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",") if t.strip())


def _forwarded(name: str, extra: tuple[str, ...]) -> bool:
    """Whether the client header `name` (lower case) goes upstream (`extra`: `forward_headers`)."""
    if name in _NEVER or name.startswith("x-oaigate-"):
        return False
    return any(p == name or fnmatch.fnmatchcase(name, p) for p in (*FORWARDED_HEADERS, *extra))


_DECIDED_MAX = 4096  # header names remembered per `forward_headers` list (a client may send any names)
_decided: dict[tuple[str, ...], dict[str, bool]] = {}


def _decisions(extra: tuple[str, ...]) -> dict[str, bool]:
    """`_forwarded`'s answers for one `forward_headers` list, by lower-case name: a dict lookup per
    header of a request; forgotten and rebuilt past `_DECIDED_MAX` names."""
    decided = _decided.get(extra)
    if decided is None or len(decided) > _DECIDED_MAX:
        decided = _decided[extra] = {}
    return decided


def upstream_headers(ex: Exchange, upstream: Upstream, pass_through: bool) -> CIMultiDict[str]:
    """The client's headers that are on the forwarded list, plus the upstream credential and identity.

    The organization and project come from config (`upstream.organization`, `project`); a client's
    `OpenAI-Organization` / `OpenAI-Project` are forwarded only with `pass_through`, where the client's
    own token pays (the configured ones then apply when the client sends none)."""
    drop = _connection_tokens(ex.headers) if "Connection" in ex.headers else frozenset()
    extra = upstream.forward_headers
    decided = _decisions(extra)
    kept = []
    for key, text in ex.headers.items():
        lowered = key.lower()
        forwarded = decided.get(lowered)
        if forwarded is None:
            forwarded = decided[lowered] = _forwarded(lowered, extra)
        if forwarded and lowered not in drop:
            kept.append((key, text))
    headers = CIMultiDict(kept)
    token = ex.client_token if pass_through else upstream.api_key
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for name, configured in (("OpenAI-Organization", upstream.organization), ("OpenAI-Project", upstream.project)):
        value = ex.headers.get(name) if pass_through else None
        chosen = value or configured
        if chosen:
            headers[name] = chosen
    headers["Accept-Encoding"] = "identity"
    return headers


def downstream_headers(response: aiohttp.ClientResponse) -> CIMultiDict[str]:
    drop = (_NOT_DOWNSTREAM | _connection_tokens(response.headers) if "Connection" in response.headers
            else _NOT_DOWNSTREAM)
    return CIMultiDict((k, v) for k, v in response.headers.items() if k.lower() not in drop)


def upstream_url(base_url: str, request: web.Request) -> URL:
    """`base_url` + the client's path after `/v1` and query string, exactly as the client encoded them
    (`request.path` and `request.query_string` are decoded: `%2F` or `%2B` would change meaning)."""
    raw = request.rel_url
    path = raw.raw_path if raw.raw_path.startswith("/v1/") else URL.build(path=raw.path).raw_path
    query = raw.raw_query_string
    return URL(base_url + path[3:] + (f"?{query}" if query else ""), encoded=True)


def prepare_body(ex: Exchange, inject_stream_usage: bool) -> bytes:
    """The upstream body: the client's bytes, except that a chat stream asks for usage.

    When the client did not ask for `stream_options.include_usage`, the gateway asks for it (to meter
    exactly) and strips the extra usage chunk on the way back (`StreamUsageStripper`)."""
    if (inject_stream_usage and ex.stream and ex.json is not None and ex.path == "/v1/chat/completions"):
        options = ex.json.get("stream_options")
        if options is None or (isinstance(options, dict) and not options.get("include_usage")):
            ex.strip_stream_usage = True
            return dumps({**ex.json, "stream_options": {**(options or {}), "include_usage": True}})
    return ex.body


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # SSE events end with a blank line, in any line-end style
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null\b|"usage"\s*:\s*null\s*,')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


class StreamUsageStripper:
    """Removes what `include_usage` added to a chat stream the client did not ask it for: the
    `"usage":null` member of each chunk and the final usage-only chunk. Works event by event, so
    events still leave as soon as they are complete, whatever their line ends (LF, CRLF, CR) or JSON
    spacing; events without `"usage"` leave byte for byte."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        ends = [m.end() for m in _EVENT_END.finditer(self._buffer)]
        if not ends:
            return b""
        complete, self._buffer = self._buffer[: ends[-1]], self._buffer[ends[-1]:]
        kept, start = [], 0
        for end in ends:
            frame, start = complete[start:end], end
            if b'"usage"' in frame:
                if _is_usage_only(frame):
                    continue
                frame = _USAGE_NULL.sub(b"", frame, count=1)
            kept.append(frame)
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def _is_usage_only(frame: bytes) -> bool:
    return _EMPTY_CHOICES.search(frame) is not None and _USAGE_OBJECT.search(frame) is not None


NO_SDK_RETRY = {"x-should-retry": "false"}  # the gateway has retried already: an SDK must not retry on top


class ClientGone(ConnectionResetError):
    """The client hung up while its answer was being relayed: no error of the gateway's nor of the
    upstream's. Carries the client's (started) response, for the handler to return: aiohttp then ends
    it quietly, where a raised exception is logged as an error with its traceback."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__("the client went away mid-stream")
        self.response = response


class Forward:
    """Calls the upstream for an exchange (`ex.target`, chosen by `route`, else the default
    `upstream`) and relays the answer to the client."""

    def __init__(self, session: aiohttp.ClientSession, upstream: Upstream, *, max_retries: int,
                 timeouts: Timeouts, pass_through: bool = False, inject_stream_usage: bool = True,
                 sleep: Sleep = asyncio.sleep, rand: Callable[[], float] = random.random,
                 on_attempt: AttemptHook | None = None, pool_size: int | None = None) -> None:
        self.session, self.upstream, self.max_retries = session, upstream, max_retries
        self.timeouts, self.pass_through, self.inject_stream_usage = timeouts, pass_through, inject_stream_usage
        self.sleep, self.rand, self.on_attempt = sleep, rand, on_attempt
        # the session's connection pool, counted here (its connector's limit is the same size, so aiohttp
        # itself never queues): waiting for a connection is queueing, not upstream silence
        self.pool = asyncio.Semaphore(pool_size) if pool_size else None
        self.fallbacks: Fallbacks | None = None  # `fallback.Fallbacks`: the next model after a failure
        # aiohttp's own timeouts: the connect only (the first byte and the deadline are timed here)
        self._connect_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)

    async def __call__(self, request: web.Request, ex: Exchange, on_chunk: ChunkHook) -> web.StreamResponse:
        if ex.deadline == math.inf:  # an exchange that skipped the deadline stage
            ex.deadline = time.monotonic() + self.timeouts.total_s
        deadline = ex.deadline
        while True:
            upstream = ex.target.upstream if ex.target is not None else self.upstream
            ex.upstream = upstream.name
            url = upstream_url(upstream.base_url, request)
            headers = upstream_headers(ex, upstream, self.pass_through)
            body = prepare_body(ex, self.inject_stream_usage)
            body_headers(ex, headers)
            try:
                response = await self._send(ex, url, headers, body, deadline)
            except UpstreamError as exc:
                model = self.fallbacks.after_error(ex, exc) if self.fallbacks is not None else None
                if model is None:
                    raise
                log.info("upstream failed (%s): falling back to %s", exc.code, model)
                await self.fallbacks.switch(ex, model)  # type: ignore[union-attr]
                continue
            if self.fallbacks is not None and response.status >= 400:  # nothing of it relayed yet
                try:
                    model = await self.fallbacks.after_answer(ex, response)
                except BaseException:
                    response.release()
                    self._give_back()
                    raise
                if model is not None:
                    response.release()
                    self._give_back()
                    log.info("upstream answered %d: falling back to %s", response.status, model)
                    await self.fallbacks.switch(ex, model)
                    continue
            break
        try:
            return await self._relay(request, ex, response, on_chunk, deadline)
        finally:
            response.release()
            self._give_back()

    async def _send(self, ex: Exchange, url: URL, headers: CIMultiDict[str], body: bytes,
                    deadline: float) -> aiohttp.ClientResponse:
        """Attempts until one answers with a final status, retrying what OpenAI's SDKs would retry.

        Each attempt first takes a connection of the pool (waiting for one is queueing, bounded by the
        deadline only); the first-byte clock starts once it has one. The answer returned holds its
        connection until `__call__` gives it back. Each model of a fallback gets its own retries."""
        tried = ex.attempts
        while True:
            if deadline - time.monotonic() <= 0:  # spent waiting in line (rate limits) or between attempts
                raise UpstreamTimeout(f"The request's deadline passed before it could be sent to the upstream "
                                      f"({ex.upstream}).", code="deadline_exceeded", headers=NO_SDK_RETRY)
            sent = time.perf_counter()
            if not await self._take(deadline):
                ex.upstream_wait_s += time.perf_counter() - sent
                raise UpstreamTimeout(f"No connection to the upstream ({ex.upstream}) became free before the "
                                      "request's deadline.", code="deadline_exceeded", headers=NO_SDK_RETRY)
            ex.attempts += 1
            failure: Exception | None = None
            try:
                first_byte_s = min(self.timeouts.first_byte_s, max(deadline - time.monotonic(), 0))
                async with asyncio.timeout(first_byte_s) as first_byte:
                    if ex.body_stream is not None:  # the first-byte wait starts once the streamed body is sent
                        ex.body_stream.hold(first_byte, self.timeouts.first_byte_s, deadline)
                    response = await self.session.request(
                        ex.method, url, data=body or (ex.body_stream and ex.body_stream.chunks()),
                        headers=headers, allow_redirects=False,
                        timeout=self._connect_timeout,
                    )
            except TimeoutError as exc:
                failure = UpstreamTimeout(f"The upstream did not answer within the time limit ({ex.upstream}).",
                                          headers=NO_SDK_RETRY)
                failure.__cause__ = exc
            except aiohttp.ClientError as exc:
                failure = UpstreamError(f"Could not reach the upstream ({ex.upstream}): {type(exc).__name__}.",
                                        headers=NO_SDK_RETRY)
                failure.__cause__ = exc
            except BaseException:
                self._give_back()
                raise
            if failure is not None:
                self._give_back()
            ex.upstream_wait_s += time.perf_counter() - sent
            if failure is not None and ex.body_stream is not None:  # the client's body failed, or cannot be re-sent
                failure = ex.body_stream.failure(failure)
            if failure is None:
                ex.ttfb_s = time.perf_counter() - ex.started
                if self.on_attempt is not None:
                    try:
                        self.on_attempt(ex, response.status, response.headers)
                    except BaseException:
                        response.release()
                        self._give_back()
                        raise
                if not should_retry(response.status, response.headers) or not self._may_retry(ex, tried):
                    return response
                wait = hinted_wait(response.status, response.headers)
                if wait is None:
                    wait = backoff(ex.attempts - tried, self.rand)
                if time.monotonic() + wait >= deadline:
                    return response  # no time left to wait: the upstream's own answer (and retry-after) it is
                response.release()
                self._give_back()
                log.info("upstream answered %d; retry %d", response.status, ex.attempts)
            else:
                if not self._may_retry(ex, tried):
                    raise failure
                wait = backoff(ex.attempts - tried, self.rand)
                if time.monotonic() + wait >= deadline:
                    raise failure
                log.info("upstream failed (%s); retry %d", failure, ex.attempts)
            started = time.perf_counter()
            await self.sleep(wait)
            ex.upstream_wait_s += time.perf_counter() - started

    async def _take(self, deadline: float) -> bool:
        """A connection of the pool for one attempt; False if none became free before the deadline."""
        if self.pool is None:
            return True
        if not self.pool.locked():
            await self.pool.acquire()  # free: returns at once
            return True
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                await self.pool.acquire()
        except TimeoutError:
            return False
        return True

    def _give_back(self) -> None:
        if self.pool is not None:
            self.pool.release()

    def _may_retry(self, ex: Exchange, tried: int = 0) -> bool:
        """`tried`: attempts made for earlier models of a fallback (each model has its own retries)."""
        return ex.attempts - tried <= self.max_retries and (ex.body_stream is None or ex.body_stream.resendable)

    async def _relay(self, request: web.Request, ex: Exchange, response: aiohttp.ClientResponse,
                     on_chunk: ChunkHook, deadline: float) -> web.StreamResponse:
        ex.status = response.status
        ex.upstream_headers = response.headers
        ex.upstream_request_id = response.headers.get("x-request-id")
        headers = downstream_headers(response)
        headers.update(ex.response_headers)
        content_type = response.headers.get("Content-Type", "")
        length = response.content_length
        remaining = max(deadline - time.monotonic(), 0.001)
        complete = request.app.get(COMPLETE)
        head = b""  # the start of a JSON answer with no length that turned out too big to read whole
        if _is_json(content_type) and (length is None or length <= READ_WHOLE_LIMIT):
            started = time.perf_counter()
            try:
                if length is not None and response.content.is_eof():  # all of it has arrived: no wait
                    body, whole = await response.read(), True
                else:
                    async with asyncio.timeout(remaining):
                        body, whole = await _read_up_to(response, READ_WHOLE_LIMIT)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamError(f"The upstream broke off its answer ({type(exc).__name__}).") from exc
            finally:
                ex.upstream_wait_s += time.perf_counter() - started
            if whole:
                ex.response_body = body
                on_chunk(ex, body)
                headers["x-oaigate-overhead-ms"] = _overhead_ms(ex)
                if complete is not None:
                    await complete(ex)  # finish hooks run and the ledger row committed before the client has it
                return web.Response(status=response.status, body=body, headers=headers)
            head = body
        headers["x-oaigate-overhead-ms"] = _overhead_ms(ex)
        client = web.StreamResponse(status=response.status, headers=headers)
        stripper = StreamUsageStripper() if ex.strip_stream_usage and "event-stream" in content_type else None
        await client.prepare(request)
        try:
            async with asyncio.timeout(remaining):
                if head:
                    on_chunk(ex, head)
                    await client.write(head)
                async for data in response.content.iter_any():
                    on_chunk(ex, data)
                    if stripper is not None:
                        data = stripper.feed(data)
                        if not data:
                            continue
                    if ex.stream_ended and complete is not None:
                        await complete(ex)  # before the chunk carrying the terminal event (once)
                    await client.write(data)
            if stripper is not None and (rest := stripper.flush()):
                await client.write(rest)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                # a write to the client failed (aiohttp's ClientConnectionResetError is a ClientConnectionError
                # too): the client left, the upstream did nothing wrong
                raise ClientGone(client) from exc
            ex.error_type = "upstream_timeout" if isinstance(exc, TimeoutError) else "upstream_disconnected"
            log.warning("upstream stream broke off (%s): cutting the client's stream", type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return client
        if complete is not None:
            await complete(ex)  # a body that ended without a terminal event: before its last bytes
        try:
            await client.write_eof()
        except ConnectionResetError as exc:
            raise ClientGone(client) from exc
        return client


def _is_json(content_type: str) -> bool:
    """`application/json` (or `+json`), not a JSON-lines stream: such answers are read whole."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _read_up_to(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The answer's body, and True; or, past `limit` bytes, what was read so far and False (the rest is
    relayed as it comes). A JSON answer sent without a length is then read whole like any other, so the
    stages that need it whole (the meter, ownership filters) see it before the client does."""
    if response.content_length is not None:
        return await response.read(), True
    parts, size = [], 0
    async for data in response.content.iter_any():
        parts.append(data)
        size += len(data)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


def _overhead_ms(ex: Exchange) -> str:
    ex.overhead_s = max(time.perf_counter() - ex.started - ex.upstream_wait_s, 0.0)
    return f"{ex.overhead_s * 1000:.3f}"


async def relay_stored(request: web.Request, ex: Exchange, status: int, headers: Mapping[str, str],
                       chunks: AsyncIterable[bytes], on_chunk: ChunkHook, *,
                       inject_stream_usage: bool = True) -> web.StreamResponse:
    """Answer a stream from stored frames (a replayed fixture, a cache hit) as a live relay would: the
    same chunk hooks, the usage chunk the gateway asked for stripped again when the client did not, and
    the finish hooks (with the ledger commit) run before the last bytes go out."""
    prepare_body(ex, inject_stream_usage)  # stored chat streams hold the usage chunk the gateway asked for
    stripper = StreamUsageStripper() if ex.strip_stream_usage else None
    complete = request.app.get(COMPLETE)
    response = web.StreamResponse(status=status, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in chunks:
            on_chunk(ex, chunk)
            data = stripper.feed(chunk) if stripper is not None else chunk
            if data:
                if ex.stream_ended and complete is not None:
                    await complete(ex)
                await response.write(data)
        if stripper is not None and (rest := stripper.flush()):
            await response.write(rest)
        if complete is not None:
            await complete(ex)
        await response.write_eof()
    except ConnectionResetError as exc:  # a write to the client failed: it hung up
        raise ClientGone(response) from exc
    return response


__all__ = ["ClientGone", "Forward", "StreamUsageStripper", "Timeouts", "Upstream", "relay_stored"]
