"""The tile rule and the header reader of `proxy.wire.vision`."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mockserver.api.media.images import png
from mockserver.engine.rng import RequestRandom
from proxy.wire.vision import (
    HEADER_CHARS,
    MAX_TILES,
    image_size,
    image_tokens,
    part_tokens,
    tiles,
    worst_case_tokens,
)

SIDES = st.integers(1, 30_000)


def data(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def jpeg(width: int, height: int, exif: int = 0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sizes = [60_000] * (exif // 60_000) + ([exif % 60_000] if exif % 60_000 else [])
    app1 = b"".join(b"\xff\xe1" + struct.pack(">H", n + 2) + bytes(n) for n in sizes)  # EXIF, ICC...
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + bytes(65)
    sof = b"\xff\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"  # fill byte, progressive
    return b"\xff\xd8" + app0 + app1 + dqt + sof + bytes(50)


def webp(kind: bytes, width: int, height: int) -> bytes:
    if kind == b"VP8 ":
        body = bytes(3) + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    elif kind == b"VP8L":
        body = b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little")
    else:
        body = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = kind + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk + bytes(10)


@pytest.mark.parametrize(("size", "detail", "model", "tokens"), [
    # OpenAI's published examples
    ((1024, 1024), "high", "gpt-4o", 765),
    ((2048, 4096), "high", "gpt-4o", 1105),  # 1024x2048, then 768x1536: 2x3 tiles
    ((4096, 8192), "low", "gpt-4o", 85),
    ((1024, 1024), "auto", "gpt-4o-mini-2024-07-18", 2833 + 5667 * 4),
    ((1600, 900), "high", "ft:gpt-4.1:org::abc", 85 + 170 * 6),
    ((300, 200), "original", "gpt-4o", 85 + 170),  # any detail but low is costed by tiles
    ((2048, 768), "high", "gpt-4o", 85 + 170 * MAX_TILES),
    ((8192, 3072), "high", "gpt-4o-mini", 2833 + 5667 * MAX_TILES),
])
def test_the_published_rule(size: tuple[int, int], detail: str, model: str, tokens: int) -> None:
    assert image_tokens(*size, detail, model) == tokens


@given(SIDES, SIDES)
def test_no_size_costs_more_than_the_worst_case(width: int, height: int) -> None:
    assert 1 <= tiles(width, height) <= MAX_TILES == 8
    for model in ("gpt-4o", "gpt-4o-mini", "o3"):
        for detail in ("low", "high", "auto"):
            assert image_tokens(width, height, detail, model) <= worst_case_tokens(detail, model)


@given(st.integers(1, 100_000), st.integers(1, 4000))
def test_scaling_is_exact(scale: int, width: int) -> None:
    """A side scaled to exactly a multiple of 512 px covers that many tiles, never one more (as a float
    product like 2048 * (2048 / 2048k) * k could)."""
    assert tiles(2048 * scale, 768 * scale) == 8 and tiles(768 * scale, 1536 * scale) == 6
    assert tiles(width, width) == math.ceil(min(width, 768) / 512) ** 2


@pytest.mark.parametrize(("url", "size"), [
    (data("image/png", png(70, 50, RequestRandom("v"))), (70, 50)),
    (data("image/gif", b"GIF89a" + struct.pack("<HH", 33, 44) + bytes(20)), (33, 44)),
    (data("image/jpeg", jpeg(640, 480)), (640, 480)),
    (data("image/jpeg", jpeg(4000, 3000, exif=60_000)), (4000, 3000)),  # a big EXIF block first
    (data("image/webp", webp(b"VP8 ", 800, 600)), (800, 600)),
    (data("image/webp", webp(b"VP8L", 801, 601)), (801, 601)),
    (data("image/webp", webp(b"VP8X", 5000, 3)), (5000, 3)),
    (data("application/octet-stream", png(9, 8, RequestRandom("v"))), (9, 8)),  # sniffed, not trusted
])
def test_sizes_are_read_from_the_header(url: str, size: tuple[int, int]) -> None:
    assert image_size(url) == size


@pytest.mark.parametrize("url", [
    "https://example.com/cat.png",
    "data:image/png;base64,not-base64!!",
    "data:image/png,%89PNG",  # not base64
    data("image/bmp", b"BM" + bytes(60)),
    data("image/gif", b"GIF89a" + bytes(10)),  # 0x0
    data("image/jpeg", jpeg(640, 480, exif=HEADER_CHARS * 3 // 4 + 1)),  # the frame header lies past what is read
])
def test_unknown_sizes(url: str) -> None:
    assert image_size(url) is None
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    assert part_tokens(part, "gpt-4o-mini") == worst_case_tokens("high", "gpt-4o-mini") == 2833 + 5667 * 8
    assert part_tokens(part, "gpt-4o-mini", (1024, 1024)) == 2833 + 5667 * 4


def test_a_huge_data_url_is_sized_from_its_first_bytes() -> None:
    url = data("image/png", png(3000, 1000, RequestRandom("v")) + bytes(30_000_000))
    part = {"type": "input_image", "image_url": url, "detail": "auto"}
    assert part_tokens(part, "gpt-4o") == 85 + 170 * 4 * 2  # fit to 2048x683: 4x2 tiles
