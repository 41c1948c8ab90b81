"""The fixtures stage end to end: record through the gateway, stop the upstream, replay from files.

Round trips use the real `openai` SDK; raw HTTP (aiohttp, no decompression) where bytes matter.
Custom upstreams (`upstream(app)`) count calls, hand out sequences, hold a stream open on an event or
compress their answers. Nothing sleeps to wait: servers are drained with `settle()`, streams are
held with events. The only timed test (pacing) has loose, load-tolerant bounds.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mockserver.app import make_app as make_mock
from mockserver.settings import MockSettings
from proxy.wire.fixtures import (
    Cassette,
    Fixture,
    MatchPolicy,
    RecordedRequest,
    RecordedResponse,
    request_key,
    store,
)
from proxy.wire.fixtures.format import decode_body, encode_body
from proxy.wire.fixtures.matching import normalized_body
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, UPSTREAM_KEY, Gateway, fetch

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Name a river in Europe."}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12}
STREAM: dict[str, Any] = {**CHAT, "stream": True}
CHAT_URL = "/chat/completions"
MODE, CASSETTE = "x-oaigate-fixtures", "x-oaigate-cassette"

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[[web.Application], ServerThread]


# --- helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def mock() -> Iterator[ServerThread]:
    """A mock server of its own (not the embedded one), so a test can stop it and replay without it."""
    server = ServerThread(lambda: make_mock(MockSettings())).start()
    yield server
    server.stop()


@pytest.fixture
def fdir(tmp_path: Path) -> Path:
    return tmp_path / "fixtures"


def recorder(gateway: GatewayFactory, base_url: str, fdir: Path, **fixtures: Any) -> Gateway:
    return gateway(base_url, upstream={"max_retries": 0},
                   fixtures={"mode": "record", "dir": str(fdir), **fixtures})


def replayer(gateway: GatewayFactory, dead_url: str, fdir: Path, **fixtures: Any) -> Gateway:
    """A gateway in replay mode whose upstream is gone: every answer must come from a file. Requests
    may ask for `live` (see `assert_upstream_dead`)."""
    return gateway(dead_url, upstream={"max_retries": 0, "connect_timeout_s": 2.0},
                   fixtures={"mode": "replay", "dir": str(fdir), "allow_client_override": True, **fixtures})


def stop_upstream(recording: Gateway, upstream: ServerThread) -> str:
    """Let the recording gateway write its files, stop it and its upstream; the upstream's dead URL."""
    recording.settle()
    recording.stop()
    upstream.stop()
    return upstream.url + "/v1"


def assert_upstream_dead(gw: Gateway) -> None:
    """A live request through the replay gateway cannot reach the stopped upstream."""
    reply = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "live"})
    assert reply.status == 502, reply.body


def fixture_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_text(folder: Path) -> str:
    """Every file under the fixtures folder (fixtures, hits list, anything else), as one text."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def error_of(reply: Any) -> dict[str, Any]:
    return json.loads(reply.body)["error"]


def sse_events(body: bytes) -> list[bytes]:
    return [e for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def completion(n: int, model: str = MODEL) -> dict[str, Any]:
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1_700_000_000 + n, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {n}"},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def counter_app() -> tuple[web.Application, list[dict[str, Any]]]:
    """An upstream whose n-th chat answer says `answer n`; returns the app and the bodies it received."""
    calls: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.Response(body=compact(completion(len(calls))), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app, calls


# --- 1. round trips: record, stop the upstream, replay ---------------------------------------------

def test_chat_round_trip_same_bytes(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    gw = recorder(gateway, mock.url + "/v1", fdir)
    live = fetch("POST", gw.url + CHAT_URL, json=CHAT)
    assert live.status == 200 and "x-oaigate-fixture" not in live.headers
    with gw.client() as client:
        sdk_live = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0.5)
    dead = stop_upstream(gw, mock)
    files = fixture_files(fdir)
    assert [p.parent.name for p in files] == ["default", "default"]
    assert all(p.name.startswith(f"chat.completions-{MODEL}-") for p in files), files
    recorded = load(next(p for p in files if "temperature" not in json.dumps(load(p)["request"])))
    assert recorded["version"] == 1 and recorded["request"]["body"]["json"] == CHAT
    assert recorded["response"]["body"]["json"] == json.loads(live.body), "stored decoded, as JSON"
    assert len(recorded["request"]["key"]) == 16 and recorded["request"]["key"] in files[0].name + files[1].name

    gw2 = replayer(gateway, dead, fdir)
    assert_upstream_dead(gw2)
    again = fetch("POST", gw2.url + CHAT_URL, json=CHAT)
    assert again.status == 200 and again.headers["x-oaigate-fixture"] == "hit"
    assert again.body == live.body
    assert again.headers["Content-Type"] == live.headers["Content-Type"]
    assert again.headers["x-request-id"] == live.headers["x-request-id"]
    with gw2.client() as client:
        sdk_again = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0.5)
    assert sdk_again.model_dump() == sdk_live.model_dump()


def test_stream_round_trip_same_bytes_and_events(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    gw = recorder(gateway, mock.url + "/v1", fdir)
    live = fetch("POST", gw.url + CHAT_URL, json=STREAM)
    assert live.status == 200 and live.headers["Content-Type"].startswith("text/event-stream")
    with gw.client() as client:
        sdk_live = [c.model_dump() for c in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True})]
    dead = stop_upstream(gw, mock)
    assert sdk_live[-1]["usage"] is not None and sdk_live[-1]["choices"] == []
    plain = next(load(p) for p in fixture_files(fdir) if "stream_options" not in load(p)["request"]["body"]["json"])
    chunks = plain["response"]["chunks"]
    assert chunks and all(set(c) in ({"t", "text"}, {"t", "base64"}) for c in chunks)
    assert len(sse_events("".join(c["text"] for c in chunks).encode())) > 3, "every event, as text"
    assert [c["t"] for c in chunks] == sorted(c["t"] for c in chunks)
    assert b'"usage"' not in live.body, "the client did not ask for usage: the gateway's extra chunk is stripped"

    gw2 = replayer(gateway, dead, fdir)
    again = fetch("POST", gw2.url + CHAT_URL, json=STREAM)
    assert again.status == 200 and again.headers["x-oaigate-fixture"] == "hit"
    assert again.headers["Content-Type"].startswith("text/event-stream")
    assert sse_events(again.body) == sse_events(live.body)
    assert again.body == live.body
    with gw2.client() as client:
        sdk_again = [c.model_dump() for c in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=12, stream=True, stream_options={"include_usage": True})]
    assert sdk_again == sdk_live
    rows = gw2.rows(expect=2)
    assert [(r["fixture"], r["stream"], r["completion_tokens"]) for r in rows] == [
        ("hit", 1, sdk_live[-1]["usage"]["completion_tokens"])] * 2, "a replayed stream is metered like a live one"


def test_embeddings_round_trip(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    inputs = ["first text", "second text"]
    body = {"model": "text-embedding-3-small", "input": inputs, "encoding_format": "float"}
    gw = recorder(gateway, mock.url + "/v1", fdir)
    with gw.client() as client:
        sdk_live = client.embeddings.create(model="text-embedding-3-small", input=inputs)  # base64 on the wire
    live_floats = fetch("POST", gw.url + "/embeddings", json=body)
    assert live_floats.status == 200
    dead = stop_upstream(gw, mock)

    gw2 = replayer(gateway, dead, fdir)
    with gw2.client() as client:
        raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=inputs)
        assert raw.headers["x-oaigate-fixture"] == "hit"
        sdk_again = raw.parse()
    assert [d.embedding for d in sdk_again.data] == [d.embedding for d in sdk_live.data]
    assert len(sdk_again.data[0].embedding) > 100 and sdk_again.usage == sdk_live.usage
    again_floats = fetch("POST", gw2.url + "/embeddings", json=body)
    assert again_floats.headers["x-oaigate-fixture"] == "hit"
    assert again_floats.body == live_floats.body, "float arrays come back byte for byte"


JSONL_ONE_LINE = b'{"custom_id":"only","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini"}}\n'


def test_files_round_trip_multipart_and_binary(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    binary = bytes(range(256)) * 4
    gw = recorder(gateway, mock.url + "/v1", fdir)
    with gw.client() as client:
        jsonl = client.files.create(file=("one.jsonl", io.BytesIO(JSONL_ONE_LINE)), purpose="batch")
        blob = client.files.create(file=("blob.bin", io.BytesIO(binary)), purpose="user_data")
        retrieved = client.files.retrieve(blob.id)
        live_jsonl = client.files.content(jsonl.id).content
        live_blob = client.files.content(blob.id).content
    assert (live_jsonl, live_blob) == (JSONL_ONE_LINE, binary)
    raw_live = fetch("GET", gw.url + f"/files/{jsonl.id}/content")
    dead = stop_upstream(gw, mock)
    uploads = [load(p) for p in fixture_files(fdir) if load(p)["request"]["path"] == "/v1/files"]
    assert sorted(u["request"]["body"]["multipart"]["file"]["filename"] for u in uploads) == ["blob.bin", "one.jsonl"]
    stored_blob = next(load(p) for p in fixture_files(fdir)
                       if load(p)["request"]["path"].endswith(f"{blob.id}/content"))
    assert "base64" in stored_blob["response"]["body"], "binary content is stored as base64"

    gw2 = replayer(gateway, dead, fdir)
    with gw2.client() as client:
        # a new upload of the same bytes: another multipart boundary, the same fixture
        assert client.files.create(file=("one.jsonl", io.BytesIO(JSONL_ONE_LINE)), purpose="batch") == jsonl
        assert client.files.create(file=("blob.bin", io.BytesIO(binary)), purpose="user_data") == blob
        assert client.files.retrieve(blob.id) == retrieved
        assert client.files.content(blob.id).content == binary
        assert client.files.content(jsonl.id).content == JSONL_ONE_LINE, "a one-line JSONL file keeps its newline"
        with pytest.raises(openai.NotFoundError):  # different bytes: not the recorded upload
            client.files.create(file=("one.jsonl", io.BytesIO(JSONL_ONE_LINE + b"\n")), purpose="batch")
    raw_again = fetch("GET", gw2.url + f"/files/{jsonl.id}/content")
    assert (raw_again.body, raw_again.headers["Content-Type"]) == (raw_live.body, raw_live.headers["Content-Type"])


def test_batches_round_trip(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    lines = b"".join(compact({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                              "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}}) + b"\n"
                     for i in range(2))

    def run(client: openai.OpenAI) -> tuple[Any, ...]:
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch")
        created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        done = client.batches.retrieve(created.id)  # the mock's default pace: done at the first retrieve
        assert done.output_file_id is not None
        output = client.files.content(done.output_file_id).content
        return uploaded, created, done, output

    gw = recorder(gateway, mock.url + "/v1", fdir)
    with gw.client() as client:
        live = run(client)
    assert (live[1].status, live[2].status) == ("validating", "completed")
    assert [json.loads(line)["custom_id"] for line in live[3].splitlines()] == ["r0", "r1"]
    dead = stop_upstream(gw, mock)

    gw2 = replayer(gateway, dead, fdir)
    with gw2.client() as client:
        assert run(client) == live
    assert [r["fixture"] for r in gw2.rows(expect=4)] == ["hit"] * 4


# --- 2. pacing -------------------------------------------------------------------------------------

def timed_fetch(url: str, body: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    reply = fetch("POST", url, json=body)
    return time.perf_counter() - started, reply


def test_replay_pacing(gateway: GatewayFactory, mock: ServerThread, fdir: Path) -> None:
    gw = recorder(gateway, mock.url + "/v1", fdir)
    live = fetch("POST", gw.url + CHAT_URL, json=STREAM, headers={"x-mock-latency": "ttft_ms=0;chunk_ms=50"})
    dead = stop_upstream(gw, mock)
    (file,) = fixture_files(fdir)
    offsets = [c["t"] for c in load(file)["response"]["chunks"]]
    span = offsets[-1]
    assert len(offsets) >= 6 and span >= 0.2, offsets  # the chunks were ~50 ms apart, and timed

    paced = replayer(gateway, dead, fdir, pace=True)
    fetch("POST", paced.url + "/models", headers={MODE: "live"})  # warm up the connection path (a 502)
    elapsed, reply = timed_fetch(paced.url + CHAT_URL, STREAM)
    assert reply.body == live.body and reply.headers["x-oaigate-fixture"] == "hit"
    assert span * 0.7 <= elapsed < span + 10, (elapsed, span)

    fast = replayer(gateway, dead, fdir, pace=False)
    timed_fetch(fast.url + CHAT_URL, STREAM)  # the first one loads the cassette
    elapsed, reply = timed_fetch(fast.url + CHAT_URL, STREAM)
    assert reply.body == live.body
    assert elapsed < span * 0.5, (elapsed, span)


def test_a_client_leaving_a_paced_replay_is_no_error(gateway: GatewayFactory, mock: ServerThread, fdir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    gw = recorder(gateway, mock.url + "/v1", fdir)
    fetch("POST", gw.url + CHAT_URL, json=STREAM, headers={"x-mock-latency": "ttft_ms=0;chunk_ms=100"})
    paced = replayer(gateway, stop_upstream(gw, mock), fdir, pace=True)

    async def leave_after_first_event() -> bytes:
        async with aiohttp.ClientSession() as session:
            response = await session.post(paced.url + CHAT_URL, json=STREAM,
                                          headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            first = await response.content.readuntil(b"\n\n")
            response.close()  # the client goes away mid-stream
            return first

    assert asyncio.run(leave_after_first_event()).startswith(b"data: ")
    (row,) = paced.rows(expect=1)
    assert row["fixture"] == "hit" and row["error_type"] == "client_disconnected"
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


# --- 3. misses -------------------------------------------------------------------------------------

def test_miss_names_key_cassette_and_closest(gateway: GatewayFactory, fdir: Path) -> None:
    gw = gateway(fixtures={"mode": "replay", "dir": str(fdir), "cassette": "suite"})
    assert fetch("POST", gw.url + CHAT_URL, json={**CHAT, "user": "u1"}, headers={MODE: "record"}).status == 200
    gw.settle()
    (recorded,) = fixture_files(fdir)
    assert recorded.parent.name == "suite"

    changed = {**CHAT, "messages": [{"role": "user", "content": "Name a river in Asia."}], "user": "u2"}
    reply = fetch("POST", gw.url + CHAT_URL, json=changed)
    assert reply.status == 404 and reply.headers["x-should-retry"] == "false"
    error = error_of(reply)
    assert (error["type"], error["code"]) == ("invalid_request_error", "fixture_not_found")
    key = request_key("POST", "/v1/chat/completions", "", normalized_body(compact(changed), "application/json"),
                      MatchPolicy())
    assert error["request_key"] == key and error["cassette"] == "suite" and error["closest"] == recorded.name
    message = error["message"]
    assert key in message and "'suite'" in message and recorded.name in message
    assert "body.json.messages[0].content" in message and "Name a river in Asia." in message
    assert "user" not in message.split("differs in:")[1], "ignored fields are not reported as differences"

    nothing = fetch("POST", gw.url + "/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    assert nothing.status == 404 and error_of(nothing)["closest"] is None
    assert "Nothing was recorded" in error_of(nothing)["message"]
    other = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={CASSETTE: "empty"})
    assert other.status == 404 and error_of(other)["cassette"] == "empty" and error_of(other)["closest"] is None


@pytest.mark.parametrize(("miss_status", "exc"), [(None, openai.NotFoundError), (409, openai.ConflictError)])
def test_miss_sdk_does_not_retry(gateway: GatewayFactory, fdir: Path, miss_status: int | None,
                                 exc: type[Exception]) -> None:
    extra = {} if miss_status is None else {"miss_status": miss_status}
    gw = gateway(fixtures={"mode": "replay", "dir": str(fdir), **extra})
    with gw.client(max_retries=3) as client, pytest.raises(exc) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == (miss_status or 404)
    assert caught.value.code == "fixture_not_found"
    rows = gw.rows(expect=1)
    assert len(rows) == 1, "the SDK did not retry the miss"
    assert (rows[0]["fixture"], rows[0]["status"], rows[0]["error_type"]) == ("miss", miss_status or 404,
                                                                            "fixture_not_found")


def test_repeat_fail_miss_explains_used_up(gateway: GatewayFactory, fdir: Path) -> None:
    gw = gateway(fixtures={"mode": "replay", "dir": str(fdir), "repeat": "fail"})
    assert fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "record"}).status == 200
    gw.settle()
    assert fetch("POST", gw.url + CHAT_URL, json=CHAT).headers["x-oaigate-fixture"] == "hit"
    reply = fetch("POST", gw.url + CHAT_URL, json=CHAT)
    assert reply.status == 404
    message = error_of(reply)["message"]
    assert "differs in: ." not in message and "repeat" in message, message


# --- 4. ignored fields -----------------------------------------------------------------------------

def test_ignored_fields(gateway: GatewayFactory, fdir: Path) -> None:
    gw = gateway(fixtures={"mode": "replay", "dir": str(fdir),
                           "match": {"/v1/chat/completions": {"ignore_fields": ["temperature"]}}})
    legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5, "temperature": 0.2}
    recorded = [
        ({**CHAT, "user": "alice", "metadata": {"run": "1"}, "temperature": 0.2}, CHAT_URL),
        (legacy, "/completions"),
    ]
    originals = []
    for body, path in recorded:
        reply = fetch("POST", gw.url + path, json=body, headers={MODE: "record"})
        assert reply.status == 200, reply.body
        originals.append(reply.body)
    gw.settle()

    hit = fetch("POST", gw.url + CHAT_URL, json={**CHAT, "user": "bob", "metadata": {"run": "2"}, "temperature": 1.5})
    assert hit.status == 200 and hit.headers["x-oaigate-fixture"] == "hit" and hit.body == originals[0]
    absent = fetch("POST", gw.url + CHAT_URL, json=CHAT)  # ignored fields left out entirely
    assert absent.headers.get("x-oaigate-fixture") == "hit"
    # `temperature` is ignored on the chat path only
    assert fetch("POST", gw.url + "/completions", json=legacy).headers.get("x-oaigate-fixture") == "hit"
    legacy_miss = fetch("POST", gw.url + "/completions", json={**legacy, "temperature": 0.9})
    assert legacy_miss.status == 404 and "body.json.temperature" in error_of(legacy_miss)["message"]
    other = fetch("POST", gw.url + CHAT_URL, json={**CHAT, "max_tokens": 13})
    assert other.status == 404 and "body.json.max_tokens: recorded 12 != requested 13" in error_of(other)["message"]


# --- 5. sequences ----------------------------------------------------------------------------------

@pytest.mark.parametrize("repeat", ["last", "fail"])
def test_sequence_replays_in_order(gateway: GatewayFactory, upstream: UpstreamFactory, fdir: Path,
                                   repeat: str) -> None:
    app, calls = counter_app()
    server = upstream(app)
    gw = recorder(gateway, server.url + "/v1", fdir)
    with gw.client() as client:
        for n in (1, 2, 3):
            answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert answer.choices[0].message.content == f"answer {n}"
            gw.settle()
    dead = stop_upstream(gw, server)
    names = sorted(p.name for p in fixture_files(fdir))
    stem = min(names, key=len).removesuffix(".json")
    assert names == [f"{stem}.2.json", f"{stem}.3.json", f"{stem}.json"]

    gw2 = replayer(gateway, dead, fdir, repeat=repeat)
    with gw2.client() as client:
        got = [client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
               for _ in range(3)]
        assert got == ["answer 1", "answer 2", "answer 3"]
        if repeat == "last":
            assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content \
                == "answer 3"
        else:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(calls) == 3


# --- 6. redaction: no secrets on disk --------------------------------------------------------------

def test_no_secrets_in_fixture_files(gateway: GatewayFactory, mock: ServerThread, fdir: Path,
                                     upstream_key: str) -> None:
    secrets = {"user": "alice-SECRET-user", "prompt_cache_key": "pck-SECRET-cache", "metadata": {"t": "md-SECRET"}}
    gw = recorder(gateway, mock.url + "/v1", fdir, redact_fields=["user", "prompt_cache_key", "metadata"])
    assert fetch("POST", gw.url + CHAT_URL, json={**CHAT, **secrets}).status == 200
    assert fetch("POST", gw.url + CHAT_URL, json={**STREAM, **secrets}).status == 200
    response = {"model": MODEL, "input": "hello", **secrets}
    live_response = fetch("POST", gw.url + "/responses", json=response)
    assert live_response.status == 200 and b"alice-SECRET-user" in live_response.body  # the API echoes them
    streamed = fetch("POST", gw.url + "/responses", json={**response, "stream": True})
    assert streamed.status == 200 and b"pck-SECRET-cache" in streamed.body
    models = fetch("GET", gw.url + "/models?api_key=qs-SECRET-1&limit=2&token=qs-SECRET-2")
    assert models.status == 200
    with gw.client() as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, user="alice-SECRET-user")
    dead = stop_upstream(gw, mock)

    text = all_text(fdir)
    assert len(fixture_files(fdir)) == 6
    for secret in (upstream_key, UPSTREAM_KEY, CLIENT_KEY, "Bearer", "bearer", "SECRET"):
        assert secret not in text, secret
    (listing,) = [load(p) for p in fixture_files(fdir) if load(p)["request"]["path"] == "/v1/models"]
    assert listing["request"]["query"] == "api_key=%5Bredacted%5D&limit=2&token=%5Bredacted%5D"
    chat = next(load(p) for p in fixture_files(fdir) if load(p)["request"]["body"].get("json", {}).get("max_tokens"))
    assert chat["request"]["body"]["json"]["user"] == "[redacted]"

    gw2 = replayer(gateway, dead, fdir, redact_fields=["user", "prompt_cache_key", "metadata"])
    again = fetch("POST", gw2.url + CHAT_URL, json={**CHAT, **secrets, "user": "someone-else"})
    assert again.headers.get("x-oaigate-fixture") == "hit", "a redacted field is not matched on"
    assert fetch("GET", gw2.url + "/models?api_key=other&limit=2&token=x").headers.get("x-oaigate-fixture") == "hit"
    with gw2.client() as client:
        replayed = client.responses.create(model=MODEL, input="hello", **secrets)
    assert replayed.user == "[redacted]" and replayed.output_text


# --- 7. atomic writes and the file format ----------------------------------------------------------

def sample_fixture(text: str = "hello") -> Fixture:
    body = {"json": CHAT}
    key = request_key("POST", "/v1/chat/completions", "", body, MatchPolicy())
    return Fixture(RecordedRequest("POST", "/v1/chat/completions", "", body, key),
                   RecordedResponse(200, {"content-type": "application/json"}, body={"json": {"text": text}}),
                   "2025-01-01T00:00:00Z")


@pytest.mark.parametrize("fails", ["fsync", "replace", "link", "write"])
def test_crash_mid_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    cassette = Cassette(tmp_path / "c", "c")
    first = cassette.save(sample_fixture("original " * 1000), MODEL)
    before = first.read_bytes()

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    if fails == "write":
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, *args, **kwargs)
            real_write = handle.write

            def half(text: str) -> int:
                real_write(text[: len(text) // 2])
                handle.flush()
                raise OSError(28, "No space left on device")

            handle.write = half
            return handle

        monkeypatch.setattr(store.os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(store.os, fails, boom)
    if fails != "replace":  # a new file's last step is a link (it never clobbers), a rewrite's a rename
        with pytest.raises(OSError):
            cassette.save(sample_fixture("second"), MODEL)  # a repeat: `<stem>.2.json`
    if fails != "link":
        with pytest.raises(OSError):
            store.write_atomic(first, sample_fixture("clobber").dumps())  # over the existing file
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [first.name], "no temp or partial file left"
    assert first.read_bytes() == before
    assert len(Cassette(tmp_path / "c", "c")) == 1 and len(cassette) == 1
    assert cassette.save(sample_fixture("second"), MODEL).name.endswith(".2.json")


def test_save_never_overwrites_a_repeat(tmp_path: Path) -> None:
    cassette = Cassette(tmp_path / "c", "c")
    first = cassette.save(sample_fixture("one"), MODEL)
    second = cassette.save(sample_fixture("two"), MODEL)
    third = cassette.save(sample_fixture("three"), MODEL)
    assert (second.name, third.name) == (first.name.replace(".json", ".2.json"), first.name.replace(".json", ".3.json"))
    second.unlink()  # someone removed one recording of the sequence by hand
    reloaded = Cassette(tmp_path / "c", "c")
    fourth = reloaded.save(sample_fixture("four"), MODEL)
    assert fourth.name == first.name.replace(".json", ".4.json")
    assert json.loads(third.read_text())["response"]["body"]["json"] == {"text": "three"}
    key = sample_fixture().request.key
    assert [json.loads(decode_body(reloaded.take(key).response.body))["text"] for _ in range(4)] == [
        "one", "three", "four", "four"]


def test_two_processes_recording_into_one_cassette_never_overwrite_each_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pytest-xdist worker has its own gateway and so its own Cassette over the same folder; both may
    pick the same free name at the same moment (here: the second one's look finds nothing)."""
    worker_a, worker_b = Cassette(tmp_path / "c", "c"), Cassette(tmp_path / "c", "c")
    saved = [worker_a.save(sample_fixture("from a"), MODEL)]
    monkeypatch.setattr(Path, "exists", lambda self: False)
    saved.append(worker_b.save(sample_fixture("from b"), MODEL))
    monkeypatch.undo()
    assert saved[0] != saved[1] and saved[1].name.endswith(".2.json")
    key = sample_fixture().request.key
    later = Cassette(tmp_path / "c", "c")
    assert [json.loads(decode_body(later.take(key).response.body))["text"] for _ in range(2)] == ["from a", "from b"]


def test_recordings_keep_the_order_requests_arrived_in_whatever_order_files_are_written(tmp_path: Path) -> None:
    cassette = Cassette(tmp_path / "c", "c")
    key = sample_fixture().request.key
    first, second = cassette.reserve(key), cassette.reserve(key)
    cassette.save(sample_fixture("second"), MODEL, second)  # the later request finished writing first
    cassette.save(sample_fixture("first"), MODEL, first)
    for loaded in (cassette, Cassette(tmp_path / "c", "c")):
        assert [json.loads(decode_body(loaded.take(key).response.body))["text"] for _ in range(2)] == [
            "first", "second"]
    assert oct(next((tmp_path / "c").glob("*.json")).stat().st_mode & 0o777) == "0o644"


def test_a_rewound_cassette_replays_its_sequences_from_the_start(tmp_path: Path) -> None:
    cassette = Cassette(tmp_path / "c", "c", repeat="fail")
    for text in ("one", "two"):
        cassette.save(sample_fixture(text), MODEL)
    key = sample_fixture().request.key

    def served() -> list[Any]:
        return [None if (f := cassette.take(key)) is None else json.loads(decode_body(f.response.body))["text"]
                for _ in range(3)]

    assert served() == ["one", "two", None]
    cassette.rewind()
    assert served() == ["one", "two", None]


def test_miss_after_match_settings_changed(gateway: GatewayFactory, fdir: Path) -> None:
    gw = gateway(fixtures={"mode": "record", "dir": str(fdir)})
    assert fetch("POST", gw.url + CHAT_URL, json=CHAT).status == 200
    gw.settle()
    (recorded,) = fixture_files(fdir)
    replay = gateway(fixtures={"mode": "replay", "dir": str(fdir), "ignore_fields": ["user", "max_tokens"]})
    reply = fetch("POST", replay.url + CHAT_URL, json={**CHAT, "max_tokens": 99})
    assert reply.status == 404 and error_of(reply)["closest"] == recorded.name
    assert "other match settings" in error_of(reply)["message"], error_of(reply)["message"]


def test_failed_write_in_gateway_leaves_nothing(gateway: GatewayFactory, fdir: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    real_link = os.link

    def link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst).startswith(str(fdir)):
            raise OSError(5, "Input/output error")
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(store.os, "link", link)
    gw = gateway(fixtures={"mode": "record", "dir": str(fdir)})
    reply = fetch("POST", gw.url + CHAT_URL, json=CHAT)
    assert reply.status == 200, "the client is answered whatever happens to the file"
    gw.settle()
    assert fixture_files(fdir) == [] and [p for p in fdir.rglob("*") if p.is_file() and ".tmp" in p.name] == []
    assert "failed to finish" in caplog.text


CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/event-stream",
                                 "text/plain", "application/jsonl", "application/octet-stream", "image/png",
                                 "audio/mpeg", "", "application/x-ndjson"]) | st.text(max_size=30)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), content_type=CONTENT_TYPES)
def test_encode_decode_any_bytes(data: bytes, content_type: str) -> None:
    stored = encode_body(data, content_type)
    assert len(stored) == 1 or "indent" in stored
    text = json.dumps(stored, ensure_ascii=False)
    assert decode_body(json.loads(text)) == data


@settings(max_examples=200, deadline=None)
@given(value=JSON_VALUES, indent=st.sampled_from([None, 2]), newline=st.booleans())
def test_encode_decode_json_bodies(value: Any, indent: int | None, newline: bool) -> None:
    data = json.dumps(value, indent=indent, ensure_ascii=False).encode() + (b"\n" if newline else b"")
    for content_type in ("application/json", "application/jsonl", "text/plain"):
        assert decode_body(json.loads(json.dumps(encode_body(data, content_type)))) == data
    api_style = orjson.dumps(value)  # compact, as the mock (and the API's compact answers) send it
    assert "json" in encode_body(api_style, "application/json"), "stays readable JSON in the file"
    pretty = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    assert pretty == api_style or encode_body(pretty, "application/json").get("indent") == 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON_VALUES, chunks=st.lists(st.binary(max_size=40), max_size=6),
       status=st.integers(100, 599), query=st.text(max_size=20))
def test_fixture_dumps_loads_round_trip(body: Any, chunks: list[bytes], status: int, query: str) -> None:
    request = RecordedRequest("POST", "/v1/x", query, {"json": body}, "0123456789abcdef")
    for response in (
        RecordedResponse(status, {"content-type": "text/event-stream"},
                         chunks=[{"t": i / 10, **encode_body(c, "text/plain")} for i, c in enumerate(chunks)]),
        RecordedResponse(status, {"content-type": "application/json"}, body={"json": body}),
    ):
        fixture = Fixture(request, response, "2025-01-01T00:00:00Z", usage={"prompt_tokens": 1}, meta={"m": 1})
        loaded = Fixture.loads(fixture.dumps())
        assert loaded == fixture
        if response.chunks is not None:
            assert loaded.response.chunk_bytes() == [(i / 10, c) for i, c in enumerate(chunks)]
        else:
            assert loaded.response.body == {"json": body}


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=6), seed=st.randoms(use_true_random=False),
       user=st.text(max_size=5), metadata=JSON_VALUES)
def test_request_key_stable_under_reordering_and_ignored_fields(body: dict[str, Any], seed: Any, user: str,
                                                               metadata: Any) -> None:
    policy = MatchPolicy()
    base = {k: v for k, v in body.items() if k not in ("user", "metadata")}
    key = request_key("POST", "/v1/chat/completions", "b=2&a=1", {"json": base}, policy)
    items = list(base.items())
    seed.shuffle(items)
    reordered = dict(items)
    reordered.update({"user": user, "metadata": metadata})
    assert request_key("post", "/v1/chat/completions", "a=1&b=2", {"json": reordered}, policy) == key
    assert request_key("POST", "/v1/chat/completions", "a=1&b=2", {"json": {**base, "_x": 1}}, policy) != key
    assert request_key("POST", "/v1/embeddings", "a=1&b=2", {"json": base}, policy) != key


def test_bad_fixture_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    (folder / "future.json").write_text(json.dumps({"version": 99}))
    cassette = Cassette(folder, "c")
    assert len(cassette) == 0 and len(cassette.errors) == 2
    assert any("unsupported fixture version 99" in e for e in cassette.errors)


# --- 8. record-missing, per-request mode and cassette ------------------------------------------------

def test_record_missing_replays_hits_and_records_misses(gateway: GatewayFactory, upstream: UpstreamFactory,
                                                        fdir: Path) -> None:
    app, calls = counter_app()
    gw = gateway(upstream(app).url + "/v1", fixtures={"mode": "record-missing", "dir": str(fdir)})
    with gw.client() as client:
        first = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert "x-oaigate-fixture" not in first.headers and first.parse().choices[0].message.content == "answer 1"
        gw.settle()
        again = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert again.headers["x-oaigate-fixture"] == "hit" and again.parse().choices[0].message.content == "answer 1"
        assert len(calls) == 1, "a hit does not reach the upstream"
        other = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "other"}])
        assert other.choices[0].message.content == "answer 2" and len(calls) == 2
        gw.settle()
        assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "other"}]
                                              ).choices[0].message.content == "answer 2"
    assert len(calls) == 2 and len(fixture_files(fdir)) == 2
    assert [r["fixture"] for r in gw.rows(expect=4)] == ["recorded", "hit", "recorded", "hit"]


def test_per_request_mode_and_cassette(gateway: GatewayFactory, upstream: UpstreamFactory, fdir: Path) -> None:
    app, calls = counter_app()
    gw = gateway(upstream(app).url + "/v1", fixtures={"dir": str(fdir), "allow_client_override": True})  # live
    assert fetch("POST", gw.url + CHAT_URL, json=CHAT).headers.get("x-oaigate-fixture") is None
    gw.settle()
    assert fixture_files(fdir) == [] and len(calls) == 1
    for cassette in ("one", "two"):
        with gw.client(default_headers={MODE: "record", CASSETTE: cassette}) as client:
            client.chat.completions.create(**CHAT)
    gw.settle()
    assert sorted(p.parent.name for p in fixture_files(fdir)) == ["one", "two"]
    for cassette, expected in (("one", "answer 2"), ("two", "answer 3")):
        with gw.client(default_headers={MODE: "replay", CASSETTE: cassette}) as client:
            assert client.chat.completions.create(**CHAT).choices[0].message.content == expected
    with gw.client(default_headers={MODE: "replay"}) as client, pytest.raises(openai.NotFoundError) as missed:
        client.chat.completions.create(**CHAT)  # the default cassette has nothing
    assert "cassette 'default'" in str(missed.value)
    assert len(calls) == 3

    bad_mode = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "sometimes"})
    assert bad_mode.status == 400 and error_of(bad_mode)["param"] == MODE
    assert "record-missing" in error_of(bad_mode)["message"]
    for name in ("../etc", "a/b", ".hidden", "x" * 101, ""):
        bad = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "replay", CASSETTE: name})
        assert bad.status == 400 and error_of(bad)["param"] == CASSETTE, name
    assert len(calls) == 3 and not (fdir.parent / "etc").exists()


# --- 9. ledger -------------------------------------------------------------------------------------

def test_ledger_rows_show_the_fixture_outcome(gateway: GatewayFactory, fdir: Path) -> None:
    gw = gateway(fixtures={"mode": "replay", "dir": str(fdir)})
    recorded = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "record"})
    gw.settle()
    hit = fetch("POST", gw.url + CHAT_URL, json=CHAT)
    miss = fetch("POST", gw.url + CHAT_URL, json={**CHAT, "max_tokens": 3})
    live = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "live"})
    assert (recorded.status, hit.status, miss.status, live.status) == (200, 200, 404, 200)
    rows = gw.rows(expect=4)
    assert [r["fixture"] for r in rows] == ["recorded", "hit", "miss", None]
    rec, hit_row, miss_row, live_row = rows
    assert rec["cost_microusd"] > 0 and rec["cost_microusd"] == live_row["cost_microusd"]
    assert hit_row["cost_microusd"] == 0 and hit_row["replayed_cost_microusd"] == rec["cost_microusd"]
    assert (hit_row["prompt_tokens"], hit_row["completion_tokens"]) == (rec["prompt_tokens"], rec["completion_tokens"])
    assert hit_row["upstream_request_id"] == rec["upstream_request_id"] is not None
    assert miss_row["status"] == 404 and miss_row["error_type"] == "fixture_not_found"
    assert not miss_row["cost_microusd"]


# --- 10. recording never delays the client ---------------------------------------------------------

def test_recording_a_stream_does_not_delay_the_client(gateway: GatewayFactory, upstream: UpstreamFactory,
                                                      fdir: Path) -> None:
    release = threading.Event()
    first = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",' \
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
    rest = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",' \
           b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(first)
        released = await asyncio.to_thread(release.wait, 20)
        await response.write(rest if released else b"data: too late\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)
    gw = recorder(gateway, upstream(app).url + "/v1", fdir)

    async def client() -> tuple[bytes, bytes]:
        body = {**STREAM, "stream_options": {"include_usage": True}}
        async with aiohttp.ClientSession() as session, session.post(
                gw.url + CHAT_URL, json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as response:
            got = b""
            async with asyncio.timeout(10):  # the upstream holds the rest of its stream for 20 s
                while b"\n\n" not in got:
                    got += await response.content.readany()
            release.set()
            return got, await response.read()

    try:
        head, tail = asyncio.run(client())
    finally:
        release.set()
    assert head == first and tail == rest
    gw.settle()
    (file,) = fixture_files(fdir)
    chunks = Fixture.loads(file.read_text()).response.chunk_bytes()
    assert b"".join(c for _, c in chunks) == first + rest and chunks[0][1] == first


# --- 11. compressed upstream answers ---------------------------------------------------------------

def test_compressed_answers_are_stored_decoded(gateway: GatewayFactory, upstream: UpstreamFactory,
                                                fdir: Path) -> None:
    answer = completion(1)
    events = [b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":'
              b'[{"index":0,"delta":{"content":"' + word + b'"},"finish_reason":null}]}\n\n'
              for word in (b"one", b"two", b"three")] + [b"data: [DONE]\n\n"]
    unknown = b"\x0b\x02\x80not-really-brotli\x03"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):  # one gzip stream, flushed event by event
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
            await response.prepare(request)
            packer = zlib.compressobj(wbits=31)
            for event in events:
                await response.write(packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH))
            await response.write(packer.flush())
            await response.write_eof()
            return response
        if body.get("user") == "br":
            return web.Response(body=unknown, headers={"Content-Type": "application/json", "Content-Encoding": "br"})
        return web.Response(body=gzip.compress(compact(answer)),
                            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = upstream(app)
    gw = recorder(gateway, server.url + "/v1", fdir)
    for body in (CHAT, STREAM, {**CHAT, "user": "br", "max_tokens": 1}):
        assert fetch("POST", gw.url + CHAT_URL, json=body).status == 200
    dead = stop_upstream(gw, server)
    stored = {load(p)["request"]["body"]["json"].get("stream", load(p)["request"]["body"]["json"].get("user")):
              load(p)["response"] for p in fixture_files(fdir)}
    assert stored[None]["body"] == {"json": answer}
    assert "content-encoding" not in stored[None]["headers"] and "content-encoding" not in stored[True]["headers"]
    assert "".join(c["text"] for c in stored[True]["chunks"]).encode() == b"".join(events)
    assert stored["br"]["headers"]["content-encoding"] == "br", "bytes it cannot decode keep their encoding"

    gw2 = replayer(gateway, dead, fdir)
    again = fetch("POST", gw2.url + CHAT_URL, json=CHAT)
    assert again.headers["x-oaigate-fixture"] == "hit" and "Content-Encoding" not in again.headers
    assert json.loads(again.body) == answer
    with gw2.client() as client:
        assert client.chat.completions.create(**CHAT).choices[0].message.content == "answer 1"
        assert [c.choices[0].delta.content for c in client.chat.completions.create(**STREAM) if c.choices] == [
            "one", "two", "three"]
    odd = fetch("POST", gw2.url + CHAT_URL, json={**CHAT, "user": "br", "max_tokens": 1})
    assert (odd.body, odd.headers["Content-Encoding"]) == (unknown, "br")


# --- 12. what a client may change, what is kept, and how much ---------------------------------------

ADMIN_KEY, DEV_KEY = "sk-admin-0b1c5e", "sk-dev-9f8e2a"
KEYS = [{"name": "ops", "key": ADMIN_KEY, "admin": True}, {"name": "dev", "key": DEV_KEY}]
SWITCH = "allow_client_override"


def tree_bytes(folder: Path) -> int:
    """Bytes of every file under `folder` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def assert_refused(reply: Any, header: str) -> None:
    """A 403 in OpenAI's envelope, naming the header and the config switch that would allow it."""
    assert reply.status == 403, reply.body
    body = json.loads(reply.body)
    assert list(body) == ["error"] and {"message", "type", "param", "code"} <= set(body["error"])
    error = body["error"]
    assert error["type"] == "permission_error" and error["param"] == header, error
    assert f"[fixtures] {SWITCH}" in error["message"] and header in error["message"], error["message"]


def test_clients_cannot_make_a_live_gateway_record(gateway: GatewayFactory, upstream: UpstreamFactory,
                                                   fdir: Path) -> None:
    """The reported storm: `x-oaigate-fixtures: record` on a gateway configured `live` (a real upstream,
    not the embedded mock) is refused before anything is forwarded or written."""
    app, calls = counter_app()
    gw = gateway(upstream(app).url + "/v1", fixtures={"dir": str(fdir)})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 200_000}]}
    for headers, header in (({MODE: "record"}, MODE), ({MODE: "record-missing"}, MODE), ({MODE: "replay"}, MODE),
                            ({MODE: "record", CASSETTE: "theirs"}, MODE), ({CASSETTE: "theirs"}, CASSETTE)):
        for _ in range(5):
            assert_refused(fetch("POST", gw.url + CHAT_URL, json=big, headers=headers), header)
    with gw.client(default_headers={MODE: "record"}) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**CHAT)
    gw.settle()
    assert tree_bytes(fdir) == 0 and calls == [], "nothing forwarded, nothing written"
    # naming what the operator configured is no override
    same = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "live", CASSETTE: "default"})
    assert same.status == 200 and len(calls) == 1
    rows = gw.rows(expect=27)
    assert [r["status"] for r in rows].count(403) == 26 and all(r["fixture"] is None for r in rows)


def test_a_replay_gateway_keeps_its_cassette(gateway: GatewayFactory, upstream: UpstreamFactory, fdir: Path) -> None:
    """Nor can a client point a replaying gateway at another cassette, or send it live."""
    app, calls = counter_app()
    gw = gateway(upstream(app).url + "/v1", fixtures={"dir": str(fdir), "mode": "replay", "cassette": "ci"})
    assert_refused(fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={CASSETTE: "other"}), CASSETTE)
    assert_refused(fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={MODE: "live"}), MODE)
    assert fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={CASSETTE: "ci"}).status == 404  # a miss, as configured
    assert calls == []


def test_who_may_override(gateway: GatewayFactory, upstream: UpstreamFactory, fdir: Path) -> None:
    app, calls = counter_app()
    real = upstream(app).url + "/v1"
    keyed = gateway(real, keys=KEYS, fixtures={"dir": str(fdir / "keyed")})
    assert_refused(fetch("POST", keyed.url + CHAT_URL, json=CHAT, key=DEV_KEY, headers={MODE: "record"}), MODE)
    with keyed.client(key=ADMIN_KEY, default_headers={MODE: "record", CASSETTE: "ops"}) as client:
        assert client.chat.completions.create(**CHAT).choices[0].message.content == "answer 1"
    keyed.settle()
    assert [p.parent.name for p in fixture_files(fdir / "keyed")] == ["ops"], "an admin key may override"

    opened = gateway(real, fixtures={"dir": str(fdir / "opened"), SWITCH: True})
    with opened.client(default_headers={MODE: "record"}) as client:
        client.chat.completions.create(**CHAT)
    opened.settle()
    assert len(fixture_files(fdir / "opened")) == 1, "the operator allowed it"

    # the embedded mock is a development setup: allowed unless the config says otherwise
    dev = gateway(fixtures={"dir": str(fdir / "dev")})
    assert fetch("POST", dev.url + CHAT_URL, json=CHAT, headers={MODE: "record"}).status == 200
    dev.settle()
    assert len(fixture_files(fdir / "dev")) == 1
    closed = gateway(fixtures={"dir": str(fdir / "closed"), SWITCH: False})
    assert_refused(fetch("POST", closed.url + CHAT_URL, json=CHAT, headers={MODE: "record"}), MODE)
    routed = gateway(routes=[{"model": "gpt-4o*", "base_url": real}], fixtures={"dir": str(fdir / "routed")})
    assert_refused(fetch("POST", routed.url + CHAT_URL, json=CHAT, headers={MODE: "record"}), MODE)
    assert not (fdir / "closed").exists() and not (fdir / "routed").exists()
    assert len(calls) == 2


def test_error_answers_are_not_recorded_unless_asked(gateway: GatewayFactory, fdir: Path) -> None:
    """One client's 503 never becomes what another client replays (`record_errors = false`)."""
    gw = gateway(upstream={"max_retries": 0}, fixtures={"dir": str(fdir), "mode": "record-missing"})
    failed = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={"x-mock-fault": "503"})
    invalid = fetch("POST", gw.url + CHAT_URL, json={**CHAT, "max_tokens": -1})
    assert (failed.status, invalid.status) == (503, 400)
    gw.settle()
    assert fixture_files(fdir) == []
    good = fetch("POST", gw.url + CHAT_URL, json=CHAT)
    assert good.status == 200 and "x-oaigate-fixture" not in good.headers
    gw.settle()
    again = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={"x-mock-fault": "503"})
    assert again.status == 200 and again.headers["x-oaigate-fixture"] == "hit" and again.body == good.body
    assert [r["fixture"] for r in gw.rows(expect=4)] == ["not_recorded", "not_recorded", "recorded", "hit"]

    kept = gateway(upstream={"max_retries": 0}, fixtures={"dir": str(fdir / "errors"), "mode": "record-missing",
                                                          "record_errors": True})
    assert fetch("POST", kept.url + CHAT_URL, json=CHAT, headers={"x-mock-fault": "503"}).status == 503
    kept.settle()
    (file,) = fixture_files(fdir / "errors")
    assert load(file)["response"]["status"] == 503
    replayed = fetch("POST", kept.url + CHAT_URL, json=CHAT)
    assert replayed.status == 503 and replayed.headers["x-oaigate-fixture"] == "hit"


def metric(gw: Gateway, name: str) -> float:
    """A sample's value on the gateway's /metrics (0 when absent)."""
    text = fetch("GET", gw.root + "/metrics", key=None).body.decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_recording_stops_at_the_quota(gateway: GatewayFactory, fdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past `[fixtures] max_bytes` (what the folder already holds counts) nothing more is written, one
    warning says so, a counter counts the rest, and every request is still answered."""
    (fdir / "older").mkdir(parents=True)
    (fdir / "older" / "kept.json").write_text("{}" + " " * 3000)
    quota = 3002 + 6000
    gw = gateway(fixtures={"dir": str(fdir), "mode": "record", "max_bytes": quota})
    over = 'oaigate_fixtures_not_recorded_total{reason="over_quota"}'
    caplog.set_level("WARNING", logger="oaigate.fixtures")
    total = 20
    for n in range(total):
        body = {**CHAT, "messages": [{"role": "user", "content": f"question {n} " + "y" * 400}]}
        reply = fetch("POST", gw.url + CHAT_URL, json=body)
        assert reply.status == 200 and json.loads(reply.body)["choices"][0]["message"]["content"]
        gw.settle()
    with gw.client() as client:  # a stream past the quota is relayed whole
        chunks = list(client.chat.completions.create(**STREAM))
        assert chunks and chunks[-1].choices[0].finish_reason is not None
    gw.settle()
    recorded = len(fixture_files(fdir)) - 1
    assert 1 <= recorded < total and tree_bytes(fdir) <= quota, (recorded, tree_bytes(fdir))
    assert metric(gw, over) == total + 1 - recorded
    warnings = [r for r in caplog.records if r.name == "oaigate.fixtures" and "max_bytes" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    fixtures = [r["fixture"] for r in gw.rows(expect=total + 1)]
    assert fixtures.count("recorded") == recorded and fixtures.count("not_recorded") == total + 1 - recorded

    none = gateway(fixtures={"dir": str(fdir / "none"), "mode": "record", "max_bytes": 0})
    assert fetch("POST", none.url + CHAT_URL, json=CHAT).status == 200
    none.settle()
    assert tree_bytes(fdir / "none") == 0


NASTY_NAMES = ["..", ".", "../x", "../../etc", "a/../../b", "/etc/passwd", "a/b", "..\\x", "%2e%2e", "a..",
               "~", "~root", "-", "x" * 101, "", " ", "a b", "a:b", "a%2Fb", "CON", "a\tb", ".git"]


def test_cassette_names_never_escape_the_fixtures_folder(gateway: GatewayFactory, tmp_path: Path) -> None:
    """Property: whatever a client names, the cassette is a folder directly inside the fixtures folder,
    or the request is a 400 naming the header; nothing is written anywhere else."""
    fdir = tmp_path / "inside" / "fixtures"
    gw = gateway(fixtures={"dir": str(fdir), "mode": "record"})
    accepted: set[str] = set()
    printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.sampled_from(NASTY_NAMES) | st.text(printable, max_size=12)
           | st.builds("".join, st.lists(st.sampled_from(["..", "/", "\\", ".", "a", "%2f"]), max_size=6)))
    def check(name: str) -> None:
        reply = fetch("POST", gw.url + CHAT_URL, json=CHAT, headers={CASSETTE: name})
        assert reply.status in (200, 400), reply.body
        if reply.status == 400:
            assert error_of(reply)["param"] == CASSETTE
        else:
            accepted.add(name.strip())

    check()
    gw.settle()
    assert accepted, "some names are fine"
    for name in accepted:
        assert (fdir / name).resolve().parent == fdir.resolve(), name
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and fdir not in p.parents
               and not p.name.startswith("ledger-")]
    assert outside == []
    assert {p.parent for p in fdir.rglob("*.json")} <= {fdir / name for name in accepted}
