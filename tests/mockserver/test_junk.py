"""Property: no junk a client sends makes the mock answer 5xx; every 4xx is OpenAI's error envelope.

Bodies are posted raw (one socket per request, no SDK in the way) to every endpoint: random JSON
values, random bytes, and random mutations of valid requests (a key dropped, a value replaced by
random JSON, a key added). The server's `sleep` is a no-op so fuzzed `x-mock-latency` costs nothing.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.servers import ServerThread

POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/moderations")

VALID: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [
        {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "What is a mock server?"}],
         "max_tokens": 20, "temperature": 0.5, "n": 2, "stop": ["\n\n"], "logprobs": True, "top_logprobs": 2},
        {"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe this"},
                                                   {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
        {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Weather in Paris?"}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
             "required": ["city"]}}}], "tool_choice": "required", "parallel_tool_calls": True},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "A person"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": {
             "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                              "tags": {"type": "array", "items": {"type": "string"}}},
             "required": ["name", "age", "tags"], "additionalProperties": False}}}},
        {"model": "o4-mini", "max_completion_tokens": 300, "reasoning_effort": "low",
         "messages": [{"role": "developer", "content": "Think."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                       "function": {"name": "calc", "arguments": "{\"x\": 1}"}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "4"}]},
    ],
    "/v1/completions": [
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "max_tokens": 12, "logprobs": 2,
         "echo": True, "n": 2, "stop": "."},
        {"model": "gpt-3.5-turbo-instruct", "prompt": [[1212, 318], [40, 1093]], "stream": True, "suffix": "end"},
    ],
    "/v1/embeddings": [
        {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"], "dimensions": 8,
         "encoding_format": "base64"},
        {"model": "text-embedding-3-large", "input": [[1, 2, 3], [4, 5]], "dimensions": 4, "user": "u"},
        {"model": "text-embedding-ada-002", "input": [100, 200, 300]},
    ],
    "/v1/moderations": [
        {"input": "I will kill the process"},
        {"model": "omni-moderation-latest",
         "input": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"model": "text-moderation-latest", "input": ["a", "b"]},
    ],
}

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                | st.text(max_size=20) | st.sampled_from(["", "gpt-4o-mini", "user", "text", "image_url", "float"]))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
latency = st.one_of(
    st.none(),
    st.builds(lambda t, c: f"ttft_ms={t};chunk_ms={c}", st.integers(0, 10**6), st.integers(0, 10**6)),
    st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=30),
)


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key/index path inside a JSON value (not the root)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix + (index,)
            yield from _paths(item, prefix + (index,))


def _parent(root: Any, path: tuple) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


def _same_type(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type, so the edit often passes validation and reaches generation."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-3, 5000) | st.sampled_from([0, 1, 2, 127, 128, 129, 2**31, 2**63 - 1])
    if isinstance(value, float):
        return st.floats(-0.5, 2.5, allow_nan=False)
    if isinstance(value, str):
        return st.text(max_size=30) | st.sampled_from(["", " ", "\n", "<|endoftext|>", "x" * 300])
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=6) if value else st.just([])
    return st.just(value)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid body with 1-3 random edits: drop a key/item, replace a value (by any JSON or a value of
    the same type), add a key."""
    path = draw(st.sampled_from(POST_PATHS))
    body = copy.deepcopy(draw(st.sampled_from(VALID[path])))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(list(_paths(body)) or [()]))
        action = draw(st.sampled_from(("drop", "replace", "tweak", "tweak", "add")))
        if not where:
            continue
        parent = _parent(body, where)
        if action == "drop":
            del parent[where[-1]]
        elif action == "replace":
            parent[where[-1]] = draw(json_values)
        elif action == "tweak":
            parent[where[-1]] = draw(_same_type(parent[where[-1]]))
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return path, json.dumps(body).encode()


def send(base: str, method: str, path: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int,
                                                                                                         dict, bytes]:
    parts = urlsplit(base)
    head = {"Host": "127.0.0.1", "Authorization": "Bearer sk-test", "Connection": "close",
            "Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request.encode("latin-1") + data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head_raw, _, body = received.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), f"no HTTP response: {received[:200]!r}"
    status = int(lines[0].split()[1])
    resp_headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if resp_headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, resp_headers, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, "truncated chunked body"
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2:]
    raise AssertionError("chunked body without its final chunk")


def check(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    """The property: below 500; a 4xx is the envelope; a 200 is a whole JSON body or a whole SSE stream."""
    assert status < 500, f"{what} -> {status}: {body[:300]!r}"
    ctype = headers.get("content-type", "")
    if status >= 400:
        assert ctype.startswith("application/json"), f"{what} -> {status} {ctype}"
        envelope = json.loads(body)
        assert isinstance(envelope, dict) and list(envelope) == ["error"], envelope
        error = envelope["error"]
        assert isinstance(error, dict)
        assert isinstance(error.get("message"), str) and error["message"]
        assert isinstance(error.get("type"), str)
        assert "param" in error and (error["param"] is None or isinstance(error["param"], str))
        assert "code" in error and (error["code"] is None or isinstance(error["code"], str))
        return
    assert status == 200, f"{what} -> {status}"
    if ctype.startswith("text/event-stream"):
        assert body.endswith(b"data: [DONE]\n\n"), f"{what}: incomplete stream"
    else:
        assert ctype.startswith("application/json")
        assert isinstance(json.loads(body), dict)


async def _no_sleep(seconds: float) -> None:
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread(lambda: make_app(MockSettings(), sleep=_no_sleep)).start()
    yield thread
    thread.stop()


JUNK = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@JUNK
@given(path=st.sampled_from(POST_PATHS), value=json_values)
def test_random_json_never_5xx(server: ServerThread, path: str, value: Any) -> None:
    status, headers, body = send(server.url, "POST", path, json.dumps(value).encode())
    check(status, headers, body, f"POST {path} {value!r}")


@JUNK
@given(path=st.sampled_from(POST_PATHS), fields=st.dictionaries(
    st.sampled_from(["model", "messages", "input", "prompt", "n", "stream", "dimensions", "encoding_format",
                     "max_tokens", "temperature", "stop", "tools", "logprobs", "stream_options", "echo"]),
    json_values, max_size=6))
def test_random_fields_never_5xx(server: ServerThread, path: str, fields: dict[str, Any]) -> None:
    status, headers, body = send(server.url, "POST", path, json.dumps(fields).encode())
    check(status, headers, body, f"POST {path} {fields!r}")


@JUNK
@given(path=st.sampled_from(POST_PATHS), data=st.binary(max_size=300))
def test_random_bytes_never_5xx(server: ServerThread, path: str, data: bytes) -> None:
    status, headers, body = send(server.url, "POST", path, data)
    check(status, headers, body, f"POST {path} {data!r}")


@settings(JUNK, max_examples=1000)
@given(case=mutated(), pacing=latency)
def test_mutated_valid_requests_never_5xx(server: ServerThread, case: tuple[str, bytes], pacing: str | None) -> None:
    path, data = case
    headers = {} if pacing is None else {"x-mock-latency": pacing}
    status, resp_headers, body = send(server.url, "POST", path, data, headers)
    check(status, resp_headers, body, f"POST {path} {data!r} latency={pacing!r}")


@JUNK
@given(model_id=st.text(min_size=1, max_size=40))
def test_random_model_ids_never_5xx(server: ServerThread, model_id: str) -> None:
    status, headers, body = send(server.url, "GET", "/v1/models/" + quote(model_id, safe=""), b"")
    check(status, headers, body, f"GET model {model_id!r}")
    assert status in (200, 404)


@JUNK
@given(value=st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=40))
def test_random_fault_headers_are_400_or_the_fault(server: ServerThread, value: str) -> None:
    kind = value.split(";")[0].strip()
    assume(kind not in ("timeout", "disconnect"))  # asked-for hangs and cuts: test_faults.py covers them
    status, headers, body = send(server.url, "POST", "/v1/moderations", b'{"input": "x"}', {"x-mock-fault": value})
    if kind in ("500", "503") and status == int(kind):
        return  # a well-formed server-error fault, asked for
    check(status, headers, body, f"x-mock-fault {value!r}")


def test_every_valid_template_is_valid(server: ServerThread) -> None:
    """The mutation seeds really are valid: otherwise the mutation property tests little."""
    for path, bodies in VALID.items():
        for body in bodies:
            status, _, answer = send(server.url, "POST", path, json.dumps(body).encode())
            assert status == 200, (path, body, answer[:300])
