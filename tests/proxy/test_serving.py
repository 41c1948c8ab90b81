"""`oaigate serve` as a real process, guarding its connections: header read timeout (slowloris), a
connection cap, and one shutdown grace in total with the cut rows marked `shutdown`. Raw sockets for
the misbehaving clients, the OpenAI SDK for the well-behaved ones, SIGTERM for the stop."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from aiohttp import web

from tests.servers import ServerThread

from .conftest import read_rows
from .processes import MOCK_CONFIG, Serve

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "One word, please."}], "max_tokens": 5}
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-raw\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")


def _start(serve: Callable[..., Serve], tmp_path: Path, server: str, *extra: str) -> tuple[Serve, str]:
    config = tmp_path / "oaigate.toml"
    config.write_text(MOCK_CONFIG + "\n[server]\n" + server + "\n")
    process = serve("--port", "0", "--db", str(tmp_path / "ledger.db"), "--config", str(config), *extra)
    url = process.ready_url()
    return process, url


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
    return host, int(port)


def _sdk_call(url: str) -> str:
    with openai.OpenAI(base_url=url, api_key="sk-serving", max_retries=0, timeout=15) as client:
        return client.chat.completions.create(**CHAT).choices[0].message.content or ""


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Reads until the server closes the connection (True) or `seconds` pass (False)."""
    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def test_slow_or_silent_headers_are_cut_but_keep_alive_and_sdks_are_not(serve: Callable[..., Serve],
                                                                       tmp_path: Path) -> None:
    process, url = _start(serve, tmp_path, "header_timeout_s = 1.0")
    address = _address(url)
    silent = socket.create_connection(address)
    trickle = socket.create_connection(address)
    body = json.dumps(CHAT).encode()
    keepalive = socket.create_connection(address)
    keepalive.sendall(REQUEST % len(body) + body)
    keepalive.settimeout(10)
    first = keepalive.recv(65536)
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    try:
        started = time.monotonic()
        head = REQUEST % len(body)
        for i in range(40):  # one byte every 0.1 s: the headers would take 10 s
            try:
                trickle.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
        closed, answer = _closed_within(trickle, 5)
        assert closed and answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 6
        closed, answer = _closed_within(silent, 3)
        assert closed and answer.startswith(b"HTTP/1.1 408"), answer
        # the keep-alive connection sat idle past header_timeout_s between requests: still usable
        keepalive.sendall(REQUEST % len(body) + body)
        second = keepalive.recv(65536)
        assert second.startswith(b"HTTP/1.1 200"), second[:200]
        assert _sdk_call(url)
    finally:
        for sock in (silent, trickle, keepalive):
            sock.close()
    assert process.stop() == 0


def test_connections_past_the_cap_get_a_503_until_one_ends(serve: Callable[..., Serve], tmp_path: Path) -> None:
    process, url = _start(serve, tmp_path, "max_connections = 3\nheader_timeout_s = 30")
    address = _address(url)
    held = [socket.create_connection(address) for _ in range(3)]
    time.sleep(0.2)  # let the server register them
    try:
        extra = socket.create_connection(address)
        closed, answer = _closed_within(extra, 5)
        extra.close()
        assert closed, "a connection past max_connections was kept open"
        if answer:  # the 503 may be lost to a reset; when it arrives, it is OpenAI's envelope
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
            assert json.loads(body)["error"]["code"] == "too_many_connections"
        with pytest.raises(openai.APIError):
            _sdk_call(url)
        held.pop().close()
        time.sleep(0.2)
        assert _sdk_call(url)  # one ended: there is room again
    finally:
        for sock in held:
            sock.close()
    assert process.stop() == 0


def test_sigterm_gives_streams_one_grace_period_then_cuts_them_as_shutdown(
        serve: Callable[..., Serve], tmp_path: Path, upstream: Callable[[web.Application], ServerThread]) -> None:
    release = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await release.wait()  # never, until the test ends
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    server = upstream(app)
    grace = 2.0
    process, url = _start(serve, tmp_path, f"shutdown_grace_s = {grace}", "--upstream", server.url + "/v1")
    try:
        with openai.OpenAI(base_url=url, api_key="sk-serving", max_retries=0, timeout=30) as client, \
                client.chat.completions.create(**CHAT, stream=True) as stream:
            chunks = iter(stream)
            assert next(chunks).choices[0].delta.content == "Hello"
            started = time.monotonic()
            process.proc.send_signal(signal.SIGTERM)
            with pytest.raises(openai.APIError):
                list(chunks)
            cut_after = time.monotonic() - started
            code = process.proc.wait(30)
            exited_after = time.monotonic() - started
    finally:
        server.call(release.set)
    assert code == 0
    assert grace - 0.2 <= cut_after < 2 * grace, f"cut after {cut_after:.1f}s with a grace of {grace}s"
    assert exited_after < grace + 3, f"exited after {exited_after:.1f}s with a grace of {grace}s"
    (row,) = read_rows(tmp_path / "ledger.db")
    assert row["error_type"] == "shutdown" and row["stream"] == 1
