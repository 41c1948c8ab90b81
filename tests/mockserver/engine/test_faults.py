"""Fault and pacing injection (`x-mock-fault`, `x-mock-latency`) end to end, with no real sleeping.

Servers that pace or hang get `make_app(sleep=...)`: a recorder that notes each requested delay and
returns at once, or (for the `timeout` fault) one that blocks until the test releases it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import pytest

from mockserver.app import HANG_S, make_app
from mockserver.settings import MockSettings
from tests.openapi import requires_spec, validate, validate_sse_events
from tests.servers import ServerThread

MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "Tell me about the weather in spring."}]
CHAT = {"model": MODEL, "messages": HELLO}
BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "fault me"},
    "/v1/moderations": {"input": "fault me"},
}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


class Raw:
    """A complete HTTP/1.1 exchange over a plain socket: what arrived before the server closed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    def dechunked(self) -> bytes:
        """The body with chunked framing removed; stops at a truncated chunk."""
        out, rest = b"", self.body
        while rest:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line, 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        return out


def raw(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Raw:
    parts = urlsplit(base)
    data = b"" if body is None else json.dumps(body).encode()
    head = {"Host": "127.0.0.1", "Authorization": "Bearer sk-test", "Connection": "close",
            "Content-Length": str(len(data)), **({"Content-Type": "application/json"} if body is not None else {}),
            **(headers or {})}
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request.encode() + data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return Raw(received)


def fault_id() -> str:
    return uuid.uuid4().hex


class Recorder:
    """An injected `sleep`: records each delay; delays of at least `hang_from` block until `release()`."""

    def __init__(self, hang_from: float | None = None) -> None:
        self.delays: list[float] = []
        self.hang_from = hang_from
        self._release: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.hang_from is not None and seconds >= self.hang_from:
            self.loop = asyncio.get_running_loop()
            if self._release is None:
                self._release = asyncio.Event()
            await self._release.wait()

    def release(self) -> None:
        if self._release is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._release.set)


@pytest.fixture(scope="module")
def paced() -> Iterator[tuple[ServerThread, Recorder]]:
    recorder = Recorder()
    server = ServerThread(lambda: make_app(MockSettings(), sleep=recorder)).start()
    yield server, recorder
    server.stop()


@pytest.fixture(scope="module")
def hanging() -> Iterator[tuple[ServerThread, Recorder]]:
    recorder = Recorder(hang_from=60)
    server = ServerThread(lambda: make_app(MockSettings(), sleep=recorder)).start()
    yield server, recorder
    recorder.release()  # let held requests finish so shutdown is immediate
    server.stop()


@pytest.fixture
def fresh() -> Iterator[ServerThread]:
    """A server with an empty fault counter, for header-keyed (id-less) `times` counting."""
    server = ServerThread(lambda: make_app(MockSettings())).start()
    yield server
    server.stop()


# --- HTTP status faults ----------------------------------------------------------------------------------


def test_429_has_retry_and_rate_limit_headers(mock_server: ServerThread) -> None:
    resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": "429;retry_after_ms=2500"})
    assert resp.status == 429
    assert resp.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert resp.headers["retry-after-ms"] == "2500"
    for name in RATE_HEADERS:
        assert resp.headers[name], name
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded"
    assert "2500ms" in error["message"]


def test_429_default_retry_after_is_one_second(mock_server: ServerThread) -> None:
    resp = raw(mock_server.url, "POST", "/v1/embeddings", BODIES["/v1/embeddings"], {"x-mock-fault": "429"})
    assert resp.status == 429
    assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("1", "1000")


def test_429_raises_rate_limit_error_in_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={"x-mock-fault": "429"})
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after-ms"] == "1000"


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("503", 503)])
def test_server_error_faults(client: openai.OpenAI, mock_server: ServerThread, kind: str, status: int) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={"x-mock-fault": kind})
    assert info.value.status_code == status
    assert info.value.type == "server_error"
    resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": kind})
    assert resp.status == status
    assert resp.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("path", sorted(BODIES) + ["/v1/models"])
@pytest.mark.parametrize("kind", ["429", "500", "503"])
def test_faults_apply_on_every_endpoint(mock_server: ServerThread, path: str, kind: str) -> None:
    method, body = ("GET", None) if path == "/v1/models" else ("POST", BODIES[path])
    resp = raw(mock_server.url, method, path, body, {"x-mock-fault": kind})
    assert resp.status == int(kind)
    assert "error" in resp.json()


def test_fault_outside_v1_is_ignored(mock_server: ServerThread) -> None:
    resp = raw(mock_server.url, "GET", "/healthz", headers={"x-mock-fault": "500"})
    assert resp.status == 200


def test_auth_is_checked_before_faults(mock_server: ServerThread) -> None:
    resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT,
               {"x-mock-fault": "500", "Authorization": ""})
    assert resp.status == 401


@requires_spec
def test_fault_bodies_match_openapi(mock_server: ServerThread) -> None:
    for kind in ("429", "500", "503"):
        resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": kind})
        validate("ErrorResponse", resp.json())


# --- times / id ---------------------------------------------------------------------------------------------


def test_times_with_id_fails_exactly_the_first_n(mock_server: ServerThread) -> None:
    ident = fault_id()
    header = {"x-mock-fault": f"429;times=2;id={ident}"}
    statuses = [raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, header).status for _ in range(4)]
    assert statuses == [429, 429, 200, 200]


def test_ids_count_separately_and_across_endpoints(mock_server: ServerThread) -> None:
    a, b = fault_id(), fault_id()
    assert raw(mock_server.url, "POST", "/v1/embeddings", BODIES["/v1/embeddings"],
               {"x-mock-fault": f"500;times=1;id={a}"}).status == 500
    # b has its own count; a's one failure is used up, even on another endpoint and kind
    assert raw(mock_server.url, "POST", "/v1/moderations", BODIES["/v1/moderations"],
               {"x-mock-fault": f"503;times=1;id={b}"}).status == 503
    assert raw(mock_server.url, "POST", "/v1/moderations", BODIES["/v1/moderations"],
               {"x-mock-fault": f"503;times=1;id={a}"}).status == 200
    assert raw(mock_server.url, "POST", "/v1/embeddings", BODIES["/v1/embeddings"],
               {"x-mock-fault": f"503;times=1;id={b}"}).status == 200


def test_times_zero_never_fails(mock_server: ServerThread) -> None:
    header = {"x-mock-fault": f"500;times=0;id={fault_id()}"}
    assert raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, header).status == 200


def test_times_without_id_counts_by_kind_and_times(fresh: ServerThread) -> None:
    one = {"x-mock-fault": "500;times=1"}
    two = {"x-mock-fault": "503;times=2"}
    two_other_wait = {"x-mock-fault": "503;times=2;retry_after_ms=5"}  # same kind and N: same count
    got = [raw(fresh.url, "POST", "/v1/chat/completions", CHAT, h).status
           for h in (one, two, one, two_other_wait, two)]
    assert got == [500, 503, 200, 503, 200]


def test_sdk_retries_through_times_2(mock_url: str) -> None:
    header = {"x-mock-fault": f"429;times=2;id={fault_id()};retry_after_ms=1"}
    with openai.OpenAI(base_url=mock_url, api_key="sk-test", max_retries=3) as c:
        raw_resp = c.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, extra_headers=header)
        completion = raw_resp.parse()
    assert raw_resp.retries_taken == 2
    assert raw_resp.status_code == 200
    assert completion.choices[0].message.content


def test_sdk_gives_up_when_retries_are_fewer_than_failures(mock_url: str) -> None:
    header = {"x-mock-fault": f"429;times=2;id={fault_id()};retry_after_ms=1"}
    with openai.OpenAI(base_url=mock_url, api_key="sk-test", max_retries=1) as c:
        with pytest.raises(openai.RateLimitError):
            c.embeddings.create(model="text-embedding-3-small", input="x", extra_headers=header)
        # the two failures are used up: the next call goes through
        assert c.embeddings.create(model="text-embedding-3-small", input="x", extra_headers=header).data


def test_async_sdk_retries_through_times(mock_url: str) -> None:
    header = {"x-mock-fault": f"429;times=1;id={fault_id()};retry_after_ms=1"}

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=2) as c:
            return await c.moderations.with_raw_response.create(input="hello", extra_headers=header)

    resp = asyncio.run(run())
    assert resp.retries_taken == 1
    assert resp.parse().results[0].flagged is False


# --- disconnect -----------------------------------------------------------------------------------------------


def test_disconnect_cuts_a_stream_midway_raw(mock_server: ServerThread) -> None:
    body = {**CHAT, "stream": True}
    full = raw(mock_server.url, "POST", "/v1/chat/completions", body)
    cut = raw(mock_server.url, "POST", "/v1/chat/completions", body, {"x-mock-fault": "disconnect"})
    assert full.status == cut.status == 200
    assert full.body.endswith(b"0\r\n\r\n")  # a complete chunked body
    assert not cut.body.endswith(b"0\r\n\r\n")
    complete = full.dechunked()
    partial = cut.dechunked()
    assert b"data: [DONE]" in complete and b"data: [DONE]" not in partial
    assert complete.startswith(partial)  # what did arrive is the same stream
    events = partial.count(b"\n\ndata: ") + 1
    assert 2 <= events < complete.count(b"data: ") - 1  # midway: neither at once nor at the end


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_disconnect_stream_sdk_raises_connection_error(client: openai.OpenAI, path: str) -> None:
    received = []
    with pytest.raises((openai.APIConnectionError, httpx2.TransportError)) as info:
        if path == "/v1/chat/completions":
            stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True,
                                                    extra_headers={"x-mock-fault": "disconnect"})
        else:
            stream = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time",
                                               stream=True, extra_headers={"x-mock-fault": "disconnect"})
        with stream:
            for chunk in stream:
                received.append(chunk)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert received  # some chunks arrived before the cut


def test_disconnect_stream_async_sdk(mock_url: str) -> None:
    async def run() -> int:
        count = 0
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as c:
            stream = await c.chat.completions.create(model=MODEL, messages=HELLO, stream=True,
                                                     extra_headers={"x-mock-fault": "disconnect"})
            async with stream:
                with pytest.raises((openai.APIConnectionError, httpx2.TransportError)):
                    async for _ in stream:
                        count += 1
        return count

    assert asyncio.run(run()) > 0


def test_disconnect_non_stream_is_a_connection_error(client: openai.OpenAI, mock_server: ServerThread) -> None:
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={"x-mock-fault": "disconnect"})
    assert not isinstance(info.value, openai.APITimeoutError)
    resp = raw(mock_server.url, "POST", "/v1/embeddings", BODIES["/v1/embeddings"], {"x-mock-fault": "disconnect"})
    assert resp.data == b""  # the connection dropped before any byte of a response


def test_disconnect_times_then_the_stream_completes(client: openai.OpenAI) -> None:
    header = {"x-mock-fault": f"disconnect;times=1;id={fault_id()}"}
    with pytest.raises(openai.APIConnectionError):
        with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, extra_headers=header) as s:
            for _ in s:
                pass
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, extra_headers=header) as s:
        text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text == client.chat.completions.create(model=MODEL, messages=HELLO).choices[0].message.content


# --- timeout -----------------------------------------------------------------------------------------------


def test_timeout_fault_makes_the_sdk_time_out(hanging: tuple[ServerThread, Recorder]) -> None:
    server, recorder = hanging
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0, timeout=0.2) as c:
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={"x-mock-fault": "timeout"})
    assert HANG_S in recorder.delays  # the server meant to hold the request far longer than the client waits


def test_timeout_fault_async_sdk(hanging: tuple[ServerThread, Recorder]) -> None:
    server, _ = hanging

    async def run() -> None:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0,
                                      timeout=0.2) as c:
            await c.embeddings.create(model="text-embedding-3-small", input="x",
                                      extra_headers={"x-mock-fault": "timeout"})

    with pytest.raises(openai.APITimeoutError):
        asyncio.run(run())


def test_timeout_fault_answers_504_once_the_hold_ends(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    resp = raw(server.url, "POST", "/v1/chat/completions", CHAT, {"x-mock-fault": "timeout"})
    assert recorder.delays == [HANG_S]
    assert resp.status == 504
    assert resp.json()["error"]["type"] == "server_error"


# --- malformed headers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-mock-fault", "418"),
        ("x-mock-fault", ""),
        ("x-mock-fault", "Disconnect"),
        ("x-mock-fault", "429;times=two"),
        ("x-mock-fault", "429;times=-1"),
        ("x-mock-fault", "429;times=1.5"),
        ("x-mock-fault", "429;retry_after_ms=-5"),
        ("x-mock-fault", "429;color=red"),
        ("x-mock-fault", "429;times"),
        ("x-mock-latency", "fast"),
        ("x-mock-latency", "ttft_ms=abc"),
        ("x-mock-latency", "ttft_ms=-1"),
        ("x-mock-latency", "ttft_ms=10;speed=3"),
    ],
)
def test_malformed_headers_are_400(mock_server: ServerThread, client: openai.OpenAI, header: str, value: str) -> None:
    resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT, {header: value})
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == header
    assert header in error["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers={header: value})


def test_whitespace_in_headers_is_tolerated(mock_server: ServerThread) -> None:
    resp = raw(mock_server.url, "POST", "/v1/chat/completions", CHAT,
               {"x-mock-fault": " 429 ; retry_after_ms = 7 ", "x-mock-latency": " ttft_ms=0 ; chunk_ms=0 "})
    assert resp.status == 429
    assert resp.headers["retry-after-ms"] == "7"


# --- pacing -------------------------------------------------------------------------------------------------------


def sse_events(data: bytes) -> list[bytes]:
    return [e for e in data.split(b"\n\n") if e.strip()]


def test_stream_pacing_ttft_then_chunk_ms_per_chunk(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    body = {**CHAT, "stream": True}
    resp = raw(server.url, "POST", "/v1/chat/completions", body, {"x-mock-latency": "ttft_ms=250;chunk_ms=40"})
    assert resp.status == 200
    events = sse_events(resp.dechunked())
    assert len(events) > 5
    assert recorder.delays == [0.25] + [0.04] * (len(events) - 1)


def test_stream_pacing_sdk_and_completions(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        with c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", stream=True,
                                  extra_headers={"x-mock-latency": "chunk_ms=5"}) as stream:
            chunks = list(stream)
    # no ttft given: no initial delay; one chunk_ms before every event after the first (incl. [DONE])
    assert recorder.delays == [0.005] * len(chunks)


def test_non_stream_pacing_matches_streaming_time(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    header = {"x-mock-latency": "ttft_ms=100;chunk_ms=10"}
    recorder.delays.clear()
    stream = raw(server.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, header)
    chunk_objects = [e for e in sse_events(stream.dechunked()) if e != b"data: [DONE]"]
    recorder.delays.clear()
    plain = raw(server.url, "POST", "/v1/chat/completions", CHAT, header)
    assert plain.status == 200
    # one sleep, as long as sending every chunk object of the equivalent stream would take
    assert recorder.delays == [pytest.approx(0.1 + 0.01 * (len(chunk_objects) - 1))]


def test_pacing_on_embeddings_is_ttft_only(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    resp = raw(server.url, "POST", "/v1/embeddings", BODIES["/v1/embeddings"],
               {"x-mock-latency": "ttft_ms=30;chunk_ms=1000"})
    assert resp.status == 200
    assert recorder.delays == [0.03]


def test_pacing_on_models(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    assert raw(server.url, "GET", "/v1/models", headers={"x-mock-latency": "ttft_ms=20"}).status == 200
    assert raw(server.url, "GET", "/v1/models/gpt-4o", headers={"x-mock-latency": "ttft_ms=20"}).status == 200
    assert recorder.delays == [0.02, 0.02]


def test_no_pacing_header_no_sleep(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    for path, body in BODIES.items():
        assert raw(server.url, "POST", path, {**body, "stream": True} if "completions" in path else body).status == 200
    assert recorder.delays == []


def test_zero_latency_no_sleep(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    resp = raw(server.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True},
               {"x-mock-latency": "ttft_ms=0;chunk_ms=0"})
    assert resp.status == 200
    assert recorder.delays == []


def test_latency_and_fault_together(paced: tuple[ServerThread, Recorder]) -> None:
    server, recorder = paced
    recorder.delays.clear()
    ident = fault_id()
    headers = {"x-mock-fault": f"503;times=1;id={ident}", "x-mock-latency": "ttft_ms=10"}
    assert raw(server.url, "POST", "/v1/moderations", BODIES["/v1/moderations"], headers).status == 503
    assert raw(server.url, "POST", "/v1/moderations", BODIES["/v1/moderations"], headers).status == 200
    assert recorder.delays == [0.01]  # only the answered request was paced


@requires_spec
def test_paced_stream_is_still_valid_sse(paced: tuple[ServerThread, Recorder]) -> None:
    server, _ = paced
    resp = raw(server.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True},
               {"x-mock-latency": "ttft_ms=1;chunk_ms=1"})
    chunks = validate_sse_events("CreateChatCompletionStreamResponse", resp.dechunked())
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
