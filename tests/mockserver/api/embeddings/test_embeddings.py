"""POST /v1/embeddings end to end: the real openai SDK (sync and async) and raw HTTP against the mock."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import struct
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from proxy.wire.tokens import count_text, encoding_for_model
from tests.openapi import requires_spec, validate

SMALL, LARGE, ADA = "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"


def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """POST JSON to the mock over plain http.client; returns status, lower-cased headers and parsed JSON."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json",
                              **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def norm(vec: list[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in vec))


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def float32(values: list[float]) -> list[float]:
    """`values` rounded to the nearest float32, as a base64 answer carries them."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def floats(client: openai.OpenAI, text: Any, model: str = SMALL, **kw: Any) -> list[list[float]]:
    resp = client.embeddings.create(model=model, input=text, encoding_format="float", **kw)
    return [d.embedding for d in resp.data]


# --- dimensions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "dims"), [(SMALL, 1536), (LARGE, 3072), (ADA, 1536)])
def test_default_dimensions_per_model(client: openai.OpenAI, model: str, dims: int) -> None:
    resp = client.embeddings.create(model=model, input="The quick brown fox", encoding_format="float")
    assert resp.object == "list"
    assert resp.model == model
    assert [d.index for d in resp.data] == [0]
    assert resp.data[0].object == "embedding"
    assert len(resp.data[0].embedding) == dims
    assert norm(resp.data[0].embedding) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(("model", "dims"), [(SMALL, 256), (SMALL, 1), (LARGE, 1024), (LARGE, 3072)])
def test_dimensions_are_honoured_and_renormalised(client: openai.OpenAI, model: str, dims: int) -> None:
    [vec] = floats(client, "Shorter vectors please", model=model, dimensions=dims)
    assert len(vec) == dims
    assert norm(vec) == pytest.approx(1.0, abs=1e-9)


def test_shortened_vector_is_a_prefix_of_the_full_one_rescaled(client: openai.OpenAI) -> None:
    # OpenAI's Matryoshka embeddings: a shortened vector points the same way as the full one's prefix.
    [full] = floats(client, "prefix property", model=LARGE)
    [short] = floats(client, "prefix property", model=LARGE, dimensions=64)
    assert cosine(full[:64], short) == pytest.approx(1.0, abs=1e-12)


def test_dimensions_rejected_for_ada(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=ADA, input="hi", dimensions=512)
    assert info.value.status_code == 400
    assert info.value.param == "dimensions"
    assert "does not support specifying dimensions" in info.value.message


@pytest.mark.parametrize(("model", "dims"), [(SMALL, 1537), (LARGE, 3073), (SMALL, 10**12)])
def test_dimensions_above_model_maximum_rejected(client: openai.OpenAI, model: str, dims: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=model, input="hi", dimensions=dims)
    assert info.value.param == "dimensions"
    assert info.value.code == "integer_above_max_value"


@pytest.mark.parametrize("dims", [0, -5, "256", 2.5, True])
def test_bad_dimensions_values_rejected(mock_server: Any, dims: Any) -> None:
    status, _, body = post(mock_server.url, "/v1/embeddings", {"model": SMALL, "input": "hi", "dimensions": dims})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "dimensions"


# --- encoding_format ---------------------------------------------------------------------------------


def test_base64_is_little_endian_float32_of_the_float_answer(mock_server: Any) -> None:
    request = {"model": SMALL, "input": ["alpha beta", "gamma"], "dimensions": 300}
    s1, _, as_float = post(mock_server.url, "/v1/embeddings", {**request, "encoding_format": "float"})
    s2, _, as_b64 = post(mock_server.url, "/v1/embeddings", {**request, "encoding_format": "base64"})
    assert (s1, s2) == (200, 200)
    assert len(as_b64["data"]) == 2
    for f_item, b_item in zip(as_float["data"], as_b64["data"], strict=True):
        assert isinstance(b_item["embedding"], str)
        raw = base64.b64decode(b_item["embedding"], validate=True)
        assert len(raw) == 4 * 300
        decoded = list(struct.unpack("<300f", raw))
        assert decoded == float32(f_item["embedding"])
        # a big-endian reading would give garbage, not the same vector
        assert list(struct.unpack(">300f", raw)) != decoded
    assert as_b64["usage"] == as_float["usage"]


def test_sdk_default_asks_for_base64_and_decodes_to_floats(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model=SMALL, input="decode me")
    wire = json.loads(raw.http_response.read())
    assert isinstance(wire["data"][0]["embedding"], str)  # the SDK asked for base64 on the wire
    parsed = raw.parse()
    vec = parsed.data[0].embedding
    assert isinstance(vec, list) and len(vec) == 1536
    assert all(isinstance(v, float) for v in vec)
    [as_float] = floats(client, "decode me")
    assert vec == float32(as_float)


def test_unknown_encoding_format_rejected(mock_server: Any) -> None:
    status, _, body = post(mock_server.url, "/v1/embeddings",
                           {"model": SMALL, "input": "x", "encoding_format": "float16"})
    assert status == 400
    assert body["error"]["param"] == "encoding_format"


# --- input shapes ------------------------------------------------------------------------------------


def test_string_and_list_of_strings(client: openai.OpenAI) -> None:
    [single] = floats(client, "first text")
    many = floats(client, ["first text", "second text", "third"])
    assert len(many) == 3
    assert many[0] == single  # the same text embeds the same inside a batch
    assert many[1] != many[0] and many[2] != many[1]


def test_token_array_embeds_like_its_text(client: openai.OpenAI) -> None:
    enc = encoding_for_model(SMALL)
    text = "tokens are just text in disguise"
    [from_text] = floats(client, text)
    [from_tokens] = floats(client, enc.encode(text))
    assert from_tokens == from_text


def test_list_of_token_arrays(client: openai.OpenAI) -> None:
    enc = encoding_for_model(SMALL)
    texts = ["one fish", "two fish", "red fish blue fish"]
    resp = client.embeddings.create(model=SMALL, input=[enc.encode(t) for t in texts], encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert [d.embedding for d in resp.data] == floats(client, texts)
    assert resp.usage.prompt_tokens == sum(len(enc.encode(t)) for t in texts)


def test_token_array_usage_counts_the_tokens_sent(client: openai.OpenAI) -> None:
    # A non-canonical split ("h" + "ello") still costs the two tokens the client sent, as at OpenAI.
    enc = encoding_for_model(SMALL)
    tokens = enc.encode("h") + enc.encode("ello")
    assert len(tokens) == 2 and count_text("hello", SMALL) == 1
    resp = client.embeddings.create(model=SMALL, input=tokens, encoding_format="float")
    assert resp.usage.prompt_tokens == 2
    assert resp.usage.total_tokens == 2


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("", "input"),
        ([""], "input[0]"),
        (["ok", ""], "input[1]"),
        ([], "input"),
        ([[]], "input[0]"),
        ([[1], []], "input[1]"),
        ([[1], [True]], "input[1][0]"),
        ([None], "input[0]"),
        ([True], "input[0]"),
        ([-1], "input[0]"),
        ([100256], "input[0]"),  # a hole in cl100k_base's vocabulary
        ([2**40], "input[0]"),
        ([1, "mixed"], "input[1]"),
        (["mixed", 1], "input[1]"),
        ([[1, 2], "mixed"], "input[1]"),
        (5, "input"),
        (None, "input"),
        ({"text": "x"}, "input"),
    ],
)
def test_bad_inputs_rejected(mock_server: Any, value: Any, param: str | None) -> None:
    status, _, body = post(mock_server.url, "/v1/embeddings", {"model": SMALL, "input": value})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    else:
        assert str(body["error"]["param"]).startswith("input")


def test_empty_string_rejected_with_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=SMALL, input="")
    assert info.value.param == "input"


def test_more_than_2048_inputs_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=SMALL, input=["x"] * 2049)
    assert info.value.param == "input"
    assert "2048" in info.value.message


def test_exactly_2048_inputs_accepted(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=SMALL, input=["x"] * 2048, dimensions=8)
    assert len(resp.data) == 2048
    assert resp.data[-1].index == 2047


def test_one_token_array_may_exceed_2048_tokens(client: openai.OpenAI) -> None:
    # 2048 bounds the number of inputs, not the length of a single token array.
    resp = client.embeddings.create(model=SMALL, input=[15339] * 3000, dimensions=4)
    assert len(resp.data) == 1
    assert resp.usage.prompt_tokens == 3000


@pytest.mark.parametrize("value", [[0] * 8193, [[1], [0] * 8193], ["hello " * 8193]])
def test_input_over_8192_tokens_rejected(client: openai.OpenAI, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=SMALL, input=value)
    assert info.value.code == "context_length_exceeded"


def test_more_than_300k_tokens_per_request_rejected(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=SMALL, input=[[0] * 8000] * 38)
    assert info.value.param == "input"
    assert "300000" in info.value.message


def test_missing_fields_and_unknown_model(mock_server: Any, client: openai.OpenAI) -> None:
    status, _, body = post(mock_server.url, "/v1/embeddings", {"input": "x"})
    assert (status, body["error"]["param"]) == (400, "model")
    status, _, body = post(mock_server.url, "/v1/embeddings", {"model": SMALL})
    assert (status, body["error"]["param"]) == (400, "input")
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-4-huge", input="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4o", input="x")  # a chat model is not an embedding model


# --- vector properties ---------------------------------------------------------------------------------


def test_vectors_are_unit_norm_and_deterministic(client: openai.OpenAI) -> None:
    texts = ["Paris is the capital of France", "x", "🙂 emoji and ünïcödé", "a " * 500]
    first, second = floats(client, texts), floats(client, texts)
    assert first == second
    for vec in first:
        assert norm(vec) == pytest.approx(1.0, abs=1e-9)
    assert len({tuple(v) for v in first}) == len(texts)


def test_same_text_same_vector_across_server_instances(client: openai.OpenAI) -> None:
    from mockserver.app import make_app
    from mockserver.settings import MockSettings
    from tests.servers import ServerThread

    other = ServerThread(lambda: make_app(MockSettings())).start()
    reseeded = ServerThread(lambda: make_app(MockSettings(seed=7))).start()
    try:
        with openai.OpenAI(base_url=other.url + "/v1", api_key="k", max_retries=0) as c2, \
                openai.OpenAI(base_url=reseeded.url + "/v1", api_key="k", max_retries=0) as c3:
            assert floats(c2, "stable") == floats(client, "stable")
            assert floats(c3, "stable") != floats(client, "stable")
    finally:
        other.stop()
        reseeded.stop()


def test_texts_sharing_words_are_more_similar(client: openai.OpenAI) -> None:
    base, near, far = floats(client, [
        "the cat sat on the warm mat",
        "a cat sat on a mat",
        "quarterly revenue projections exceeded analyst expectations",
    ])
    assert cosine(base, near) > cosine(base, far) + 0.2
    assert cosine(base, near) > 0.3


def test_different_models_give_different_vectors(client: openai.OpenAI) -> None:
    [small] = floats(client, "same text", model=SMALL)
    [ada] = floats(client, "same text", model=ADA)
    assert len(small) == len(ada)
    assert small != ada


# --- usage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [SMALL, LARGE, ADA])
def test_usage_is_the_sum_of_token_counts(client: openai.OpenAI, model: str) -> None:
    texts = ["Hello, world!", "The tokenizer decides how many tokens this is.", "über straße 🙂"]
    resp = client.embeddings.create(model=model, input=texts, encoding_format="float")
    expected = sum(count_text(t, model) for t in texts)
    assert expected > len(texts)
    assert resp.usage.prompt_tokens == expected
    assert resp.usage.total_tokens == expected


# --- async SDK and schema ---------------------------------------------------------------------------------


def test_async_sdk(mock_url: str, client: openai.OpenAI) -> None:
    async def run() -> list[list[float]]:
        async with openai.AsyncOpenAI(base_url=mock_url, api_key="sk-test", max_retries=0) as aclient:
            results = await asyncio.gather(
                aclient.embeddings.create(model=SMALL, input="async one"),
                aclient.embeddings.create(model=LARGE, input="async two", dimensions=128),
            )
            return [r.data[0].embedding for r in results]

    one, two = asyncio.run(run())
    assert one == float32(floats(client, "async one")[0])
    assert len(two) == 128


@requires_spec
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_response_matches_openapi(mock_server: Any, encoding_format: str) -> None:
    status, headers, body = post(mock_server.url, "/v1/embeddings",
                                 {"model": SMALL, "input": ["a", "b"], "encoding_format": encoding_format})
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    if encoding_format == "base64":
        # the published schema only describes float arrays; check the decoded form and the rest
        for item in body["data"]:
            raw = base64.b64decode(item["embedding"])
            item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    validate("CreateEmbeddingResponse", body)


@requires_spec
def test_error_matches_openapi(mock_server: Any) -> None:
    status, _, body = post(mock_server.url, "/v1/embeddings", {"model": SMALL, "input": ""})
    assert status == 400
    validate("ErrorResponse", body)
