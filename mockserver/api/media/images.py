"""Images: POST /v1/images/generations (JSON), /v1/images/edits and /v1/images/variations (multipart).

Each image is a valid PNG of the requested size: a 4×4 grid of colours drawn from the request (the
prompt, the uploaded image's hash, the index, `--seed`), so the same request gives the same bytes.
`response_format: "b64_json"` embeds it; `"url"` (DALL·E's default) points at
`GET /_mock/images/{name}.png` on the mock itself (no key needed, like OpenAI's signed URLs; kept for the
last `MAX_KEPT` images). gpt-image models always answer `b64_json` and report `usage` with OpenAI's
published output tokens per size and quality; `revised_prompt` is DALL·E 3's. Parameter checks follow
OpenAI's per-model rules (sizes, `n`, `style`, `response_format`).

Not emulated: `output_format` other than `png` (a 400 says so), streaming partial images, masks
(accepted, not applied), content of the picture.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import zlib
from typing import Any

from aiohttp import web

from proxy.wire.tokens import count_text

from ...engine.catalogue import ModelInfo
from ...engine.control import on_reset
from ...engine.forms import Form, read_form
from ...engine.rng import RequestRandom
from ...engine.state import CATALOGUE, CLOCK, SETTINGS, Call, endpoint
from ...engine.store import BoundedStore
from ...engine.validation import USER, Int, Nullable, Obj, Str
from ...errors import MockError, invalid
from ..files.files import answer

MAX_KEPT = 200
_PROMPT_LIMIT = {"dall-e-2": 1000, "dall-e-3": 4000}
_SIZES = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "gpt-image": ("auto", "1024x1024", "1536x1024", "1024x1536"),
}
# OpenAI's published output tokens of gpt-image-1 by quality and size (square, then either oblong size).
_OUTPUT_TOKENS = {"low": (272, 408), "medium": (1056, 1584), "high": (4160, 6240)}

_GENERATE = Obj({
    "prompt": Str(), "model": Nullable(Str()), "n": Nullable(Int(1, 10)), "size": Nullable(Str()),
    "quality": Nullable(Str(("standard", "hd", "low", "medium", "high", "auto"))),
    "style": Nullable(Str(("vivid", "natural"))), "response_format": Nullable(Str(("url", "b64_json"))),
    "output_format": Nullable(Str(("png", "jpeg", "webp"))), "output_compression": Nullable(Int(0, 100)),
    "background": Nullable(Str(("transparent", "opaque", "auto"))), "moderation": Nullable(Str(("low", "auto"))),
    "stream": Nullable(Str()), "partial_images": Nullable(Int(0, 3)), "user": USER,
}, required=("prompt",))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, rnd: RequestRandom, alpha: bool = False) -> bytes:
    """A valid PNG: a 4×4 grid of colours from `rnd`."""
    channels = 4 if alpha else 3
    colours = [bytes(rnd.randrange(256) for _ in range(3)) + (b"\xff" if alpha else b"") for _ in range(16)]
    rows = []
    for block_row in range(4):
        row = bytearray(b"\x00")
        for x in range(width):
            row += colours[block_row * 4 + x * 4 // width]
        rows.append(bytes(row))
    raw = b"".join(rows[y * 4 // height] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    assert len(rows[0]) == 1 + width * channels
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


class ImageStore(BoundedStore[bytes]):
    def __init__(self) -> None:
        super().__init__(MAX_KEPT, 512 * 1024 * 1024, len)


IMAGES = web.AppKey("images", ImageStore)


def _family(model: ModelInfo) -> str:
    return model.id if model.id in ("dall-e-2", "dall-e-3") else "gpt-image"


def _check(model: ModelInfo, fields: dict[str, Any], edit: bool = False) -> tuple[int, int, str]:
    """OpenAI's per-model rules; the width, height and quality to draw."""
    family = _family(model)
    prompt = fields.get("prompt")
    if prompt is not None and len(prompt) > _PROMPT_LIMIT.get(family, 32_000):
        raise invalid(f"Invalid 'prompt': string too long. Expected a string with maximum length "
                      f"{_PROMPT_LIMIT.get(family, 32_000)}, but got a string with length {len(prompt)} instead.",
                      "prompt", "string_above_max_length")
    n = fields.get("n") or 1
    if family == "dall-e-3" and n != 1:
        raise invalid("Invalid 'n': dall-e-3 only supports n=1.", "n", "invalid_value")
    size = fields.get("size") or ("1024x1024" if family != "gpt-image" else "auto")
    if size not in _SIZES[family]:
        allowed = ", ".join(f"'{s}'" for s in _SIZES[family])
        raise invalid(f"Invalid value: '{size}'. Supported values are: {allowed}.", "size", "invalid_value")
    if fields.get("style") is not None and family != "dall-e-3":
        raise invalid("Unknown parameter: 'style'.", "style", "unknown_parameter")
    if family == "gpt-image" and fields.get("response_format") is not None:
        raise invalid("Unknown parameter: 'response_format'.", "response_format", "unknown_parameter")
    if fields.get("output_format") not in (None, "png"):
        raise invalid("The mock draws PNG images only: 'output_format' must be 'png' (jpeg and webp are not "
                      "emulated).", "output_format", "unsupported_value")
    if fields.get("stream") not in (None, False, "false"):
        raise invalid("The mock does not stream images: remove 'stream'.", "stream", "unsupported_value")
    width, height = (1024, 1024) if size == "auto" else (int(v) for v in size.split("x"))
    quality = fields.get("quality") or ("auto" if family == "gpt-image" else "standard")
    return width, height, "medium" if quality in ("auto", "standard", "hd") else quality


async def _answer(request: web.Request, model: ModelInfo, fields: dict[str, Any], rnd: RequestRandom,
                  input_images: int = 0) -> dict[str, Any]:
    width, height, quality = _check(model, fields)
    family = _family(model)
    alpha = fields.get("background") == "transparent"
    n = int(fields.get("n") or 1)
    pictures = await asyncio.to_thread(lambda: [png(width, height, rnd.child("image", i), alpha) for i in range(n)])
    as_url = family != "gpt-image" and (fields.get("response_format") or "url") == "url"
    data: list[dict[str, Any]] = []
    for index, picture in enumerate(pictures):
        item: dict[str, Any] = {}
        if as_url:
            name = hashlib.sha256(picture).hexdigest()[:32] + f"-{rnd.key.hex()[:8]}-{index}"
            request.app[IMAGES].add(name, picture)
            item["url"] = f"{request.url.origin()}/_mock/images/{name}.png"
        else:
            item["b64_json"] = base64.b64encode(picture).decode()
        if family == "dall-e-3":
            item["revised_prompt"] = (fields.get("prompt") or "").strip()
        data.append(item)
    body: dict[str, Any] = {"created": request.app[CLOCK].now(), "data": data}
    if family == "gpt-image":
        square, oblong = _OUTPUT_TOKENS[quality]
        per_image = square if width == height else oblong
        text_tokens = count_text(fields.get("prompt") or "", "gpt-4o")
        image_tokens = 323 * input_images  # an input image at high fidelity, roughly as OpenAI counts it
        body.update({
            "background": "transparent" if alpha else "opaque", "output_format": "png", "quality": quality,
            "size": f"{width}x{height}",
            "usage": {"input_tokens": text_tokens + image_tokens,
                      "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                      "output_tokens": per_image * n, "total_tokens": text_tokens + image_tokens + per_image * n}})
    return body


def _model(catalogue: Any, name: str | None, default: str = "dall-e-2") -> ModelInfo:
    model: ModelInfo = catalogue.require(name or default, "image")
    return model


async def generate(call: Call) -> web.StreamResponse:
    _GENERATE.check(call.body, "")
    model = _model(call.catalogue, call.body.get("model"))
    rnd = call.random("images.generations", call.body)
    return await call.reply(await _answer(call.request, model, call.body, rnd))


_FORM_TEXT = {"prompt", "model", "n", "size", "response_format", "user", "quality", "background", "output_format",
              "output_compression", "input_fidelity", "moderation", "stream", "partial_images"}


def _fields(form: Form) -> dict[str, Any]:
    fields: dict[str, Any] = {name: form.text(name) for name in form.fields}
    if fields.get("n") is not None:
        try:
            fields["n"] = int(fields["n"])
        except ValueError:
            raise invalid("Invalid type for 'n': expected an integer, but got a string instead.", "n",
                          "invalid_type") from None
        Int(1, 10).check(fields["n"], "n")
    Nullable(Str(("url", "b64_json"))).check(fields.get("response_format"), "response_format")
    return fields


def _png_input(name: str, data: bytes, param: str) -> None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n") and not data[:3] == b"\xff\xd8\xff" and data[8:12] != b"WEBP":
        raise invalid(f"Invalid input image - format must be in ['image/png', 'image/jpeg', 'image/webp'], "
                      f"got {name!r}.", param, "invalid_image_format")


async def edit(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    form = await read_form(request, {"image", "image[]", "mask"}, _FORM_TEXT, settings.max_file_bytes)
    prompt = form.require("prompt")
    images = form.files.get("image", []) + form.files.get("image[]", [])
    if not images:
        raise invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    fields = _fields(form)
    model = _model(request.app[CATALOGUE], fields.get("model"))
    if _family(model) == "dall-e-3":
        raise invalid("Image editing is not supported with dall-e-3.", "model", "unsupported_model")
    if _family(model) == "dall-e-2" and len(images) > 1:
        raise invalid("dall-e-2 edits take one image.", "image", "invalid_value")
    for name, data in images:
        _png_input(name, data, "image")
    digest = [hashlib.sha256(data).hexdigest() for _, data in images]
    rnd = RequestRandom("oaigate-mock/images.edits", settings.seed, prompt, digest, sorted(fields.items()))
    return await answer(request, await _answer(request, model, fields, rnd, len(images)))


async def variation(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    form = await read_form(request, {"image"}, {"model", "n", "size", "response_format", "user"},
                           settings.max_file_bytes)
    name, data = form.file("image")
    _png_input(name, data, "image")
    fields = _fields(form)
    model = _model(request.app[CATALOGUE], fields.get("model"))
    if model.id != "dall-e-2":
        raise invalid("Image variations are only supported with dall-e-2.", "model", "unsupported_model")
    rnd = RequestRandom("oaigate-mock/images.variations", settings.seed, hashlib.sha256(data).hexdigest(),
                        sorted(fields.items()))
    return await answer(request, await _answer(request, model, fields, rnd, 1))


async def serve(request: web.Request) -> web.StreamResponse:
    """GET /_mock/images/{name}.png: an image a `url` answer points at."""
    picture = request.app[IMAGES].get(request.match_info["name"])
    if picture is None:
        raise MockError(404, "This image URL has expired or never existed.")
    return web.Response(body=picture, content_type="image/png")


def setup(app: web.Application) -> None:
    app[IMAGES] = ImageStore()
    on_reset(app, app[IMAGES].clear)
    app.router.add_post("/v1/images/generations", endpoint(generate))
    app.router.add_post("/v1/images/edits", edit)
    app.router.add_post("/v1/images/variations", variation)
    app.router.add_get("/_mock/images/{name}.png", serve)
