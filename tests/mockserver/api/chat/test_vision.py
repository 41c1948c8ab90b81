"""Image inputs are counted into the prompt by OpenAI's tile rule, on chat and the Responses API."""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai
import pytest

from mockserver.api.media.images import png
from mockserver.engine.rng import RequestRandom
from proxy.wire.vision import image_size


def data_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height, RequestRandom("vision"))).decode()


def jpeg_header(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof


def _prompt(client: openai.OpenAI, model: str, image: dict[str, Any] | None) -> int:
    content: list[Any] = [{"type": "text", "text": "What is in this picture?"}]
    if image is not None:
        content.append({"type": "image_url", "image_url": image})
    made = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])
    assert made.usage is not None
    return made.usage.prompt_tokens


@pytest.mark.parametrize("model, size, detail, tokens", [
    ("gpt-4o", (1024, 1024), "high", 85 + 170 * 4),
    ("gpt-4o", (2048, 4096), "high", 85 + 170 * 6),  # 1024x2048, then 768x1536: 2x3 tiles
    ("gpt-4o", (4096, 8192), "low", 85),
    ("gpt-4o", (300, 200), "auto", 85 + 170),
    ("gpt-4o-mini", (512, 512), "high", 2833 + 5667),
    ("gpt-4.1", (1600, 900), "high", 85 + 170 * 6),  # 1365x768: 3x2 tiles
])
def test_chat_counts_images_by_the_tile_rule(client: openai.OpenAI, model: str, size: tuple[int, int],
                                            detail: str, tokens: int) -> None:
    text_only = _prompt(client, model, None)
    assert _prompt(client, model, {"url": data_url(*size), "detail": detail}) - text_only == tokens


def test_a_remote_url_counts_as_1024_square(client: openai.OpenAI) -> None:
    text_only = _prompt(client, "gpt-4o", None)
    assert _prompt(client, "gpt-4o", {"url": "https://example.com/cat.png"}) - text_only == 765


def test_the_responses_api_counts_the_same(client: openai.OpenAI) -> None:
    def count(parts: list[Any]) -> int:
        made = client.responses.create(model="gpt-4o", input=[{"role": "user", "content": parts}])
        assert made.usage is not None
        return made.usage.input_tokens

    text = {"type": "input_text", "text": "Describe it"}
    image = {"type": "input_image", "image_url": data_url(2048, 4096), "detail": "high"}
    assert count([text, image]) - count([text]) == 85 + 170 * 6
    counted = client.responses.input_tokens.count(model="gpt-4o", input=[{"role": "user", "content": [text, image]}])
    assert counted.input_tokens == count([text, image])


def test_sizes_are_read_from_each_format() -> None:
    jpeg = "data:image/jpeg;base64," + base64.b64encode(jpeg_header(640, 480) + bytes(100)).decode()
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a" + struct.pack("<HH", 33, 44) + bytes(20)).decode()
    assert image_size(jpeg) == (640, 480) and image_size(gif) == (33, 44)
    assert image_size(data_url(70, 50)) == (70, 50)
    assert image_size("data:image/png;base64,not-base64!!") is None
