"""`oaigate mock --fixtures DIR`: recorded answers first, generated ones for everything else."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from mockserver.app import make_app
from mockserver.settings import MockSettings
from proxy.wire.fixtures import Fixture, MatchPolicy, RecordedRequest, RecordedResponse, request_key
from proxy.wire.fixtures.matching import normalized_body
from proxy.wire.fixtures.store import Cassette
from tests.http import AUTH, post, sse_payloads
from tests.servers import ServerThread

QUESTION = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Which planet is largest?"}]}
STREAM = {**QUESTION, "stream": True}
RECORDED_STREAM = (b'data: {"id":"chatcmpl-rec","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
                   b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Jupiter."},"finish_reason":null}]}'
                   b'\n\n: keep-alive\n\n',
                   b'data: {"id":"chatcmpl-rec","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
                   b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


def completion(text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-recorded", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}


def record(folder: Path, body: dict[str, Any], *, json_body: dict[str, Any] | None = None,
           chunks: tuple[bytes, ...] | None = None) -> None:
    """Write a fixture for `POST /v1/chat/completions` with `body` into the cassette `folder`."""
    normalized = normalized_body(json.dumps(body).encode(), "application/json")
    key = request_key("POST", "/v1/chat/completions", "", normalized, MatchPolicy())
    if chunks is None:
        response = RecordedResponse(200, {"content-type": "application/json"}, body={"json": json_body})
    else:
        response = RecordedResponse(200, {"content-type": "text/event-stream; charset=utf-8"},
                                    chunks=[{"t": i * 0.01, "text": c.decode()} for i, c in enumerate(chunks)])
    fixture = Fixture(RecordedRequest("POST", "/v1/chat/completions", "", normalized, key), response,
                      "2026-11-23T00:00:00Z")
    Cassette(folder, folder.name).save(fixture, "gpt-4o-mini")


@pytest.fixture
def fixtures_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fixtures"
    record(root / "planets", QUESTION, json_body=completion("Jupiter, by far."))
    record(root / "planets", STREAM, chunks=RECORDED_STREAM)
    record(root / "saturn", QUESTION, json_body=completion("From the other cassette."))
    return root


@pytest.fixture
def replaying(fixtures_dir: Path) -> Iterator[str]:
    server = ServerThread(lambda: make_app(MockSettings(fixtures=str(fixtures_dir)))).start()
    yield server.url + "/v1"
    server.stop()


def test_a_recorded_request_gets_the_first_recording_in_cassette_name_order(replaying: str) -> None:
    with openai.OpenAI(base_url=replaying, api_key="sk-test", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(**QUESTION)
        assert raw.headers["x-oaigate-fixture"] == "hit"
        assert raw.parse().choices[0].message.content == "Jupiter, by far."


def test_a_cassette_header_chooses_where_to_look(replaying: str) -> None:
    reply = post(replaying + "/chat/completions", QUESTION, headers={**AUTH, "x-oaigate-cassette": "saturn"})
    assert reply.json()["choices"][0]["message"]["content"] == "From the other cassette."


def test_a_recorded_stream_is_replayed_byte_for_byte(replaying: str) -> None:
    reply = post(replaying + "/chat/completions", STREAM)
    assert reply.status == 200
    assert reply.body == b"".join(RECORDED_STREAM)
    with openai.OpenAI(base_url=replaying, api_key="sk-test", max_retries=0) as client:
        deltas = [c.choices[0].delta.content for c in client.chat.completions.create(**STREAM) if c.choices]
    assert "".join(d for d in deltas if d) == "Jupiter."


def test_anything_not_recorded_is_generated(replaying: str, mock_url: str) -> None:
    other = {**QUESTION, "messages": [{"role": "user", "content": "Which planet is smallest?"}]}
    replayed = post(replaying + "/chat/completions", other)
    assert "x-oaigate-fixture" not in replayed.headers
    assert replayed.body == post(mock_url + "/chat/completions", other).body  # same as a plain mock
    embedded = post(replaying + "/embeddings", {"model": "text-embedding-3-small", "input": "x"})
    assert embedded.status == 200 and len(embedded.json()["data"][0]["embedding"]) == 1536


def test_a_cassette_that_does_not_hold_the_request_falls_back_to_generating(replaying: str) -> None:
    reply = post(replaying + "/chat/completions", STREAM, headers={**AUTH, "x-oaigate-cassette": "saturn"})
    assert "x-oaigate-fixture" not in reply.headers
    assert sse_payloads(reply.body)[0]["model"] == "gpt-4o-mini"
    assert reply.body != b"".join(RECORDED_STREAM)


def test_authentication_and_faults_still_apply(replaying: str) -> None:
    unauthenticated = post(replaying + "/chat/completions", QUESTION, headers={})
    assert unauthenticated.status == 401
    faulted = post(replaying + "/chat/completions", QUESTION, headers={**AUTH, "x-mock-fault": "503"})
    assert faulted.status == 503


def test_an_unreadable_fixture_is_skipped_not_fatal(fixtures_dir: Path) -> None:
    (fixtures_dir / "planets" / "broken.json").write_text("{not json")
    server = ServerThread(lambda: make_app(MockSettings(fixtures=str(fixtures_dir)))).start()
    try:
        reply = post(server.url + "/v1/chat/completions", QUESTION)
        assert reply.headers["x-oaigate-fixture"] == "hit"
    finally:
        server.stop()


def test_the_command_line_refuses_a_missing_folder(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mockserver", "--fixtures", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_fixtures_recorded_with_other_matching_rules_are_keyed_their_way(tmp_path: Path) -> None:
    """The gateway recorded with `redact_fields = ["safety_identifier"]` (so it was left out of the key)
    and a secret in the query; the mock must still find the fixture."""
    root = tmp_path / "fixtures"
    ignored = ("user", "metadata", "safety_identifier")
    body = {**QUESTION, "safety_identifier": "[redacted]"}
    normalized = normalized_body(json.dumps(body).encode(), "application/json")
    policy = MatchPolicy(ignored)
    key = request_key("POST", "/v1/chat/completions", "api_key=[redacted]", normalized, policy)
    fixture = Fixture(RecordedRequest("POST", "/v1/chat/completions", "api_key=[redacted]", normalized, key, ignored),
                      RecordedResponse(200, {"content-type": "application/json"},
                                       body={"json": completion("Recorded with a redacted field.")}),
                      "2026-11-23T00:00:00Z")
    Cassette(root / "redacting", "redacting").save(fixture, "gpt-4o-mini")
    server = ServerThread(lambda: make_app(MockSettings(fixtures=str(root)))).start()
    try:
        reply = post(server.url + "/v1/chat/completions?api_key=sk-live-secret",
                     {**QUESTION, "safety_identifier": "user-4711"})
        assert reply.headers["x-oaigate-fixture"] == "hit"
        assert reply.json()["choices"][0]["message"]["content"] == "Recorded with a redacted field."
    finally:
        server.stop()


def test_a_missing_fixtures_folder_in_config_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[mock]\nfixtures = "{tmp_path / "absent"}"\n')
    result = subprocess.run([sys.executable, "-m", "mockserver", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "mock.fixtures" in result.stderr and "no such folder" in result.stderr
    assert "Traceback" not in result.stderr
