"""What clients send: the key is checked before the body is read; size limits (413), encodings
(decoded, or 415), an idle timeout on the body (408), bodies nested too deeply to re-serialize (400),
large uploads relayed as they arrive (and never re-sent once started), memory flat whatever the size."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.servers import ServerThread

from .conftest import (
    CLIENT_KEY,
    UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    Gateway,
    SleepRecorder,
    echoed_headers,
    fetch,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}
KEYS = [{"name": "dev", "key": CLIENT_KEY}]
MiB = 1024 * 1024
BOUNDARY = "testboundary5f3c9a"


def envelope(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    return error


# --- raw HTTP over a socket, for clients that lie or dawdle ------------------------------------------

def raw(gw: Gateway, path: str, headers: dict[str, str], parts: list[bytes | float], *,
        timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send a request line and `headers`, then `parts` (bytes are sent, floats are pauses), and read
    the answer; the socket's timeout bounds every wait."""
    url = URL(gw.root)
    with socket.create_connection((url.host, url.port), timeout=timeout) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        for part in parts:
            if isinstance(part, float):
                time.sleep(part)
            else:
                try:
                    sock.sendall(part)
                except OSError:  # the gateway answered and closed: read what it said
                    break
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def multipart(content: bytes, *, name: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


async def _chunked(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def post_chunked(url: str, pieces: list[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with Transfer-Encoding: chunked (no Content-Length); a connection the gateway closes
    mid-body counts as status 0."""
    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.post(url, data=_chunked(pieces), headers={
                        "Authorization": f"Bearer {CLIENT_KEY}", **headers}) as response:
                    return response.status, await response.read()
            except aiohttp.ClientError:
                return 0, b""

    return asyncio.run(go())


# --- the key first -----------------------------------------------------------------------------------

def test_wrong_key_is_refused_before_a_byte_of_the_body_arrives(gateway: Callable[..., Gateway], echo: str) -> None:
    """A 200 MB upload announced with a wrong key: 401 at once, though the body is never sent (a
    gateway reading it first would wait for it until the socket timeout)."""
    gw = gateway(echo, keys=KEYS, server={"body_timeout_s": 60})
    status, _, body = raw(gw, "/v1/files", {"Authorization": "Bearer sk-wrong", "Content-Type": MULTIPART,
                                            "Content-Length": str(200 * MiB)}, [], timeout=10)
    assert status == 401
    assert envelope(body)["code"] == "invalid_api_key"


# --- size limits -------------------------------------------------------------------------------------

def test_content_length_over_the_json_limit_is_413_before_reading(gateway: Callable[..., Gateway],
                                                                   echo: str) -> None:
    gw = gateway(echo, server={"max_json_bytes": 1000, "body_timeout_s": 60})
    status, headers, body = raw(gw, "/v1/chat/completions", {
        "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", "Content-Length": "50000000"},
        [], timeout=10)
    assert status == 413
    error = envelope(body)
    assert error["code"] == "request_too_large" and "max_json_bytes" in error["message"]
    assert headers["x-should-retry"] == "false"


def test_chunked_json_body_is_cut_at_the_limit(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, server={"max_json_bytes": 64 * 1024})
    text = "a" * (256 * 1024)
    piece = json.dumps({**CHAT, "messages": [{"role": "user", "content": text}]}).encode()
    status, body = post_chunked(gw.url + "/chat/completions", [piece[i:i + 8192] for i in range(0, len(piece), 8192)],
                                {"Content-Type": "application/json"})
    assert status == 413, body
    assert envelope(body)["code"] == "request_too_large"
    small = json.dumps(CHAT).encode()
    status, body = post_chunked(gw.url + "/chat/completions", [small[:10], small[10:]],
                                {"Content-Type": "application/json"})
    assert status == 200 and base64.b64decode(json.loads(body)["body_b64"]) == small


def test_uploads_have_their_own_larger_limit(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, server={"max_json_bytes": 64 * 1024, "max_upload_bytes": 512 * 1024})
    upload = multipart(os.urandom(200 * 1024))
    reply = fetch("POST", gw.url + "/files", data=upload, headers={"Content-Type": MULTIPART})
    assert reply.status == 200 and base64.b64decode(json.loads(reply.body)["body_b64"]) == upload
    reply = fetch("POST", gw.url + "/files", data=multipart(b"x" * (600 * 1024)), headers={"Content-Type": MULTIPART})
    assert reply.status == 413 and "max_upload_bytes" in envelope(reply.body)["message"]


def test_a_streamed_upload_over_the_limit_is_413(gateway: Callable[..., Gateway], echo: str) -> None:
    """No Content-Length: relayed as it arrives, and cut once it passes max_upload_bytes."""
    gw = gateway(echo, server={"max_upload_bytes": 2 * MiB})
    data = multipart(b"x" * (3 * MiB))
    status, body = post_chunked(gw.url + "/files", [data[i:i + 65536] for i in range(0, len(data), 65536)],
                                {"Content-Type": MULTIPART})
    assert status == 413, body
    assert envelope(body)["code"] == "request_too_large"


# --- encodings ---------------------------------------------------------------------------------------

def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


@pytest.mark.parametrize("encoding, encode", [("gzip", gzip.compress), ("deflate", _deflate), ("GZip", gzip.compress)])
def test_compressed_body_reaches_the_upstream_decoded(gateway: Callable[..., Gateway], echo: str, encoding: str,
                                                      encode: Callable[[bytes], bytes]) -> None:
    gw = gateway(echo)
    body = json.dumps(CHAT).encode()
    reply = fetch("POST", gw.url + "/chat/completions", data=encode(body),
                  headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert reply.status == 200, reply.body
    echoed = json.loads(reply.body)
    assert base64.b64decode(echoed["body_b64"]) == body
    headers = echoed_headers(echoed)
    assert "content-encoding" not in headers and headers["content-length"] == str(len(body))


def test_gzip_body_to_the_mock_is_answered(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    reply = fetch("POST", gw.url + "/chat/completions", data=gzip.compress(json.dumps(CHAT).encode()),
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["object"] == "chat.completion"


def test_zip_bomb_hits_the_size_limit(gateway: Callable[..., Gateway], echo: str) -> None:
    """256 MiB of zeros, gzip-compressed to a few hundred KB: refused at the limit, never inflated whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    assert len(bomb) < 2 * MiB
    gw = gateway(echo, server={"max_json_bytes": MiB})
    reply = fetch("POST", gw.url + "/chat/completions", data=bomb,
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status == 413, reply.body
    assert envelope(reply.body)["code"] == "request_too_large"


@pytest.mark.parametrize("encoding", ["compress", "gzip, gzip", "x-unknown"])
def test_unknown_encoding_is_415(gateway: Callable[..., Gateway], echo: str, encoding: str) -> None:
    gw = gateway(echo)
    reply = fetch("POST", gw.url + "/chat/completions", data=b"\x00\x01garbage",
                  headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    assert reply.status == 415, reply.body
    assert envelope(reply.body)["param"] == "Content-Encoding"


def test_corrupt_gzip_is_a_400_envelope(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo)
    reply = fetch("POST", gw.url + "/chat/completions", data=b"this is not gzip at all" * 10,
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert reply.status == 400, reply.body
    envelope(reply.body)


# --- nesting deeper than the JSON writer goes ---------------------------------------------------------

DEEP = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"extra":' + b"[" * 300 + b"]" * 300


@pytest.mark.parametrize("setup, stream", [
    ({}, True),  # the gateway asks a chat stream for its usage: it re-serializes the body
    ({"aliases": {"fast": "gpt-4o-mini"}}, False),  # an alias is rewritten in the body
    ({"limits": {"budget_usd": 10}}, False),  # a budget makes the gateway set max_tokens
    ({"fixtures": {"mode": "record"}}, False),  # recording hashes the canonical body
])
def test_too_deep_json_the_gateway_must_rewrite_is_a_400(gateway: Callable[..., Gateway], echo: str,
                                                          tmp_path: Path, setup: dict[str, Any], stream: bool) -> None:
    if "fixtures" in setup:
        setup = {"fixtures": {**setup["fixtures"], "dir": str(tmp_path / "fx")}}
    gw = gateway(echo, **setup)
    body = DEEP.replace(b'"gpt-4o-mini"', b'"fast"') if "aliases" in setup else DEEP
    body = body + (b',"stream":true}' if stream else b',"max_tokens":null}')
    reply = fetch("POST", gw.url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.body
    error = envelope(reply.body)
    assert error["type"] == "invalid_request_error" and "nested" in error["message"]


def test_too_deep_json_the_gateway_need_not_rewrite_is_forwarded_untouched(gateway: Callable[..., Gateway],
                                                                            echo: str) -> None:
    gw = gateway(echo)
    body = DEEP + b',"max_tokens":5}'
    reply = fetch("POST", gw.url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 200
    assert base64.b64decode(json.loads(reply.body)["body_b64"]) == body


# --- the body's idle timeout ---------------------------------------------------------------------------

def test_content_length_longer_than_the_body_is_408(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, server={"body_timeout_s": 0.5})
    status, headers, body = raw(gw, "/v1/chat/completions", {
        "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", "Content-Length": "1000"},
        [b'{"model": "gpt-4o-mini"'])
    assert status == 408
    assert envelope(body)["code"] == "request_timeout"
    assert headers.get("connection", "").lower() == "close"


def test_a_slow_but_steady_body_is_not_cut(gateway: Callable[..., Gateway], echo: str) -> None:
    """The timeout is between pieces, not for the whole body: five pieces 0.25 s apart pass a 1 s timeout."""
    gw = gateway(echo, server={"body_timeout_s": 1.0})
    body = json.dumps(CHAT).encode()
    pieces = [body[i * len(body) // 5:(i + 1) * len(body) // 5] for i in range(5)]
    parts: list[bytes | float] = [p for piece in pieces for p in (0.25, piece)]
    status, _, reply = raw(gw, "/v1/chat/completions", {
        "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json",
        "Content-Length": str(len(body))}, parts)
    assert status == 200
    assert base64.b64decode(json.loads(reply)["body_b64"]) == body


def test_a_streamed_upload_that_stalls_is_408(gateway: Callable[..., Gateway], echo: str) -> None:
    gw = gateway(echo, server={"body_timeout_s": 0.5})
    data = multipart(b"x" * (2 * MiB))
    status, _, body = raw(gw, "/v1/files", {
        "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": MULTIPART, "Content-Length": str(len(data))},
        [data[:100_000]])
    assert status == 408, body
    assert envelope(body)["code"] == "request_timeout"


# --- large uploads relayed as they arrive ---------------------------------------------------------------

def test_a_large_upload_reaches_the_upstream_before_the_client_has_sent_it_all(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> None:
    """The client sends the rest of its upload only once the upstream has the first part: a gateway
    that read the body whole first would never get there."""
    arrived = threading.Event()
    received: list[int] = []

    async def files(request: web.Request) -> web.Response:
        size = 0
        async for data in request.content.iter_any():
            size += len(data)
            if size >= MiB:
                arrived.set()
        received.append(size)
        return web.json_response({"id": "file-1", "object": "file", "bytes": size})

    app = web.Application()
    app.router.add_post("/v1/files", files)
    gw = gateway(upstream(app).url + "/v1")
    data = multipart(b"y" * (4 * MiB))
    waited: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield data[:2 * MiB]
        waited.append(await asyncio.to_thread(arrived.wait, 10))
        yield data[2 * MiB:]

    async def go() -> int:
        async with aiohttp.ClientSession() as session, session.post(gw.url + "/files", data=body(), headers={
                "Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": MULTIPART,
                "Content-Length": str(len(data))}) as response:
            return response.status

    assert asyncio.run(go()) == 200
    assert waited == [True]
    assert received == [len(data)]


def _dropper(seen: list[int]) -> web.Application:
    """An upstream that reads a little of the body, then drops the connection."""
    async def files(request: web.Request) -> web.Response:
        seen.append(len(await request.content.read(100_000)))
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/files", files)
    return app


def test_a_streamed_upload_is_not_retried_once_sent(gateway: Callable[..., Gateway], fake_sleep: SleepRecorder,
                                                    upstream: Callable[[web.Application], ServerThread]) -> None:
    seen: list[int] = []
    gw = gateway(upstream(_dropper(seen)).url + "/v1", sleep=fake_sleep, upstream={"max_retries": 2})
    data = multipart(b"z" * (2 * MiB))
    reply = fetch("POST", gw.url + "/files", data=io.BytesIO(data), headers={"Content-Type": MULTIPART})
    assert reply.status == 502, reply.body
    assert "cannot be re-sent" in envelope(reply.body)["message"]
    assert len(seen) == 1 and fake_sleep.waits == []
    (row,) = gw.rows(expect=1)
    assert row["attempts"] == 1 and row["status"] == 502


def test_a_streamed_upload_is_retried_when_nothing_was_sent(gateway: Callable[..., Gateway],
                                                            fake_sleep: SleepRecorder) -> None:
    with socket.socket() as s:  # a port nothing listens on: every attempt fails before the body
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = gateway(f"http://127.0.0.1:{port}/v1", sleep=fake_sleep, upstream={"max_retries": 2})
    reply = fetch("POST", gw.url + "/files", data=io.BytesIO(multipart(b"z" * (2 * MiB))),
                  headers={"Content-Type": MULTIPART})
    assert reply.status == 502, reply.body
    assert "re-sent" not in envelope(reply.body)["message"]
    assert len(fake_sleep.waits) == 2


# --- memory, measured on a real `python -m proxy` process -------------------------------------------------

def _vm(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(name)


@pytest.fixture
def served(tmp_path: Path, upstream: Callable[[web.Application], ServerThread]) -> Iterator[tuple[int, str]]:
    """A `python -m proxy` process with one key, in front of an upstream that reads and discards uploads."""
    async def files(request: web.Request) -> web.Response:
        size = 0
        async for data in request.content.iter_any():
            size += len(data)
        return web.json_response({"id": "file-1", "object": "file", "bytes": size})

    app = web.Application()
    app.router.add_post("/v1/files", files)
    url = upstream(app).url + "/v1"
    config = tmp_path / "oaigate.toml"
    config.write_text(f'[upstream]\nbase_url = "{url}"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
                      f'[[keys]]\nname = "dev"\nkey = "{CLIENT_KEY}"\n')
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config), "--port", "0",
                             "--db", str(tmp_path / "ledger.db")], cwd=root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("oaigate serving on "):
                break
        else:
            raise AssertionError(f"exited {proc.wait()} before serving")
        drain = threading.Thread(target=proc.stderr.read, daemon=True)  # keep the pipe from filling
        drain.start()
        yield proc.pid, line.split()[3]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()


def _upload(url: str, key: str, size: int) -> int:
    """A multipart upload of `size` bytes (whole MiBs) over a raw socket, sent piece by piece; the status,
    or 0 when the gateway closed the connection before answering."""
    head = multipart(b"")[:-len(f"\r\n--{BOUNDARY}--\r\n")]
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    piece = b"m" * MiB
    target = URL(url)
    with socket.create_connection((target.host, target.port), timeout=60) as sock:
        sock.sendall((f"POST {target.path}/files HTTP/1.1\r\nHost: {target.host}\r\nAuthorization: Bearer {key}\r\n"
                      f"Content-Type: {MULTIPART}\r\nContent-Length: {len(head) + size + len(tail)}\r\n\r\n").encode())
        try:
            sock.sendall(head)
            for _ in range(size // MiB):
                sock.sendall(piece)
            sock.sendall(tail)
        except OSError:  # refused and closed mid-upload: read what it said
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (OSError, http.client.HTTPException):
            return 0
        response.read()
        return response.status


def test_memory_stays_flat_for_200_mb_uploads(served: tuple[int, str]) -> None:
    pid, url = served
    before = _vm(pid, "VmHWM")
    assert _upload(url, "sk-wrong", 200 * MiB) in (401, 0)
    after_wrong = _vm(pid, "VmHWM")
    assert _upload(url, CLIENT_KEY, 200 * MiB) == 200
    after_right = _vm(pid, "VmHWM")
    assert after_wrong - before < 50 * MiB, (before, after_wrong)
    assert after_right - after_wrong < 100 * MiB, (after_wrong, after_right)


def test_a_slow_streamed_upload_is_not_cut_by_the_first_byte_timeout(gateway: Callable[..., Gateway],
                                                                      echo: str) -> None:
    """The upstream's first-byte timeout starts once the body is sent: an upload that takes longer than
    it to arrive, piece by piece, still goes through."""
    gw = gateway(echo, upstream={"first_byte_timeout_s": 0.5, "max_retries": 0}, server={"body_timeout_s": 2})
    data = multipart(b"s" * (2 * MiB))
    quarter = len(data) // 4
    parts: list[bytes | float] = []
    for i in range(4):
        parts += [data[i * quarter:(i + 1) * quarter if i < 3 else len(data)], 0.3]
    status, _, body = raw(gw, "/v1/files", {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": MULTIPART,
                                            "Content-Length": str(len(data))}, parts)
    assert status == 200, body
    assert base64.b64decode(json.loads(body)["body_b64"]) == data
