"""Request validation edge cases: body size, routing, JSON parsing, nesting, and the rule objects."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from mockserver.app import make_app
from mockserver.engine.validation import (
    MAX_DEPTH,
    Arr,
    Bool,
    Int,
    Nullable,
    Num,
    Obj,
    OneOf,
    Str,
    nested_deeper_than,
    type_name,
)
from mockserver.errors import MockError
from mockserver.settings import MockSettings
from tests.openapi import requires_spec, validate
from tests.servers import ServerThread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
POST_BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/moderations": {"input": "hi"},
}
PARSE_ERROR = "We could not parse the JSON body of your request."


class Reply:
    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def error(self) -> dict[str, Any]:
        """The envelope's error object, checked for OpenAI's exact shape."""
        assert self.headers["content-type"].startswith("application/json"), self.headers
        body = json.loads(self.body)
        assert list(body) == ["error"]
        error = body["error"]
        assert list(error)[:4] == ["message", "type", "param", "code"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        return error


def send(base: str, method: str, path: str, data: bytes = b"", headers: dict[str, str] | None = None,
         chunked: bool = False) -> Reply:
    """One raw HTTP/1.1 request on its own connection; the whole reply up to the server's close."""
    parts = urlsplit(base)
    head = {"Host": "127.0.0.1", "Authorization": "Bearer sk-test", "Connection": "close",
            "Content-Type": "application/json", **(headers or {})}
    if chunked:
        head["Transfer-Encoding"] = "chunked"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 500]), data[i:i + 500])
                           for i in range(0, len(data), 500)) + b"0\r\n\r\n"
    else:
        head["Content-Length"] = str(len(data))
        payload = data
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(request.encode() + b"\r\n" + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return Reply(received)


def post_json(base: str, path: str, body: Any) -> Reply:
    return send(base, "POST", path, json.dumps(body).encode())


@pytest.fixture(scope="module")
def small_server() -> Iterator[ServerThread]:
    server = ServerThread(lambda: make_app(MockSettings(max_body_bytes=1000))).start()
    yield server
    server.stop()


# --- body size -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_oversized_body_is_413(small_server: ServerThread, path: str, chunked: bool) -> None:
    body = {**POST_BODIES[path], "user": "u" * 2000}
    reply = send(small_server.url, "POST", path, json.dumps(body).encode(), chunked=chunked)
    assert reply.status == 413
    error = reply.error()
    assert error["type"] == "invalid_request_error"
    assert "too large" in error["message"].lower()


def test_body_at_the_limit_is_accepted(small_server: ServerThread) -> None:
    body = {"model": "text-embedding-3-small", "input": "x", "user": ""}
    size = len(json.dumps(body).encode())
    body["user"] = "u" * (1000 - size)
    data = json.dumps(body).encode()
    assert len(data) == 1000
    assert send(small_server.url, "POST", "/v1/embeddings", data).status == 200
    body["user"] += "u"
    assert send(small_server.url, "POST", "/v1/embeddings", json.dumps(body).encode()).status == 413


def test_oversized_body_with_sdk(small_server: ServerThread) -> None:
    with openai.OpenAI(base_url=small_server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as info:
            c.embeddings.create(model="text-embedding-3-small", input=["a long line of text"] * 100)
    assert info.value.status_code == 413
    assert info.value.type == "invalid_request_error"


# --- routing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "shown"),
    [
        ("POST", "/v1/nope", "POST /v1/nope"),
        ("GET", "/v1/nope/deeper?x=1", "GET /v1/nope/deeper"),
        ("POST", "/v1/chat/completion", "POST /v1/chat/completion"),
        ("POST", "/v1", "POST /v1"),
        ("GET", "/nope", "GET /nope"),
        ("POST", "/", "POST /"),
        ("POST", "/v2/chat/completions", "POST /v2/chat/completions"),
    ],
)
def test_unknown_path_is_404_envelope(mock_server: ServerThread, method: str, path: str, shown: str) -> None:
    reply = send(mock_server.url, method, path, b"{}")
    assert reply.status == 404
    error = reply.error()
    assert error == {"message": f"Invalid URL ({shown})", "type": "invalid_request_error", "param": None,
                     "code": None}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/embeddings"),
        ("PUT", "/v1/moderations"),
        ("PATCH", "/v1/completions"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models"),
        ("POST", "/healthz"),
    ],
)
def test_wrong_method_is_404_or_405_envelope(mock_server: ServerThread, method: str, path: str) -> None:
    reply = send(mock_server.url, method, path, b"{}")
    assert reply.status in (404, 405)
    assert reply.error()["message"] == f"Invalid URL ({method} {path})"


def test_unknown_path_with_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.post("/nope", cast_to=object, body={})
    assert info.value.body == {"message": "Invalid URL (POST /v1/nope)", "type": "invalid_request_error",
                               "param": None, "code": None}


def test_missing_key_is_401_envelope(mock_server: ServerThread) -> None:
    for path, body in POST_BODIES.items():
        reply = send(mock_server.url, "POST", path, json.dumps(body).encode(), {"Authorization": None})  # type: ignore[dict-item]
        assert reply.status == 401, path
        assert "API key" in reply.error()["message"]


def test_healthz(mock_server: ServerThread) -> None:
    reply = send(mock_server.url, "GET", "/healthz", headers={"Authorization": None})  # type: ignore[dict-item]
    assert reply.status == 200
    assert json.loads(reply.body)["status"] == "ok"


@requires_spec
def test_routing_errors_match_openapi(mock_server: ServerThread, small_server: ServerThread) -> None:
    validate("ErrorResponse", json.loads(send(mock_server.url, "POST", "/v1/nope", b"{}").body))
    validate("ErrorResponse", json.loads(send(mock_server.url, "PUT", "/v1/chat/completions").body))
    big = send(small_server.url, "POST", "/v1/embeddings", b"x" * 2000)
    assert big.status == 413
    validate("ErrorResponse", json.loads(big.body))


# --- JSON parsing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b"{'single': 'quotes'}", b"null", b'{"a": NaN}', b'{"a": Infinity}',
     b'{"model": "x"} trailing', b'{"input": "\xff\xfe"}', b"\xef\xbb\xbf{}"],
)
@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_unparseable_body_is_400(mock_server: ServerThread, path: str, data: bytes) -> None:
    reply = send(mock_server.url, "POST", path, data)
    assert reply.status == 400
    error = reply.error()
    assert error["message"].startswith(PARSE_ERROR)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("data", "kind"), [(b"[]", "an array"), (b"[{}]", "an array"), (b'"text"', "a scalar"),
                                             (b"42", "a scalar"), (b"true", "a scalar")])
def test_non_object_body_is_400(mock_server: ServerThread, data: bytes, kind: str) -> None:
    reply = send(mock_server.url, "POST", "/v1/chat/completions", data)
    assert reply.status == 400
    assert reply.error()["message"] == f"Invalid type for request body: expected an object, but got {kind} instead."


def _nested(depth: int) -> str:
    """A chat body whose tool parameters make the whole body `depth` arrays/objects deep."""
    # body(1) > tools(2) > tool(3) > function(4) > parameters(5) > ... each level adds one object
    inner = "{}"
    for _ in range(depth - 5):
        inner = '{"a":' + inner + "}"
    return ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
            '"tools":[{"type":"function","function":{"name":"f","parameters":' + inner + "}}]}")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 254, 300, 1000])
def test_too_deeply_nested_body_is_400_not_500(mock_server: ServerThread, depth: int) -> None:
    reply = send(mock_server.url, "POST", "/v1/chat/completions", _nested(depth).encode())
    assert reply.status == 400
    reply.error()


def test_nesting_at_the_limit_is_accepted(mock_server: ServerThread) -> None:
    data = _nested(MAX_DEPTH)
    assert not nested_deeper_than(json.loads(data), MAX_DEPTH)
    assert nested_deeper_than(json.loads(_nested(MAX_DEPTH + 1)), MAX_DEPTH)
    assert send(mock_server.url, "POST", "/v1/chat/completions", data.encode()).status == 200


@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_deep_junk_in_any_field_is_400(mock_server: ServerThread, path: str) -> None:
    deep = "[" * 300 + "]" * 300
    body = json.dumps(POST_BODIES[path])[:-1] + ', "user": ' + deep + "}"
    reply = send(mock_server.url, "POST", path, body.encode())
    assert reply.status == 400
    reply.error()


# --- field validation over HTTP --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message", "param", "code"),
    [
        ("/v1/chat/completions", {"model": "gpt-4o"}, "Missing required parameter: 'messages'.", "messages",
         "missing_required_parameter"),
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, "Missing required parameter: 'model'.", "model",
         "missing_required_parameter"),
        ("/v1/chat/completions", {**CHAT, "n": "2"},
         "Invalid type for 'n': expected an integer, but got a string instead.", "n", "invalid_type"),
        ("/v1/chat/completions", {**CHAT, "n": 0},
         "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.", "n",
         "integer_below_min_value"),
        ("/v1/chat/completions", {**CHAT, "temperature": 2.5},
         "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead.",
         "temperature", "decimal_above_max_value"),
        ("/v1/chat/completions", {**CHAT, "top_p": -0.1},
         "Invalid 'top_p': decimal below minimum value. Expected a value >= 0, but got -0.1 instead.", "top_p",
         "decimal_below_min_value"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"},
         "Invalid type for 'stream': expected a boolean, but got a string instead.", "stream", "invalid_type"),
        ("/v1/chat/completions", {**CHAT, "messages": []},
         "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "
         "instead.", "messages", "empty_array"),
        ("/v1/chat/completions", {**CHAT, "bogus": 1}, "Unrecognized request argument supplied: bogus", None, None),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "logprobs": 6},
         "Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got 6 instead.", "logprobs",
         "integer_above_max_value"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x", "encoding_format": "hex"},
         "Invalid value: 'hex'. Supported values are: 'float', and 'base64'.", "encoding_format", "invalid_value"),
        ("/v1/moderations", {"input": "x", "extra": True}, "Unrecognized request argument supplied: extra", None,
         None),
    ],
)
def test_field_errors_are_worded_like_openai(mock_server: ServerThread, path: str, body: Any, message: str,
                                             param: str | None, code: str | None) -> None:
    reply = post_json(mock_server.url, path, body)
    assert reply.status == 400
    assert reply.error() == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


@pytest.mark.parametrize(("value", "ok"), [(0, True), (2, True), (2.0, True), (1e-9, True), (2.0000001, False),
                                           (-1e-9, False), (True, False), ("1", False), (None, True)])
def test_temperature_boundaries(mock_server: ServerThread, value: Any, ok: bool) -> None:
    reply = post_json(mock_server.url, "/v1/chat/completions", {**CHAT, "temperature": value})
    assert reply.status == (200 if ok else 400)
    if not ok:
        assert reply.error()["param"] == "temperature"


def test_sdk_surfaces_validation_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc]
    assert info.value.param == "messages[0].role"
    assert info.value.code == "invalid_value"


# --- the rule objects ------------------------------------------------------------------------------------------------


def rejects(rule: Any, value: Any, path: str = "f") -> MockError:
    with pytest.raises(MockError) as info:
        rule.check(value, path)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    ("value", "name"),
    [(None, "null"), (True, "a boolean"), (3, "an integer"), (3.5, "a decimal"), ("s", "a string"),
     ([], "an array"), ({}, "an object")],
)
def test_type_names(value: Any, name: str) -> None:
    assert type_name(value) == name


def test_int_and_num_rules() -> None:
    Int(1, 3).check(1, "f")
    Int(1, 3).check(3, "f")
    assert rejects(Int(), True).code == "invalid_type"  # a boolean is not an integer
    assert rejects(Int(), 1.0).code == "invalid_type"
    assert rejects(Int(1, 3), 4).code == "integer_above_max_value"
    assert rejects(Int(1, 3), 0).code == "integer_below_min_value"
    Num(0, 1).check(1, "f")  # an integer is a fine decimal
    assert rejects(Num(), False).code == "invalid_type"
    assert rejects(Num(0, 1), 1.5).message == (
        "Invalid 'f': decimal above maximum value. Expected a value <= 1, but got 1.5 instead.")


def test_str_rules() -> None:
    Str(("a", "b")).check("b", "f")
    error = rejects(Str(("a", "b", "c")), "d")
    assert error.message == "Invalid value: 'd'. Supported values are: 'a', 'b', and 'c'."
    assert rejects(Str(("only",)), "x").message == "Invalid value: 'x'. Supported values are: 'only'."
    assert rejects(Str(min_len=2), "x").code == "string_below_min_length"
    assert rejects(Str(max_len=2), "xyz").code == "string_above_max_length"
    assert rejects(Str(), 5).message == "Invalid type for 'f': expected a string, but got an integer instead."


def test_arr_rules() -> None:
    Arr(Int(), min_len=1, max_len=2).check([1, 2], "f")
    assert rejects(Arr(min_len=1), []).code == "empty_array"
    assert rejects(Arr(min_len=2), [1]).code == "array_below_min_length"
    assert rejects(Arr(max_len=1), [1, 2]).code == "array_above_max_length"
    error = rejects(Arr(Int()), [1, "2"])
    assert (error.param, error.code) == ("f[1]", "invalid_type")


def test_obj_rules() -> None:
    rule = Obj({"a": Int(), "b": Obj({"c": Bool()}, required=("c",))}, required=("a",))
    rule.check({"a": 1, "b": {"c": True}}, "")
    assert rejects(rule, {}, "").message == "Missing required parameter: 'a'."
    nested = rejects(rule, {"a": 1, "b": {}}, "")
    assert (nested.param, nested.code) == ("b.c", "missing_required_parameter")
    top = rejects(rule, {"a": 1, "z": 0}, "")
    assert (top.message, top.param, top.code) == ("Unrecognized request argument supplied: z", None, None)
    inner = rejects(rule, {"a": 1, "b": {"c": True, "z": 0}}, "")
    assert (inner.param, inner.code) == ("b.z", "unknown_parameter")
    Obj(extra=True).check({"anything": [1, {"x": None}]}, "f")
    assert rejects(Obj(values=Int()), {"k": "v"}).param == "f.k"


def test_nullable_and_oneof_rules() -> None:
    Nullable(Int()).check(None, "f")
    assert rejects(Nullable(Int()),
                   "x").message == "Invalid type for 'f': expected an integer, but got a string instead."
    rule = OneOf(Str(), Arr(Str(), max_len=1))
    rule.check("x", "f")
    rule.check(["x"], "f")
    assert rejects(rule, 3).message == (
        "Invalid type for 'f': expected one of a string or an array, but got an integer instead.")
    assert rejects(rule, ["x", "y"]).code == "array_above_max_length"


def test_depth_check_is_iterative_and_exact() -> None:
    value: Any = 0
    for _ in range(5000):  # far beyond Python's recursion limit
        value = [value]
    assert nested_deeper_than(value, 100)
    assert nested_deeper_than([[[]]], 2)
    assert not nested_deeper_than([[[]]], 3)
    assert not nested_deeper_than({"a": [1, 2, {"b": "c"}]}, 3)
    assert nested_deeper_than({"a": [1, 2, {"b": []}]}, 3)
    assert not nested_deeper_than("scalar", 0)
    assert not nested_deeper_than({"wide": list(range(100_000))}, 2)
    error = rejects(Obj(extra=True), value, "")
    assert error.code == "invalid_value" and error.param is None
