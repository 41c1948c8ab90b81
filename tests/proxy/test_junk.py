"""Junk in, never a 5xx out: hypothesis-generated requests (bodies, content types, encodings, headers,
depths, methods, paths under /v1) sent with raw HTTP to a gateway in front of an upstream that always
answers 200 JSON. Whatever the gateway refuses, it refuses with a 4xx in OpenAI's envelope."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.servers import ServerThread

from .conftest import CLIENT_KEY, Gateway

PATHS = ["chat/completions", "completions", "embeddings", "responses", "moderations", "files", "batches",
         "models", "models/gpt-4o-mini", "uploads/upload_1/parts", "audio/transcriptions", "images/edits",
         "files/file-1/content", "responses/resp_1", ""]
MODELS = ["gpt-4o-mini", "gpt-4o", "fast", "text-embedding-3-small", "unknown-model", "", "llama*"]


async def _ok(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                              "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                       "total_tokens": 5}})


def always_ok() -> web.Application:
    app = web.Application(client_max_size=1024 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _ok)
    return app


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def chat_like(draw: st.DrawFn) -> bytes:
    """A request body that is almost right: OpenAI's fields, any values."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["model"] = draw(st.sampled_from(MODELS) | json_values)
    for field in ("messages", "input", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                  "max_output_tokens", "n", "tools", "response_format", "metadata", "user"):
        if draw(st.integers(0, 3)) == 0:
            body[field] = draw(json_values | st.just(True) | st.just([{"role": "user", "content": "hi"}]))
    return json.dumps(body).encode()


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 1100))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" + closer * depth
    return b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":' + \
        draw(st.sampled_from([b"true", b"false"])) + b',"x":' + inner + b"}"


bodies = st.one_of(st.just(b""), st.binary(max_size=300), chat_like(), deep(),
                   json_values.map(lambda v: json.dumps(v).encode()),
                   st.integers(70_000, 200_000).map(lambda n: b'{"model":"gpt-4o-mini","input":"' + b"a" * n + b'"}'))


def _encode(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    if encoding == "gzip":
        return gzip.compress(body), "gzip"
    if encoding == "deflate":
        return zlib.compress(body), "deflate"
    if encoding == "bad-gzip":
        return body, "gzip"
    return body, encoding


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes, bool]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"]))
    path = "/v1/" + draw(st.sampled_from(PATHS) | st.text("abc/%.-_~?=&", max_size=20))
    if draw(st.booleans()):
        path += "?" + draw(st.text("abcxyz=&%20", max_size=12))
    body, encoding = _encode(draw(bodies), draw(st.sampled_from(
        [None, None, "gzip", "deflate", "bad-gzip", "identity", "br", "zstd", "compress", "gzip, gzip", "GZIP"])))
    headers: list[tuple[str, str]] = []
    auth = draw(st.sampled_from([f"Bearer {CLIENT_KEY}", f"Bearer {CLIENT_KEY}", "Bearer", "Bearer sk-wrong",
                                 "Basic Zm9vOmJhcg==", None]))
    if auth is not None:
        headers.append(("Authorization", auth))
    content_type = draw(st.sampled_from(["application/json", "application/json", "text/plain", "multipart/form-data",
                                         "multipart/form-data; boundary=xyz", "application/octet-stream",
                                         "application/x-www-form-urlencoded", None]))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if encoding is not None:
        headers.append(("Content-Encoding", encoding))
    for name, values in (("x-oaigate-fixtures", ["live", "record", "replay", "record-missing", "bogus"]),
                         ("x-oaigate-cassette", ["default", "junk", "../etc", "a" * 120]),
                         ("x-oaigate-cache", ["no-store", "refresh", "junk"]),
                         ("Accept-Encoding", ["gzip", "br", "identity"]),
                         ("Connection", ["keep-alive", "close", "x-oaigate-fixtures"])):
        if draw(st.integers(0, 4)) == 0:
            headers.append((name, draw(st.sampled_from(values))))
    chunked = bool(body) and draw(st.booleans())
    return method, path, headers, body, chunked


def send(gw: Gateway, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
         chunked: bool) -> tuple[int, str, bytes]:
    url = URL(gw.root)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {url.host}:{url.port}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:half], body[half:]) if p) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    with socket.create_connection((url.host, url.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


def test_junk_never_gets_a_5xx(gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread],
                               tmp_path: Path) -> None:
    gw = gateway(upstream(always_ok()).url + "/v1", keys=[{"name": "dev", "key": CLIENT_KEY, "budget_usd": 100,
                                                           "tpm": 10_000_000}],
                 upstream={"max_retries": 0}, server={"max_json_bytes": 64 * 1024, "body_timeout_s": 2},
                 fixtures={"dir": str(tmp_path / "fixtures")}, aliases={"fast": "gpt-4o-mini"})

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    def check(request: tuple[str, str, list[tuple[str, str]], bytes, bool]) -> None:
        status, content_type, body = send(gw, *request)
        assert status < 500, (status, body[:300])
        if status >= 400 and request[0] != "HEAD" and "json" in content_type:
            error = json.loads(body)["error"]
            assert {"message", "type", "param", "code"} <= set(error), error

    check()


def test_an_unexpected_error_is_a_500_envelope(gateway: Callable[..., Gateway], echo: str,
                                               monkeypatch: Any) -> None:
    """A bug in a stage is the gateway's fault (500), still in OpenAI's envelope, never aiohttp's text page."""
    from proxy.stages.estimate import Estimator

    async def broken(self: Estimator, ex: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Estimator, "request", broken)
    gw = gateway(echo)
    status, content_type, body = send(gw, "POST", "/v1/chat/completions",
                                      [("Authorization", f"Bearer {CLIENT_KEY}"), ("Content-Type", "application/json")],
                                      b'{"model":"gpt-4o-mini","messages":[]}', False)
    assert status == 500 and "json" in content_type
    error = json.loads(body)["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "a bug" not in error["message"]
    (row,) = gw.rows(expect=1)
    assert row["status"] == 500
