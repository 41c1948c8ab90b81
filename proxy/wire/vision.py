"""Image input tokens by OpenAI's published tile rule: the one home of the rule for gateway and mock.

An image part (chat `image_url`, Responses `input_image`) costs its model family's base tokens at
`detail: "low"`. Otherwise (`high`, `auto`, or any other value) the image is scaled to fit 2048×2048,
then its shorter side to 768 (never scaled up), and costs base + per-tile tokens for each 512-pixel
tile: 85 + 170 per tile for gpt-4o, gpt-4.1, o-series and later models; 2,833 + 5,667 for
gpt-4o-mini. Sizes are scaled exactly (rational arithmetic, no float rounding at tile edges).

The size is read from a base64 data URL's header (PNG, GIF, JPEG, WebP): its first 48 bytes, or for a
JPEG (whose frame header follows its metadata) at most its first `HEADER_CHARS` characters; the image
itself is never decoded. A remote URL, a `file_id` or an unreadable header has
no known size: `part_tokens` then counts what the caller says (the mock assumes 1024×1024), or by
default the most any size could cost at that detail (`worst_case_tokens`, for budget reservations).

Worst case: after both scalings the longer side is at most 2048 and the shorter at most 768 (a
shorter side above 768 is scaled down to 768, which keeps the longer side within 2048), so an image
covers at most ceil(2048/512) × ceil(768/512) = 4 × 2 = `MAX_TILES` tiles, reached by any image whose
scaled size is 2048×768 (e.g. 4096×1536 or 2048×768 itself). The least is one tile (any image
within 512×512). A budget reserves the worst case; the context-window pre-check refuses a request only
when even the least would not fit (`unknown_slack`).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from fractions import Fraction
from typing import Any

HEADER_CHARS = 96 * 1024  # base64 characters of a data URL decoded to find the size (72 KB: JPEG EXIF/ICC fit)
FIT, SHORT_SIDE, TILE = 2048, 768, 512
MAX_TILES = math.ceil(FIT / TILE) * math.ceil(SHORT_SIDE / TILE)  # 8: see the module's docstring


def rates(model: str) -> tuple[int, int]:
    """(base, per-tile) image tokens of `model`'s family (`ft:BASE:...` uses BASE)."""
    name = model.lower().removeprefix("ft:")
    if name.startswith("gpt-4o-mini"):
        return 2833, 5667
    return 85, 170


def tiles(width: int, height: int) -> int:
    """512-pixel tiles of a `width`×`height` image at high detail (after both scalings)."""
    wide, high = Fraction(width), Fraction(height)
    fit = min(Fraction(1), FIT / max(wide, high))
    wide, high = wide * fit, high * fit
    short = min(Fraction(1), SHORT_SIDE / min(wide, high))
    return math.ceil(wide * short / TILE) * math.ceil(high * short / TILE)


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    """Tokens of a `width`×`height` image at `detail` on `model`."""
    base, per_tile = rates(model)
    return base if detail == "low" else base + per_tile * tiles(width, height)


def worst_case_tokens(detail: str, model: str) -> int:
    """The most an image of unknown size can cost at `detail` on `model` (`MAX_TILES` at high/auto)."""
    base, per_tile = rates(model)
    return base if detail == "low" else base + per_tile * MAX_TILES


def least_tokens(detail: str, model: str) -> int:
    """The least an image of unknown size can cost at `detail` on `model` (one tile at high/auto)."""
    base, per_tile = rates(model)
    return base if detail == "low" else base + per_tile


def unknown_slack(body: dict[str, Any], model: str) -> int:
    """By how much the worst case counted for the images of unknown size in a request `body` (chat
    `messages` or Responses `input` items) may exceed their least cost. A prompt counted with worst
    cases, less this, is a count no larger than the real one: what a context-window check may refuse on."""
    total = 0
    holder = body.get("messages") if isinstance(body.get("messages"), list) else body.get("input")
    if isinstance(holder, list):
        for item in holder:
            content = item.get("content") if isinstance(item, dict) else None
            for part in content if isinstance(content, list) else ():
                found = image_part(part)
                if found is None or found[1] == "low" or (found[0] is not None and image_size(found[0])):
                    continue
                total += worst_case_tokens(found[1], model) - least_tokens(found[1], model)
    return total


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height from a base64 data URL's header bytes; None when unknown (not a data URL, not
    base64, not PNG/GIF/JPEG/WebP, or the header lies past `HEADER_CHARS`)."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or ";base64" not in url[:comma]:
        return None
    size = None
    for chars in (64, 4096, HEADER_CHARS):  # PNG, GIF, WebP: the first 30 bytes; a JPEG's frame header
        data = _decode(url[comma + 1:comma + 1 + chars])  # follows its EXIF, ICC... segments
        size = _header_size(data) if data is not None else None
        if size is not None or data is None or data[:2] != b"\xff\xd8" or len(data) < chars // 4 * 3:
            break
    return size if size is not None and size[0] > 0 and size[1] > 0 else None


def _decode(payload: str) -> bytes | None:
    try:
        return base64.b64decode(payload[: len(payload) // 4 * 4])
    except (binascii.Error, ValueError):
        return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame size from the first SOFn segment, walking segment lengths from the start."""
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return int(width), int(height)
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return None


def image_part(part: Any) -> tuple[str | None, str] | None:
    """(url or None, detail) of a chat `image_url` or Responses `input_image` part; None for other parts.
    A missing detail is `auto`."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
    elif kind == "input_image":
        url, detail = part.get("image_url"), part.get("detail")
    else:
        return None
    return (url if isinstance(url, str) else None), (detail if isinstance(detail, str) and detail else "auto")


def part_tokens(part: Any, model: str, unknown: tuple[int, int] | None = None) -> int:
    """Tokens of an image part on `model`: by its data URL's size, else by the `unknown` size, else the
    worst case of its detail level. 0 for a part that is not an image."""
    found = image_part(part)
    if found is None:
        return 0
    url, detail = found
    if detail == "low":
        return rates(model)[0]
    size = image_size(url) if url is not None else None
    if size is None and unknown is None:
        return worst_case_tokens(detail, model)
    return image_tokens(*(size or unknown or (0, 0)), detail, model)
