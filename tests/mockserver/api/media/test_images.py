"""End to end with the `openai` SDK: image generations, edits and variations are valid PNGs of the
requested size, as `b64_json` or a `url` the mock serves, the same bytes for the same request."""

from __future__ import annotations

import base64
import io
import json
import struct
import urllib.request
import zlib
from collections.abc import Iterator

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.http import conforms, post
from tests.servers import ServerThread


def parse_png(data: bytes) -> tuple[int, int, int]:
    """Width, height and colour type of a PNG whose chunks and CRCs are valid and whose pixels inflate
    to exactly the rows the header promises."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks, idat = 8, [], b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        at += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    channels = 4 if colour == 6 else 3
    assert len(zlib.decompress(idat)) == height * (1 + width * channels * depth // 8)
    return width, height, colour


@pytest.fixture
def sdk(mock_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock_server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def test_gpt_image_generates_b64_pngs_with_usage(sdk: openai.OpenAI) -> None:
    raw = sdk.images.with_raw_response.generate(model="gpt-image-1", prompt="A lighthouse at dawn", n=2,
                                                size="1536x1024", quality="low")
    body = json.loads(raw.http_response.content)
    conforms("ImagesResponse", body)
    pictures = [base64.b64decode(item["b64_json"]) for item in body["data"]]
    assert [parse_png(p)[:2] for p in pictures] == [(1536, 1024), (1536, 1024)]
    assert pictures[0] != pictures[1]
    assert body["usage"]["output_tokens"] == 2 * 408 and body["usage"]["input_tokens"] > 0
    assert body["size"] == "1536x1024" and body["quality"] == "low"


def test_dall_e_answers_a_url_the_mock_serves(sdk: openai.OpenAI) -> None:
    made = sdk.images.generate(model="dall-e-3", prompt="A red bicycle", size="1024x1792")
    assert made.data is not None and made.data[0].url is not None and made.data[0].revised_prompt == "A red bicycle"
    with urllib.request.urlopen(made.data[0].url) as fetched:  # no key, like OpenAI's signed URLs
        assert fetched.headers["Content-Type"] == "image/png"
        assert parse_png(fetched.read())[:2] == (1024, 1792)
    small = sdk.images.generate(prompt="A cat", size="256x256", response_format="b64_json")  # dall-e-2 default
    assert small.data is not None and small.data[0].b64_json is not None
    assert parse_png(base64.b64decode(small.data[0].b64_json))[:2] == (256, 256)


def test_transparent_background_is_rgba(sdk: openai.OpenAI) -> None:
    made = sdk.images.generate(model="gpt-image-1", prompt="A sticker", background="transparent", size="1024x1024")
    assert made.data is not None and made.data[0].b64_json is not None
    assert parse_png(base64.b64decode(made.data[0].b64_json))[2] == 6


def test_edits_and_variations(sdk: openai.OpenAI) -> None:
    source = base64.b64decode(sdk.images.generate(prompt="A tree", size="256x256",
                                                  response_format="b64_json").data[0].b64_json or "")  # type: ignore[index]
    edited = sdk.images.with_raw_response.edit(model="gpt-image-1", image=("tree.png", io.BytesIO(source)),
                                               prompt="Add snow")
    body = json.loads(edited.http_response.content)
    conforms("ImagesResponse", body)
    assert parse_png(base64.b64decode(body["data"][0]["b64_json"]))[:2] == (1024, 1024)
    assert body["usage"]["input_tokens_details"]["image_tokens"] > 0
    with pytest.deprecated_call():  # the SDK marks variations deprecated; the API still serves them
        varied = sdk.images.create_variation(image=("tree.png", io.BytesIO(source)), n=2, size="512x512",
                                             response_format="b64_json")
    assert varied.data is not None and len(varied.data) == 2
    assert parse_png(base64.b64decode(varied.data[1].b64_json or ""))[:2] == (512, 512)


@pytest.mark.parametrize("kwargs, param", [
    ({"model": "dall-e-3", "n": 2}, "n"),
    ({"model": "dall-e-2", "size": "1792x1024"}, "size"),
    ({"model": "gpt-image-1", "response_format": "url"}, "response_format"),
    ({"model": "dall-e-2", "style": "vivid"}, "style"),
    ({"model": "gpt-4o"}, "model"),
])
def test_openais_per_model_rules(sdk: openai.OpenAI, kwargs: dict[str, object], param: str) -> None:
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as bad:
        sdk.images.generate(prompt="A dog", **kwargs)  # type: ignore[arg-type]
    assert bad.value.body["param"] == param  # type: ignore[index]


def test_a_non_image_upload_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad, pytest.deprecated_call():
        sdk.images.create_variation(image=("notes.png", io.BytesIO(b"hello")))
    assert bad.value.code == "invalid_image_format"


@settings(max_examples=10, deadline=None)
@given(st.text(min_size=1, max_size=80), st.sampled_from(["gpt-image-1", "dall-e-2"]))
def test_the_same_request_gives_the_same_bytes(mock_server: ServerThread, prompt: str, model: str) -> None:
    body = {"model": model, "prompt": prompt, "size": "256x256" if model == "dall-e-2" else "1024x1024"}
    if model == "dall-e-2":
        body["response_format"] = "b64_json"
    first, second = (post(mock_server.url + "/v1/images/generations", body) for _ in range(2))
    assert first.status == 200 and first.body == second.body
