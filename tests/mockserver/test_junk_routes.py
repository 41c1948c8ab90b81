"""Property: junk at any door of the mock is a 4xx in OpenAI's envelope, never a 5xx, a hang or a crash,
except the faults a request asks for.

Three doors, each thrown raw bytes over a socket (no SDK in the way): malformed multipart uploads to
`POST /v1/files` (no or wrong boundary, truncated parts, odd part headers and content types, huge or
non-UTF-8 field names and filenames); junk bodies to every POST route the mock registers (read from
its router, so a new route is covered the day it is added), with real and made-up ids; and junk
`x-mock-fault` / `x-mock-latency` headers. The server's `sleep` records and returns at once: a hang
shows up as an absurd recorded delay, not as a slow test.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mockserver.app import HANG_S, make_app
from mockserver.engine.faults import MAX_PACING_MS
from mockserver.settings import MockSettings
from tests.servers import ServerThread

from .test_junk import check, json_values

BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                   derandomize=True)
SMALL_CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
MAX_CHUNKS = 10  # the answers these tests ask for have at most this many chunks (max_tokens 3)


class Delays:
    """The server's `sleep`: notes each delay, returns at once."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


def exchange(base: str, method: str, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """One raw HTTP/1.1 exchange; status 0 when the server cut the connection without answering."""
    parts = urlsplit(base)
    head = {"Host": "127.0.0.1", "Authorization": "Bearer sk-test", "Connection": "close",
            "Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    received = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request.encode("utf-8") + data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    if not received:
        return 0, {}, b""
    head_raw, _, body = received.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    resp_headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if resp_headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, resp_headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServerThread, Delays, dict[str, list[str]]]]:
    """A mock with a recording sleep, its POST routes, and real ids to put in their paths."""
    delays = Delays()
    server = ServerThread(lambda: make_app(MockSettings(), sleep=delays)).start()
    ids: dict[str, list[str]] = {}
    stored = exchange(server.url, "POST", "/v1/chat/completions", json.dumps({**SMALL_CHAT, "store": True}).encode(),
                      {})
    ids["completion_id"] = [json.loads(stored[2])["id"]]
    upload = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b\r\n'
              b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
              + json.dumps({"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
                            "body": SMALL_CHAT}).encode() + b"\r\n--b--\r\n")
    uploaded = exchange(server.url, "POST", "/v1/files", upload, {"Content-Type": "multipart/form-data; boundary=b"})
    file_id = json.loads(uploaded[2])["id"]
    ids["file_id"] = [file_id]
    batch = exchange(server.url, "POST", "/v1/batches", json.dumps(
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).encode(), {})
    ids["batch_id"] = [json.loads(batch[2])["id"]]
    yield server, delays, ids
    server.stop()


def post_routes() -> list[str]:
    """Every POST route of the mock, as its path template (`/v1/batches/{batch_id}/cancel`)."""
    app = make_app(MockSettings())
    return sorted({r.resource.canonical for r in app.router.routes() if r.method == "POST"})


POST_ROUTES = post_routes()


def test_the_routes_are_read_from_the_router() -> None:
    assert {"/v1/files", "/v1/chat/completions", "/v1/batches/{batch_id}/cancel", "/_mock/rules"} <= set(POST_ROUTES)


def assert_pacing_bounded(delays: Delays, start: int, timeout_asked: bool) -> None:
    """No delay beyond what the bounds allow for a small answer (or the `timeout` fault's hold)."""
    for delay in delays.seen[start:]:
        assert delay <= MAX_PACING_MS / 1000 * MAX_CHUNKS or (timeout_asked and delay == HANG_S), delay


# --- 1. multipart ----------------------------------------------------------------------------------

_names = (st.sampled_from([b"file", b"purpose", b"expires_after[anchor]", b"expires_after[seconds]", b"", b"x",
                           b"_charset_"])
          | st.binary(max_size=16) | st.integers(100, 20_000).map(lambda n: b"n" * n))
_values = (st.sampled_from([b"batch", b"user_data", b"fine-tune", b"created_at", b"3600", b"-1", b"",
                            b'{"custom_id":"1","method":"POST","url":"/v1/chat/completions","body":{}}'])
           | st.binary(max_size=64))
_part_types = st.sampled_from([b"text/plain", b"application/json", b"application/jsonl", b"multipart/mixed",
                               b"multipart/mixed; boundary=y", b"text/plain; charset=bogus", b"\xff\xfe", b""])
_extra_headers = st.lists(st.sampled_from([
    b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: quoted-printable", b"Content-Encoding: gzip",
    b"Content-Encoding: deflate", b"Content-Encoding: br", b"broken header line", b": no name", b"X-\xff: \xfe",
    b"Content-Length: 99999", b"Content-Disposition: attachment",
]) | st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=3)


@st.composite
def part(draw: st.DrawFn) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + draw(_names) + b'"'
    filename = draw(st.none() | st.sampled_from([b"in.jsonl", b"a.txt", b""]) | st.binary(max_size=20))
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    if draw(st.booleans()):
        disposition += b"; filename*=utf-8''" + draw(st.sampled_from([b"%ff%fe", b"ok.jsonl", b"%", b"a%2"]))
    lines = [disposition] if draw(st.integers(0, 9)) else []
    if draw(st.booleans()):
        lines.append(b"Content-Type: " + draw(_part_types))
    lines += draw(_extra_headers)
    lines = draw(st.permutations(lines))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(_values)


@st.composite
def multipart(draw: st.DrawFn) -> tuple[str, bytes]:
    """A Content-Type header and a body: a plausible upload, then broken in a few ways."""
    boundary = draw(st.sampled_from(["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70])
                    | st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12))
    sent_boundary = draw(st.sampled_from(["same", "same", "other", "none", "empty", "quoted"]))
    content_type = {
        "same": f"multipart/form-data; boundary={boundary}",
        "other": f"multipart/form-data; boundary={boundary}z",
        "none": "multipart/form-data",
        "empty": "multipart/form-data; boundary=",
        "quoted": f'multipart/form-data; boundary="{boundary}',
    }[sent_boundary]
    content_type = draw(st.sampled_from([content_type] * 4 + [
        "multipart/mixed; boundary=" + boundary, "application/json", "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=" + boundary + "; charset=bogus"]))
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in draw(st.lists(part(), max_size=4)))
    if draw(st.booleans()):
        body += delimiter + b"--\r\n"
    cut = draw(st.none() | st.integers(0, max(len(body) - 1, 0)))
    return content_type, body if cut is None else body[:cut]


@settings(BOUNDED, max_examples=300)
@given(case=multipart())
def test_malformed_uploads_are_4xx(served: tuple[ServerThread, Delays, dict[str, list[str]]],
                                   case: tuple[str, bytes]) -> None:
    server, _, _ = served
    content_type, body = case
    status, headers, answer = exchange(server.url, "POST", "/v1/files", body, {"Content-Type": content_type})
    check(status, headers, answer, f"POST /v1/files {content_type!r} {body[:300]!r}")


# --- 2. every POST route ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_made_up_ids = st.text(min_size=1, max_size=30) | st.sampled_from(["x", "..", "%2e", "0", "file-abc", "batch_1"])


@st.composite
def route_and_body(draw: st.DrawFn, ids: dict[str, list[str]]) -> tuple[str, bytes, str]:
    template = draw(st.sampled_from(POST_ROUTES))

    def fill(match: re.Match[str]) -> str:
        value = draw(st.sampled_from(ids.get(match.group(1), ["none"])) | _made_up_ids)
        return quote(value, safe="")

    path = _PLACEHOLDER.sub(fill, template)
    body = draw(json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200)
                | st.sampled_from([b"", b"{", b"[]", b"null", b'{"model": null}', b"\xff\xfe{}"]))
    content_type = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", "multipart/form-data",
                                                                    "application/json; charset=latin-1", ""]))
    return path, body, content_type


@settings(BOUNDED, max_examples=400)
@given(data=st.data())
def test_junk_bodies_on_every_post_route_are_4xx(served: tuple[ServerThread, Delays, dict[str, list[str]]],
                                                  data: st.DataObject) -> None:
    server, delays, ids = served
    path, body, content_type = data.draw(route_and_body(ids))
    start = len(delays.seen)
    status, headers, answer = exchange(server.url, "POST", path, body, {"Content-Type": content_type})
    check(status, headers, answer, f"POST {path} {content_type!r} {body[:300]!r}")
    assert_pacing_bounded(delays, start, timeout_asked=False)


# --- 3. junk fault and pacing headers --------------------------------------------------------------

_numbers = st.sampled_from(["0", "1", "60000", "60001", "3600000", "3600001", "1000000", "1000001", "-1", "1e12",
                            "1000000000000", "nan", "inf", "-inf", "1.5", "0x10", "1_000", "", " 7 ", "9" * 50,
                            "\u0661"]) | st.integers(-10, 10**15).map(str)
# What HTTP allows in a header value (a control character is malformed HTTP: aiohttp's own parser answers
# a plain-text 400 before the mock sees the request), sent as UTF-8.
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
                       max_size=40)


@st.composite
def fault_header(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["429", "500", "503", "timeout", "disconnect", "418", "", "TIMEOUT"]))
    params = draw(st.lists(st.tuples(st.sampled_from(["times", "id", "retry_after_ms", "color", ""]),
                                     _numbers | _header_text), max_size=3))
    return ";".join([kind, *(f"{k}={v}" for k, v in params)])


@st.composite
def latency_header(draw: st.DrawFn) -> str:
    params = draw(st.lists(st.tuples(st.sampled_from(["ttft_ms", "chunk_ms", "speed", ""]), _numbers), max_size=3))
    return ";".join(f"{k}={v}" for k, v in params)


_TARGETS = [("POST", "/v1/chat/completions", SMALL_CHAT), ("POST", "/v1/chat/completions", {**SMALL_CHAT,
                                                                                            "stream": True}),
            ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
            ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 16}),
            ("GET", "/v1/models", None), ("GET", "/v1/files", None)]


@settings(BOUNDED, max_examples=400)
@given(target=st.sampled_from(_TARGETS), fault=st.none() | fault_header() | _header_text,
       latency=st.none() | latency_header() | _header_text)
def test_junk_fault_and_latency_headers(served: tuple[ServerThread, Delays, dict[str, list[str]]],
                                        target: tuple[str, str, Any], fault: str | None, latency: str | None) -> None:
    server, delays, _ = served
    method, path, body = target
    headers = {name: value.strip() for name, value in (("x-mock-fault", fault), ("x-mock-latency", latency))
               if value is not None}
    kind = headers.get("x-mock-fault", "").split(";")[0].strip()
    start = len(delays.seen)
    status, resp_headers, answer = exchange(server.url, method, path,
                                            b"" if body is None else json.dumps(body).encode(),
                                            headers)
    what = f"{method} {path} {headers!r}"
    assert_pacing_bounded(delays, start, timeout_asked=kind == "timeout")
    if status == 0:
        assert kind == "disconnect", f"{what}: the connection was cut"
        return
    if status >= 500:
        assert (kind, status) in (("500", 500), ("503", 503), ("timeout", 504)), f"{what} -> {status}: {answer[:300]!r}"
        json.loads(answer)["error"]
        return
    if status == 429 and kind == "429":
        return
    if status == 200 and kind == "disconnect" and body is not None and body.get("stream"):
        return  # the stream was cut midway, as asked: its end is missing
    check(status, resp_headers, answer, what)
