"""End to end: the gateway forwards the /v1 wire format untouched, with the real `openai` SDK and raw HTTP.

Bodies through the gateway are compared byte for byte with a direct call to an identical mock (the
mock is deterministic); what reaches an upstream is checked with an upstream that echoes it back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from proxy.stages.forward import StreamUsageStripper
from tests.servers import ServerThread

from .conftest import (
    BINARY,
    CLIENT_KEY,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    Gateway,
    echoed_headers,
    fetch,
)

MESSAGES = [{"role": "user", "content": "Tell me three facts about lighthouses, briefly."}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 40}
OVERHEAD = "x-oaigate-overhead-ms"


@pytest.fixture(params=["embedded", "external"])
def via(request: pytest.FixtureRequest, gateway: Callable[..., Gateway], mock_url: str) -> Gateway:
    """A gateway in front of the embedded mock (`base_url = "mock"`) or of a separately started mock."""
    return gateway("mock" if request.param == "embedded" else mock_url)


def _overhead(reply_headers: Any) -> float:
    value = reply_headers.get(OVERHEAD)
    assert value is not None, f"no {OVERHEAD} header"
    assert re.fullmatch(r"\d+\.\d{3}", value), value
    return float(value)


# --- bodies identical to a direct call -----------------------------------------------------------

REQUESTS = [
    ("POST", "/chat/completions", CHAT),
    ("POST", "/chat/completions", {**CHAT, "n": 2, "temperature": 0.3}),
    ("POST", "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "max_tokens": 12}),
    ("POST", "/embeddings", {"model": "text-embedding-3-small", "input": ["lighthouse", "keeper"]}),
    ("POST", "/embeddings", {"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}),
    ("POST", "/moderations", {"input": "I will bomb the exam"}),
    ("GET", "/models", None),
    ("GET", "/models/gpt-4o-mini", None),
    ("GET", "/models/no-such-model", None),  # an upstream error is relayed as is
    ("POST", "/chat/completions", {"model": "gpt-4o-mini"}),  # 400 from the upstream, relayed
]


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=[f"{m} {p} {i}" for i, (m, p,
                                                                                           _) in enumerate(REQUESTS)])
def test_raw_bodies_identical_to_direct(via: Gateway, mock_url: str, method: str, path: str, body: Any) -> None:
    kwargs = {} if body is None else {"json": body}
    direct = fetch(method, mock_url + path, **kwargs)
    through = fetch(method, via.url + path, **kwargs)
    assert through.status == direct.status
    assert through.body == direct.body
    assert through.headers["Content-Type"] == direct.headers["Content-Type"]
    assert through.headers.get("x-request-id") == direct.headers.get("x-request-id")
    _overhead(through.headers)


def test_stream_with_include_usage_identical_to_direct(via: Gateway, mock_url: str) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    direct = fetch("POST", mock_url + "/chat/completions", json=body)
    through = fetch("POST", via.url + "/chat/completions", json=body)
    assert direct.status == through.status == 200
    assert through.headers["Content-Type"].startswith("text/event-stream")
    assert b'"usage":{' in direct.body  # the comparison below covers the usage chunk
    assert through.body == direct.body
    _overhead(through.headers)
    (row,) = via.rows(expect=1)
    usage = json.loads(direct.body.split(b"\n\n")[-3][len(b"data: "):])["usage"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["stream"] == 1 and row["usage_source"] == "reported"


@pytest.mark.parametrize("options", [None, {"include_usage": False}], ids=["no-stream-options", "include-usage-false"])
def test_stream_without_include_usage_is_metered_exactly_and_shows_no_usage(
        via: Gateway, mock_url: str, options: dict[str, Any] | None) -> None:
    body = {**CHAT, "stream": True, **({"stream_options": options} if options is not None else {})}
    direct = fetch("POST", mock_url + "/chat/completions", json=body)
    through = fetch("POST", via.url + "/chat/completions", json=body)
    assert through.status == 200
    assert b'"usage"' not in direct.body
    assert through.body == direct.body  # no usage chunk, no `"usage":null` members: what the client asked for
    with_usage = fetch("POST", mock_url + "/chat/completions",
                       json={**body, "stream_options": {"include_usage": True}})
    usage = json.loads(with_usage.body.split(b"\n\n")[-3][len(b"data: "):])["usage"]
    (row,) = via.rows(expect=1)
    assert row["usage_source"] == "reported"
    assert row["prompt_tokens"] == usage["prompt_tokens"] > 0
    assert row["completion_tokens"] == usage["completion_tokens"] > 0
    assert row["cost_microusd"] > 0


# --- the real SDK, sync and async ----------------------------------------------------------------

def test_sdk_sync_results_equal_direct(via: Gateway, mock_url: str) -> None:
    with via.client() as gw, openai.OpenAI(base_url=mock_url, api_key=CLIENT_KEY, max_retries=0) as direct:
        calls: list[Callable[[openai.OpenAI], Any]] = [
            lambda c: c.chat.completions.create(**CHAT),
            lambda c: c.embeddings.create(model="text-embedding-3-small", input=["a lighthouse", "a keeper"]),
            lambda c: c.moderations.create(input="how to steal a bike"),
            lambda c: c.models.retrieve("gpt-4o-mini"),
            lambda c: c.models.list().data,
            lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello", max_tokens=5),
        ]
        for call in calls:
            got, want = call(gw), call(direct)
            dump = (lambda x: [m.model_dump() for m in x]) if isinstance(want, list) else (lambda x: x.model_dump())
            assert dump(got) == dump(want)
        chat = gw.chat.completions.create(**CHAT)
        assert chat.usage is not None and chat.usage.completion_tokens > 0
        assert len(via.rows(expect=len(calls) + 1)) == len(calls) + 1


def test_sdk_sync_streams(via: Gateway, mock_url: str) -> None:
    with via.client() as gw, openai.OpenAI(base_url=mock_url, api_key=CLIENT_KEY, max_retries=0) as direct:
        def chunks(client: openai.OpenAI, **extra: Any) -> list[dict[str, Any]]:
            with client.chat.completions.create(**CHAT, stream=True, **extra) as stream:
                return [c.model_dump(exclude_unset=True) for c in stream]

        plain = chunks(gw)
        assert plain == chunks(direct)
        assert len(plain) > 3 and all(c["choices"] for c in plain)
        assert not any("usage" in c for c in plain)
        with_usage = chunks(gw, stream_options={"include_usage": True})
        assert with_usage == chunks(direct, stream_options={"include_usage": True})
        assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["total_tokens"] > 0
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in plain) == \
            "".join(c["choices"][0]["delta"].get("content") or "" for c in with_usage[:-1])
        rows = via.rows(expect=2)
        assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
            (with_usage[-1]["usage"]["prompt_tokens"], with_usage[-1]["usage"]["completion_tokens"])] * 2


def test_sdk_async(via: Gateway, mock_url: str) -> None:
    async def run(base_url: str) -> list[Any]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=15) as client:
            chat, emb, models = await asyncio.gather(
                client.chat.completions.create(**CHAT),
                client.embeddings.create(model="text-embedding-3-large", input="tide", dimensions=8),
                client.models.list(),
            )
            stream = await client.chat.completions.create(**CHAT, stream=True,
                                                          stream_options={"include_usage": True})
            chunks = [c.model_dump() async for c in stream]
            return [chat.model_dump(), emb.model_dump(), [m.model_dump() for m in models.data], chunks]

    got, want = asyncio.run(run(via.url)), asyncio.run(run(mock_url))
    assert got == want
    assert got[3][-1]["usage"]["completion_tokens"] == got[0]["usage"]["completion_tokens"]
    rows = via.rows(expect=4)
    assert sorted(r["endpoint"] for r in rows) == ["/v1/chat/completions", "/v1/chat/completions",
                                                   "/v1/embeddings", "/v1/models"]


# --- what reaches the upstream -------------------------------------------------------------------

def _echo(reply: Any) -> dict[str, Any]:
    assert reply.status == 200, reply.body
    return json.loads(reply.body)


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "/v1/files?purpose=batch&limit=2&after=file-abc"),
    ("GET", "/v1/anything/at/all?q=1%2B1&amp=a%26b&slash=%2F&tilde=%7E&space=a%20b&plus=a+b&empty=&flag"),
    ("DELETE", "/v1/files/file-abc"),
    ("GET", "/v1/files/a%2Fb/content?x=%3D%3D"),
    ("PATCH", "/v1/some/new/endpoint?dry_run=true"),
    ("PUT", "/v1/x/y"),
], ids=["files-list", "encoded-query", "delete", "encoded-path", "patch", "put"])
def test_path_query_method_and_body_forwarded_untouched(gateway: Callable[..., Gateway], echo: str, method: str,
                                                         target: str) -> None:
    gw = gateway(echo)
    body = b'{"weird": "\\u00e9 \xc3\xa9",  "n": 1}\n' if method in ("PATCH", "PUT") else b""
    got = _echo(fetch(method, gw.root + target, data=body or None,
                      headers={"Content-Type": "application/json"} if body else None))
    path, _, query = target.partition("?")
    assert (got["method"], got["path"], got["query"]) == (method, path, query)
    assert base64.b64decode(got["body_b64"]) == body


def test_headers_forwarded_and_credentials_replaced(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    reply = fetch("POST", gw.url + "/chat/completions", data=json.dumps(CHAT).encode(), headers={
        "Content-Type": "application/json",
        "OpenAI-Organization": "org-123",
        "OpenAI-Beta": "assistants=v2",
        "X-Stainless-Lang": "python",
        "x-mock-fault": "500;times=0",
        "x-mock-latency": "ttft_ms=0",
        "x-oaigate-debug": "1",
        "Connection": "keep-alive, X-Hop-Private",
        "X-Hop-Private": "drop me",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "api-key": "azure-style-client-key",
        "Cookie": "session=1",
    })
    got = _echo(reply)
    headers = echoed_headers(got)
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the upstream key, not the client's
    assert CLIENT_KEY not in json.dumps(got) and "azure-style-client-key" not in json.dumps(got)
    for name in ("openai-beta", "x-stainless-lang", "x-mock-fault", "x-mock-latency"):
        assert name in headers, name
    assert headers["x-mock-fault"] == "500;times=0"
    for name in ("x-oaigate-debug", "x-hop-private", "keep-alive", "te", "proxy-authorization", "api-key",
                 "cookie", "openai-organization"):  # the org the upstream key bills is config's (test_headers)
        assert name not in headers, name
    assert headers.get("connection", "keep-alive").lower() == "keep-alive"  # the gateway's own, not the client's
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(json.dumps(CHAT).encode())
    # the upstream's request id and rate-limit headers come back; the upstream key does not
    assert reply.headers["x-request-id"] == "req_echo_1"
    assert reply.headers["x-ratelimit-remaining-requests"] == "499"
    assert UPSTREAM_KEY not in str(reply.headers)
    _overhead(reply.headers)
    (row,) = gw.rows(expect=1)
    assert row["upstream_request_id"] == "req_echo_1"


def test_pass_through_forwards_the_client_key(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, upstream={"pass_through": True})
    headers = echoed_headers(_echo(fetch("GET", gw.url + "/models", key="sk-the-clients-own")))
    assert headers["authorization"] == "Bearer sk-the-clients-own"
    assert UPSTREAM_KEY not in json.dumps(headers)


def test_no_upstream_key_sends_no_authorization(gateway: Callable[..., Gateway], echo: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPSTREAM_KEY_ENV)
    gw = gateway(echo)  # e.g. a local vLLM or Ollama that wants no key
    headers = echoed_headers(_echo(fetch("GET", gw.url + "/models")))
    assert "authorization" not in headers


# --- files: multipart upload, binary download ------------------------------------------------------

def _boundary(headers: dict[str, str]) -> str:
    match = re.fullmatch(r"multipart/form-data; boundary=(\S+)", headers["content-type"])
    assert match, headers["content-type"]
    return match.group(1)


def test_sdk_file_upload_body_arrives_unchanged(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    content = b'{"custom_id": "r1"}\r\n' + BINARY + b"\r\n--not-a-boundary--\r\n"
    received = []
    for base_url in (gw.url, echo):
        with openai.OpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0) as client:
            raw = client.files.with_raw_response.create(file=("batch.jsonl", content, "application/jsonl"),
                                                        purpose="batch")
            got = json.loads(raw.http_response.content)
        headers = echoed_headers(got)
        body = base64.b64decode(got["body_b64"])
        assert int(headers["content-length"]) == len(body)
        assert got["path"] == "/v1/files" and got["method"] == "POST"
        received.append(body.replace(_boundary(headers).encode(), b"BOUNDARY"))
    through, direct = received
    assert content in through
    assert through == direct


def test_raw_multipart_upload_is_byte_identical(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="b.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + BINARY * 64 + b"\r\n--XyZ--\r\n")
    got = _echo(fetch("POST", gw.url + "/files", data=body,
                      headers={"Content-Type": "multipart/form-data; boundary=XyZ"}))
    assert base64.b64decode(got["body_b64"]) == body
    assert echoed_headers(got)["content-type"] == "multipart/form-data; boundary=XyZ"


def test_binary_download_relayed_unchanged(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    with gw.client() as client:
        assert client.files.content("file-binary").content == BINARY
    reply = fetch("GET", gw.url + "/files/file-binary/content")
    assert reply.status == 200 and reply.body == BINARY
    assert reply.headers["Content-Type"] == "application/octet-stream"
    _overhead(reply.headers)
    rows = gw.rows(expect=2)
    assert [r["status"] for r in rows] == [200, 200]
    assert all(r["usage_source"] is None and r["cost_microusd"] is None for r in rows)


# --- overhead header, health and metrics ---------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_overhead_header_on_every_response(gateway: Callable[..., Gateway], mock_url: str) -> None:
    gw = gateway(mock_url)
    replies = {
        "json": fetch("POST", gw.url + "/chat/completions", json=CHAT),
        "stream": fetch("POST", gw.url + "/chat/completions", json={**CHAT, "stream": True}),
        "upstream-error": fetch("GET", gw.url + "/models/nope"),
        "no-key": fetch("GET", gw.url + "/models", key=None),
        "not-v1": fetch("GET", gw.root + "/v2/models"),
    }
    assert [r.status for r in replies.values()] == [200, 200, 404, 401, 404]
    for name, reply in replies.items():
        assert _overhead(reply.headers) < 1000, name
    unreachable = gateway(f"http://127.0.0.1:{_closed_port()}/v1", upstream={"max_retries": 0})
    reply = fetch("GET", unreachable.url + "/models")
    assert reply.status == 502
    assert json.loads(reply.body)["error"]["code"] == "upstream_error"
    _overhead(reply.headers)
    (row,) = unreachable.rows(expect=1)
    assert row["status"] == 502 and row["error_type"] == "upstream_error"
    assert row["overhead_ms"] == pytest.approx(float(reply.headers[OVERHEAD]), abs=0.002)


def test_healthz_and_metrics(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    health = fetch("GET", gw.root + "/healthz", key=None)
    assert health.status == 200 and health.headers["Content-Type"].startswith("application/json")
    body = json.loads(health.body)
    assert body["status"] == "ok" and body["service"] == "oaigate" and body["upstream"] == "mock"
    assert body["ledger"]["dropped"] == 0
    before = fetch("GET", gw.root + "/metrics", key=None)
    assert before.status == 200 and before.headers["Content-Type"].startswith("text/plain")
    assert b"oaigate_requests_total{" not in before.body
    with gw.client() as client:
        client.chat.completions.create(**CHAT)
        client.chat.completions.create(**CHAT)
    gw.rows(expect=2)
    text = fetch("GET", gw.root + "/metrics", key=None).body.decode()
    key = gw.rows()[0]["key_name"]
    assert (f'oaigate_requests_total{{endpoint="/v1/chat/completions",key="{key}",model="gpt-4o-mini",'
            f'status="200"}} 2.0') in text
    assert re.search(r'oaigate_tokens_total\{key="anon-[0-9a-f]+",kind="completion",model="gpt-4o-mini"\} [1-9]',
                     text)
    assert re.search(r'oaigate_cost_usd_total\{key="anon-[0-9a-f]+",model="gpt-4o-mini"\} [0-9.e-]+', text)
    assert "oaigate_cost_usd_total 0.0" not in text
    assert gw.healthz()["ledger"]["written"] == 2


# --- streaming is relayed as it arrives ----------------------------------------------------------

SEPARATORS = {"lf": b"\n\n", "crlf": b"\r\n\r\n", "cr": b"\r\r"}
PIECES = ["first", " second", " third"]


def _other_server_stream(separator: bytes, release: asyncio.Event | None = None,
                         state: dict[str, bool] | None = None) -> web.Application:
    """An OpenAI-compatible server that is not OpenAI: `json.dumps` spacing (`"usage": null`), a
    configurable event separator (sse-starlette, used by llama-cpp-python, ends events with CRLF CRLF),
    and `stream_options.include_usage` honoured. With `release`, it waits after the first chunk."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, piece in enumerate(PIECES):
            chunk: dict[str, Any] = {"id": "chatcmpl-other", "object": "chat.completion.chunk", "created": 1,
                                     "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": piece},
                                                                          "finish_reason": None}]}
            if include_usage:
                chunk["usage"] = None
            await response.write(b"data: " + json.dumps(chunk).encode() + separator)
            if i == 0 and release is not None:
                await release.wait()  # set by the test once the client holds the first chunk
        if state is not None:
            state["finished"] = True  # set before the client can see the end of the stream
        if include_usage:
            usage = {"id": "chatcmpl-other", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                     "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}
            await response.write(b"data: " + json.dumps(usage).encode() + separator)
        await response.write(b"data: [DONE]" + separator)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("separator", SEPARATORS.values(), ids=SEPARATORS.keys())
def test_first_stream_chunk_reaches_client_before_upstream_finishes(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread], separator: bytes) -> None:
    release = asyncio.Event()
    state = {"finished": False}
    server = upstream(_other_server_stream(separator, release, state))
    gw = gateway(server.url + "/v1")
    try:
        with gw.client(timeout=10.0) as client, client.chat.completions.create(**CHAT, stream=True) as stream:
            chunks = iter(stream)
            first = next(chunks)  # would time out if the gateway held the chunk until the stream ended
            assert first.choices[0].delta.content == "first"
            assert state["finished"] is False
            server.call(release.set)
            rest = list(chunks)
        assert [c.choices[0].delta.content for c in rest] == PIECES[1:]
        assert state["finished"] is True
    finally:
        server.call(release.set)
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == \
        (200, "reported", 11, 3)


@pytest.mark.parametrize("separator", SEPARATORS.values(), ids=SEPARATORS.keys())
def test_added_usage_is_stripped_from_other_servers_streams(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread], separator: bytes) -> None:
    url = upstream(_other_server_stream(separator)).url + "/v1"
    gw = gateway(url)
    body = {**CHAT, "stream": True}
    direct = fetch("POST", url + "/chat/completions", json=body)
    through = fetch("POST", gw.url + "/chat/completions", json=body)
    assert b'"usage"' not in direct.body and direct.body.endswith(b"data: [DONE]" + separator)
    assert through.body == direct.body
    asked = fetch("POST", gw.url + "/chat/completions", json={**body, "stream_options": {"include_usage": True}})
    assert asked.body == fetch("POST", url + "/chat/completions",
                               json={**body, "stream_options": {"include_usage": True}}).body
    assert asked.body.count(b'"usage": null') == len(PIECES)  # what the client asked for stays untouched
    rows = gw.rows(expect=2)
    assert [(r["usage_source"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [("reported", 11, 3)] * 2


def test_client_leaving_mid_stream_closes_the_upstream_request(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread],
        caplog: pytest.LogCaptureFixture) -> None:
    """...and is no error of the gateway's: a client may hang up whenever it likes (no ERROR, no traceback)."""
    release = asyncio.Event()
    upstream_cut = threading.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_event("first"))
        await release.wait()
        try:
            for _ in range(100_000):  # until the gateway hangs up on us
                await response.write(_event(" more"))
                await asyncio.sleep(0)
        except ConnectionError:
            upstream_cut.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    server = upstream(app)
    gw = gateway(server.url + "/v1")

    async def leave_after_first_event() -> bytes:
        async with aiohttp.ClientSession() as session:
            response = await session.post(gw.url + "/chat/completions", json={**CHAT, "stream": True},
                                          headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            first = await response.content.readuntil(b"\n\n")
            response.close()  # the client goes away mid-stream
            return first

    try:
        assert asyncio.run(leave_after_first_event()).startswith(b"data: ")
        server.call(release.set)
        assert upstream_cut.wait(10), "the upstream request kept running after the client left"
    finally:
        server.call(release.set)
    (row,) = gw.rows(expect=1)
    assert row["error_type"] == "client_disconnected" and row["attempts"] == 1
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


def test_a_client_that_leaves_after_the_last_event_completed_its_request(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> None:
    """SDKs close the connection once they have `[DONE]`; if the upstream has not closed its side by
    then, that is not an abandoned stream."""
    release = asyncio.Event()

    async def lingering(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_event("all of it") + b"data: [DONE]\n\n")
        await release.wait()  # the upstream keeps its side open until the client has gone
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", lingering)
    server = upstream(app)
    gw = gateway(server.url + "/v1")

    async def leave_after_done() -> bytes:
        async with aiohttp.ClientSession() as session:
            response = await session.post(gw.url + "/chat/completions", json={**CHAT, "stream": True},
                                          headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            received = b""
            while not received.endswith(b"data: [DONE]\n\n"):
                received += await response.content.readuntil(b"\n\n")
            response.close()
            return received

    try:
        assert b"all of it" in asyncio.run(leave_after_done())
    finally:
        server.call(release.set)  # now the gateway finds its client gone when it finishes the response
    (row,) = gw.rows(expect=1)
    assert (row["status"], row["error_type"], row["completion_tokens"]) == (200, None, 3)


def _event(content: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_usage_stripper_on_any_chunking(mock_url: str, size: int) -> None:
    body = {**CHAT, "stream": True, "n": 2}
    plain = fetch("POST", mock_url + "/chat/completions", json=body).body
    with_usage = fetch("POST", mock_url + "/chat/completions",
                       json={**body, "stream_options": {"include_usage": True}}).body
    assert with_usage.count(b'"usage":null') > 4 and with_usage != plain
    stripper = StreamUsageStripper()
    out = b"".join(stripper.feed(with_usage[i:i + size]) for i in range(0, len(with_usage), size))
    assert out + stripper.flush() == plain


# --- secrets ---------------------------------------------------------------------------------------

def test_upstream_key_never_reaches_clients_or_disk(gateway: Callable[..., Gateway], mock_url: str) -> None:
    bodies: list[bytes] = []
    gw = gateway(mock_url, ledger={"log_bodies": True}, upstream={"max_retries": 0})
    with gw.client() as client:
        client.chat.completions.create(**CHAT)
        with pytest.raises(openai.NotFoundError) as err:
            client.models.retrieve("nope")
        bodies.append(err.value.response.content)
    bodies.append(fetch("POST", gw.url + "/chat/completions", json={"model": "gpt-4o-mini"}).body)
    bodies.append(fetch("GET", gw.url + "/models", key=None).body)
    dead = gateway(f"http://127.0.0.1:{_closed_port()}/v1", ledger={"log_bodies": True},
                   upstream={"max_retries": 0})
    bodies.append(fetch("POST", dead.url + "/chat/completions", json=CHAT).body)
    assert all(b'"error"' in b for b in bodies), bodies
    for b in bodies:
        assert UPSTREAM_KEY.encode() not in b
    rows = gw.rows(expect=4) + dead.rows(expect=1)
    assert len(rows) == 5 and any(r["request_body"] for r in rows)  # bodies were logged, keys were not
    for g in (gw, dead):
        g.stop()
        files = sorted(g.db.parent.glob(g.db.name + "*"))
        assert files
        for path in files:
            data = path.read_bytes()
            assert UPSTREAM_KEY.encode() not in data and CLIENT_KEY.encode() not in data, path


def test_an_upstream_that_compresses_anyway_is_relayed_decodable_and_metered(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> None:
    """The gateway asks for identity; an upstream that gzips regardless must not reach the client as
    undecodable bytes, and its usage still counts."""
    import gzip

    body = json.dumps({"id": "chatcmpl-gz", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "zipped"}}],
                       "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}).encode()

    async def compressing(request: web.Request) -> web.Response:
        assert request.headers["Accept-Encoding"] == "identity"
        return web.Response(body=gzip.compress(body), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", compressing)
    gw = gateway(upstream(app).url + "/v1")
    with gw.client() as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "zipped"
    [row] = gw.rows(expect=1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (11, 3, "reported")


@pytest.mark.parametrize("size", [1000, 9 * 1024 * 1024], ids=["small", "over-the-read-whole-limit"])
def test_a_json_answer_without_a_length_is_relayed_whole(gateway: Callable[..., Any],
                                                          upstream: Callable[[web.Application], ServerThread],
                                                          size: int) -> None:
    """Read whole (up to READ_WHOLE_LIMIT) so the stages see it first; past the limit, relayed as it comes."""
    body = json.dumps({"object": "list", "data": [], "pad": "x" * size}).encode()

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start:start + 65536])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/files", chunked)
    gw = gateway(upstream(app).url + "/v1")
    reply = fetch("GET", gw.url + "/files")
    assert reply.status == 200 and reply.body == body


@pytest.mark.parametrize("path", ["/v1//chat/completions", "/v1/chat//completions", "/v1/chat/completions/",
                                  "/v1/./chat/completions", "/v1/chat/completions%2F", "/v1/CHAT/completions",
                                  "/v1/chat/Completions", "/v1/Embeddings", "/v1/chat/%2e%2e/completions"])
def test_odd_spellings_of_an_endpoint_are_404_not_unbudgeted(gateway: Callable[..., Any],
                                                              upstream: Callable[[web.Application], ServerThread],
                                                              path: str) -> None:
    """An upstream (or nginx before it) may resolve `//`, `.` or case to the endpoint: the gateway would then
    skip its estimate and budget (found in review). OpenAI answers such paths 404; so does the gateway."""
    reached: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.json_response({"usage": {"prompt_tokens": 10_000, "completion_tokens": 10_000}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    gw = gateway(upstream(app).url + "/v1", limits={"budget_usd": 0.000001})
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert fetch("POST", gw.url + "/chat/completions", json=body).status == 429  # the real spelling: refused
    reply = fetch("POST", gw.root + path, json=body)
    assert reply.status == 404 and json.loads(reply.body)["error"]["message"].startswith("Invalid URL"), reply.body
    assert reached == []


def test_ids_keep_their_case(gateway: Callable[..., Any]) -> None:
    gw = gateway()
    with gw.client() as client:
        made = client.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch")
        assert client.files.retrieve(made.id).id == made.id
    assert fetch("GET", gw.url + "/files/file-NotThere").status == 404
