"""POST /v1/embeddings: deterministic unit-norm vectors that reflect their input's words.

Each word contributes a pseudo-random direction derived from its SHA-3 digest, and the whole text a
equal one, so texts sharing words have a higher cosine similarity, like real embeddings. Only
integer hashing, sums and one correctly rounded square root are involved: byte-identical everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import math
import operator
import struct
import sys
from array import array
from typing import Any

from aiohttp import web

from proxy.wire.tokens import count_text, encoding_for_model

from ...engine import textgen
from ...engine.catalogue import ModelInfo
from ...engine.state import Call
from ...engine.validation import MODEL, USER, Arr, Int, Obj, Rule, Str
from ...errors import invalid

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000


class _Input(Rule):
    """A string, an array of strings, one token array, or an array of token arrays.

    The array's first item picks the shape, so a mixed array is reported at the offending item, and
    one token array may hold up to 8192 tokens (the 2048 limit is on the number of inputs).
    """

    expected = "one of a string or an array"
    _STRINGS = Arr(Str(), min_len=1, max_len=MAX_INPUTS)
    _TOKENS = Arr(Int(), min_len=1)
    _TOKEN_ARRAYS = Arr(Arr(Int(), min_len=1), min_len=1, max_len=MAX_INPUTS)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (str, list))

    def constrain(self, value: Any, path: str) -> None:
        if isinstance(value, str):
            return
        first = value[0] if value else ""
        if isinstance(first, list):
            self._TOKEN_ARRAYS.check(value, path)
        elif isinstance(first, int) and not isinstance(first, bool):
            self._TOKENS.check(value, path)
        elif isinstance(first, str):
            self._STRINGS.check(value, path)
        else:
            Str().check(first, f"{path}[0]")  # the type error OpenAI words for a bad item


REQUEST = Obj(
    {
        "model": MODEL,
        "input": _Input(),
        "dimensions": Int(1),
        "encoding_format": Str(("float", "base64")),
        "user": USER,
    },
    required=("model", "input"),
)


def _direction(text: str, dimensions: int, salt: bytes) -> array:
    raw = hashlib.shake_256(salt + text.encode("utf-8", "surrogatepass")).digest(dimensions * 2)
    values = array("h", raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def vector(text: str, dimensions: int, salt: bytes) -> list[float]:
    """The unit vector for `text`."""
    # Integer sums are exact in any order and sqrt of an int is correctly rounded: same bytes everywhere.
    total = list(_direction(text, dimensions, salt + b"text"))
    for word in textgen.keywords(text.lower(), limit=64) or [text]:
        total = list(map(operator.add, total, _direction(word, dimensions, salt + b"word")))
    norm = math.sqrt(sum(map(operator.mul, total, total))) or 1.0
    return [v / norm for v in total]


def inputs(body: dict[str, Any], model: ModelInfo) -> tuple[list[str], list[int]]:
    """The input as texts and their token counts.

    Token arrays are decoded with the model's encoding and cost the tokens sent (as at OpenAI), not
    those of a re-encoding of their text: a non-canonical split or a special token counts as sent.
    """
    value = body["input"]
    if isinstance(value, str):
        items: list[Any] = [value]
    elif all(isinstance(v, int) for v in value):
        items = [value]
    elif all(isinstance(v, str) for v in value) or all(isinstance(v, list) for v in value):
        items = value
    else:
        raise invalid("Invalid 'input': an array must hold only strings or only tokens.", "input", "invalid_value")
    enc = encoding_for_model(model.id)
    texts: list[str] = []
    counts: list[int] = []
    for index, item in enumerate(items):
        param = "input" if len(items) == 1 and not isinstance(body["input"], list) else f"input[{index}]"
        if isinstance(item, str):
            if not item:
                raise invalid(f"'{param}' cannot be an empty string.", param, "invalid_value")
            texts.append(item)
            counts.append(count_text(item, model.id))
            continue
        try:
            texts.append(enc.decode(item))
        except (KeyError, ValueError, OverflowError):
            raise invalid(f"Invalid token in '{param}': every token must be in the model's vocabulary.", param,
                          "invalid_value") from None
        counts.append(len(item))
    return texts, counts


def embed(body: dict[str, Any], model: ModelInfo, dimensions: int, seed: int) -> tuple[list[Any], int]:
    texts, counts = inputs(body, model)
    for index, count in enumerate(counts):
        if count > MAX_INPUT_TOKENS:
            raise invalid(f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                          f"requested {count} tokens in input[{index}]. Please reduce your prompt; or completion "
                          "length.", "input", "context_length_exceeded")
    if sum(counts) > MAX_REQUEST_TOKENS:
        raise invalid(f"Requested {sum(counts)} tokens, max {MAX_REQUEST_TOKENS} tokens per request.", "input",
                      "max_tokens_per_request")
    salt = f"oaigate-embed/1|{seed}|{model.id}|".encode()
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    encoded: dict[str, Any] = {}  # a text repeated in one batch is embedded once
    for index, text in enumerate(texts):
        if text not in encoded:
            vec = vector(text, model.dimensions, salt)[:dimensions]
            if dimensions < model.dimensions:
                norm = math.sqrt(math.fsum(v * v for v in vec)) or 1.0
                vec = [v / norm for v in vec]
            encoded[text] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": index, "embedding": encoded[text]})
    return data, sum(counts)


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model = call.catalogue.require(body["model"], "embedding")
    dimensions = body.get("dimensions", model.dimensions)
    if "dimensions" in body:
        if model.id.endswith("ada-002") or model.id.startswith("ft:"):
            raise invalid("This model does not support specifying dimensions.", "dimensions", "invalid_value")
        if dimensions > model.dimensions:
            raise invalid(f"Invalid 'dimensions': integer above maximum value. Expected a value <= "
                          f"{model.dimensions}, but got {dimensions} instead.", "dimensions",
                          "integer_above_max_value")
    call.random("embeddings", body)
    data, tokens = await call.compute(embed, body, model, dimensions, call.settings.seed)
    response = {"object": "list", "data": data, "model": model.id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return await call.reply(response)
