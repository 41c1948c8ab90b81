"""Reading what a client sends, once its key is checked: size limits, decoding, an idle timeout.

The app authenticates on headers alone, then calls `receive_body`, which either reads the body
whole into `ex.body` (JSON and every small body: the stages need it) or, for a large file upload
that nothing needs whole, leaves it in the socket as `ex.body_stream`, relayed to the upstream as
it arrives (`forward` sends it), so memory stays flat whatever the file's size.

- **Limits.** File uploads (`multipart/*`, `application/octet-stream`) may be up to
  `[server] max_upload_bytes`; anything else (JSON...) up to `max_json_bytes`. A `Content-Length`
  over the limit is refused with 413 before a byte is read; a chunked body is read up to the limit
  and then refused. Limits count decoded bytes. With `[[keys]]`, a form that names an object in a field
  (`owners.FORM_REFERENCES`: a video edit's `video[id]`, a voice's `consent`) is read whole up to
  `FORM_WHOLE_BYTES` so its fields can be checked; past that, or without a length, it is refused.
- **Encodings.** aiohttp's server undoes `Content-Encoding: gzip` and `deflate` (and `br`, `zstd`
  when their packages are installed) as the body arrives, a bounded piece at a time, so a zip bomb
  hits the limit, not memory. The upstream gets the decoded bytes without `Content-Encoding`.
  `identity` is dropped too; any other encoding is refused with 415.
- **Timeout.** `[server] body_timeout_s` bounds the wait for each next piece of the body (an idle
  timeout, so a large upload on a slow link still works); a client that stops sending, or whose
  `Content-Length` promises more than it sends, gets 408.
- **Fixtures.** `record` / `replay` match on a hash of the whole body, so in those modes an upload
  is read whole, bounded by `max_upload_bytes` (a streamed body cannot be matched).
- **Retries.** A streamed body can be sent once. An attempt that fails before a byte of the body
  was read from the client may be retried; after that, the upstream's own answer is relayed as it
  is, and a broken connection is a 502 saying the body could not be re-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Container

from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict

from .config import Config
from .errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedEncoding,
)
from .exchange import Exchange
from .wire.fixtures import MODE_HEADER

UPLOAD_TYPES = ("multipart/", "application/octet-stream")
# The endpoints that take files: only there is a body an upload (larger limit, may stream unread). Anywhere
# else a body is read whole and parsed whatever its Content-Type says, since an upstream may parse it as
# JSON anyway: dressing a JSON body up as an upload must not hide it from budgets or ownership checks.
UPLOAD_PATHS = re.compile(r"/v1/(?:files|uploads/[^/]+/parts|audio/(?:transcriptions|translations|voices)"
                          r"|images/(?:edits|variations)|containers/[^/]+/files|videos(?:/edits|/extensions)?"
                          r"|skills(?:/[^/]+/versions)?)")
STREAM_ABOVE = 1024 * 1024  # smaller uploads are read whole: cheap, and they can be retried
FORM_WHOLE_BYTES = 16 * 1024 * 1024  # forms naming an object (owners.FORM_REFERENCES): read whole to be checked
OFFLOAD_PARSE_BYTES = 1024 * 1024  # larger bodies are parsed as JSON in a thread, off the event loop
# what aiohttp's server decodes by itself (the names it compares, lower-cased, to the whole header)
DECODED = frozenset({"gzip", "deflate"} | ({"br"} if HAS_BROTLI else set()) | ({"zstd"} if HAS_ZSTD else set()))


def _decodes(value: str) -> bool:
    """Whether the gateway hands the upstream other bytes than the client sent (so drops the header);
    raises 415 for an encoding nothing here can undo."""
    if value.isascii() and value.lower() in DECODED:
        return True
    if value.strip().lower() in ("", "identity"):
        return True
    raise UnsupportedEncoding(
        f"Unsupported Content-Encoding {value[:100]!r}: send the body uncompressed, or encoded with "
        f"{', '.join(sorted(DECODED))}.", param="Content-Encoding", headers={"x-should-retry": "false"})


def too_large(limit: int, upload: bool) -> PayloadTooLarge:
    what = "File uploads" if upload else "Request bodies"
    setting = "max_upload_bytes" if upload else "max_json_bytes"
    return PayloadTooLarge(f"Request too large: {what.lower()} may be up to {limit} bytes here "
                           f"(the gateway's [server] {setting}).", headers={"x-should-retry": "false"})


async def _read(reader: StreamReader, idle_s: float) -> bytes:
    """The next piece of the body (b"" at its end), waiting at most `idle_s` for it."""
    try:
        if reader.is_eof():  # all of it has arrived: nothing to wait for
            return await reader.readany()
        async with asyncio.timeout(idle_s):
            return await reader.readany()
    except TimeoutError:
        raise RequestTimeout(f"The request body stopped arriving: nothing came for {idle_s:g} s "
                             "(the gateway's [server] body_timeout_s).") from None
    except (RequestPayloadError, HttpProcessingError) as exc:  # a bad chunked framing or compressed stream
        detail = getattr(exc, "message", None) or str(exc)
        raise InvalidRequest(f"Could not read the request body: {str(detail)[:200]}") from None


async def read_whole(reader: StreamReader, limit: int, idle_s: float, upload: bool) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while data := await _read(reader, idle_s):
        size += len(data)
        if size > limit:
            raise too_large(limit, upload)
        chunks.append(data)
    if len(chunks) == 1:
        return chunks[0]
    body = b"".join(chunks)
    chunks.clear()
    return body


class StreamedBody:
    """A body relayed to the upstream as it arrives, within the limit and the idle timeout. It can be
    sent once: `resendable` is false once a byte of it was read from the client."""

    def __init__(self, reader: StreamReader, limit: int, idle_s: float, length: int | None, upload: bool) -> None:
        self.reader, self.limit, self.idle_s, self.length, self.upload = reader, limit, idle_s, length, upload
        self.size = 0
        self.started = False
        self.error: Exception | None = None  # why reading the client's body failed (the client's fault)
        self._sent: Callable[[], None] | None = None

    def hold(self, wait: asyncio.Timeout, first_byte_s: float, deadline: float) -> None:
        """Hold an attempt's first-byte timeout `wait` while the body is still being sent (a large file
        on a slow link takes its time): until then only the overall `deadline` (time.monotonic())
        applies; once the body is sent, the upstream has `first_byte_s` to answer."""
        loop = asyncio.get_running_loop()
        wait.reschedule(loop.time() + max(deadline - time.monotonic(), 0))

        def sent() -> None:
            # RuntimeError: the attempt is over already (the upstream answered before the body ended)
            with contextlib.suppress(RuntimeError):
                wait.reschedule(loop.time() + min(first_byte_s, max(deadline - time.monotonic(), 0)))

        self._sent = sent

    @property
    def resendable(self) -> bool:
        return not self.started and self.error is None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body for one attempt upstream (aiohttp's client takes an async iterable as `data`)."""
        while True:
            try:
                data = await _read(self.reader, self.idle_s)
            except (GatewayError, ConnectionError) as exc:
                self.error = exc
                raise
            if not data:
                if self._sent is not None:
                    self._sent()
                return
            self.started = True
            self.size += len(data)
            if self.size > self.limit:
                self.error = too_large(self.limit, self.upload)
                raise self.error
            yield data

    def failure(self, failure: Exception) -> Exception:
        """What a failed attempt raises: the client's own failure (408, 413, 400, gone) when it was one;
        else `failure`, saying that the body, already sent in part, could not be re-sent."""
        if self.error is not None:
            return self.error
        if self.started and isinstance(failure, GatewayError):
            failure.message += (" The request body was being streamed to the upstream and cannot be re-sent, "
                                "so the gateway did not retry: send the request again.")
        return failure


def _fixtures_live(ex: Exchange, config: Config) -> bool:
    """Fixtures will not need the body: live in the config and not overridden by the request."""
    return config.fixtures.mode == "live" and ex.headers.get(MODE_HEADER, "live") == "live"


async def receive_body(request: web.Request, ex: Exchange, config: Config,
                       whole_forms: Container[str] = ()) -> None:
    """Sets `ex.body` (read whole, JSON parsed) or `ex.body_stream`; raises 408, 413, 415 or 400.
    With `[[keys]]`, an upload to a path in `whole_forms` (`owners.FORM_REFERENCES`: forms naming an
    object) is read whole up to `FORM_WHOLE_BYTES`, so its fields can be checked."""
    if not request.body_exists:
        return
    server = config.server
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None:
        ex.body_decoded = _decodes(encoding)
    upload = (request.headers.get("Content-Type", "").lower().startswith(UPLOAD_TYPES)
              and UPLOAD_PATHS.fullmatch(ex.path) is not None)
    limit = server.max_upload_bytes if upload else server.max_json_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit, upload)
    whole = FORM_WHOLE_BYTES if config.keys and ex.path in whole_forms else STREAM_ABOVE
    if upload and (length is None or length > whole) and _fixtures_live(ex, config):
        ex.body_stream = StreamedBody(request.content, limit, server.body_timeout_s,
                                      None if ex.body_decoded else length, upload)
        return
    body = await read_whole(request.content, limit, server.body_timeout_s, upload)
    if len(body) > OFFLOAD_PARSE_BYTES:
        await asyncio.to_thread(ex.set_body, body)
    else:
        ex.set_body(body)


def body_headers(ex: Exchange, headers: CIMultiDict[str]) -> None:
    """The upstream request's headers as the body going upstream needs them: no `Content-Encoding`
    once decoded; a streamed body of known length keeps its `Content-Length` (else it goes chunked)."""
    if ex.body_decoded:
        headers.popall("Content-Encoding", None)
    if ex.body_stream is not None and ex.body_stream.length is not None:
        headers["Content-Length"] = str(ex.body_stream.length)


__all__ = ["StreamedBody", "body_headers", "read_whole", "receive_body"]
