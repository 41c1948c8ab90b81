"""Image input tokens by OpenAI's published tile rule, for the prompt counts the mock reports.

`detail: "low"` costs the model's base tokens. Otherwise (`high`, `auto`) the image is scaled to fit
2048×2048, then its shorter side to 768 (never up), and costs base + per-tile tokens for each 512-pixel
tile: 85 + 170 per tile for gpt-4o, gpt-4.1, o-series and later; 2,833 + 5,667 for gpt-4o-mini. The
size is read from a base64 data URL's header (PNG, GIF, JPEG, WebP); a remote URL cannot be fetched
offline and counts as 1024×1024. The shared tokenizer (`proxy.wire.tokens`) counts every image as a
flat 85 (low) or 765 (a 1024×1024 image), so the mock adds the difference.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

FLAT_LOW, FLAT = 85, 765  # what `proxy.wire.tokens.count_chat_prompt` counts per image part
_HEADER_CHARS = 96 * 1024


def _rates(model: str) -> tuple[int, int]:
    name = model.removeprefix("ft:")
    if name.startswith("gpt-4o-mini"):
        return 2833, 5667
    return 85, 170


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height from a data URL's bytes; None when unknown."""
    if not url.startswith("data:") or "," not in url:
        return None
    payload = url.split(",", 1)[1][:_HEADER_CHARS]
    try:
        data = base64.b64decode(payload[: len(payload) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = data[12:16]
        if kind == b"VP8 " and len(data) >= 30:
            return struct.unpack("<H", data[26:28])[0] & 0x3FFF, struct.unpack("<H", data[28:30])[0] & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == b"VP8X" and len(data) >= 30:
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if data[:2] == b"\xff\xd8":
        at = 2
        while at + 9 < len(data):
            if data[at] != 0xFF:
                return None
            marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[at + 5:at + 9])
                return int(width), int(height)
            at += 2 + length
    return None


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    base, per_tile = _rates(model)
    if detail == "low":
        return base
    scale = min(1.0, 2048 / max(width, height))
    wide, high = width * scale, height * scale
    scale = min(1.0, 768 / min(wide, high))
    return base + per_tile * math.ceil(wide * scale / 512) * math.ceil(high * scale / 512)


def _part_adjustment(part: Any, model: str) -> int:
    if not isinstance(part, dict):
        return 0
    if part.get("type") == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = (image.get("detail") if isinstance(image, dict) else None) or "auto"
    elif part.get("type") == "input_image":
        url, detail = part.get("image_url"), part.get("detail") or "auto"
    else:
        return 0
    size = image_size(url) if isinstance(url, str) else None
    width, height = size or (1024, 1024)
    return image_tokens(width, height, detail, model) - (FLAT_LOW if detail == "low" else FLAT)


def adjustment(messages: list[Any], model: str) -> int:
    """Tokens to add to the shared count of `messages` (chat messages or Responses items)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            total += sum(_part_adjustment(part, model) for part in content)
    return total
