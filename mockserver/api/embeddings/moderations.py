"""POST /v1/moderations: deterministic categories and scores; configured words flag the input."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

from aiohttp import web

from ...engine.state import Call
from ...engine.validation import MODEL, Arr, Obj, OneOf, Str
from ...errors import invalid
from ...settings import ModerationCategory

CATEGORIES: tuple[str, ...] = get_args(ModerationCategory)
_IMAGE_CATEGORIES = frozenset({"self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                               "violence", "violence/graphic"})

_PART_TYPE = Obj({"type": Str(("text", "image_url"))}, required=("type",), extra=True)
_PARTS = {
    "text": Obj({"type": Str(), "text": Str()}, required=("type", "text")),
    "image_url": Obj({"type": Str(), "image_url": Obj({"url": Str()}, required=("url",))},
                     required=("type", "image_url")),
}
REQUEST = Obj(
    {"model": MODEL, "input": OneOf(Str(), Arr(OneOf(Str(), Obj(extra=True)), min_len=1))},
    required=("input",),
)


_WORD = r"[\w'-]+"


def _hits(text: str, words: Mapping[str, str]) -> set[str]:
    """Categories of the configured words (or multi-word phrases) found in `text`, case-insensitively."""
    lowered = text.lower()
    tokens = set(re.findall(_WORD, lowered))
    found = set()
    for word, category in words.items():
        if re.fullmatch(_WORD, word):
            if word in tokens:
                found.add(category)
        elif re.search(r"(?<![\w'-])" + re.escape(word) + r"(?![\w'-])", lowered):
            found.add(category)
    return found


def _items(value: Any) -> list[list[tuple[str, str]]]:
    """Each result's parts as (kind, text): a string, a list of strings, or one multimodal list."""
    if isinstance(value, str):
        return [[("text", value)]]
    if all(isinstance(v, str) for v in value):
        return [[("text", v)] for v in value]
    parts = []
    for index, part in enumerate(value):
        _PART_TYPE.check(part, f"input[{index}]")
        _PARTS[part["type"]].check(part, f"input[{index}]")
        if part["type"] == "text":
            parts.append(("text", part["text"]))
        else:
            parts.append(("image", part["image_url"]["url"]))
    return [parts]


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model_id = body.get("model") or "omni-moderation-latest"
    model = call.catalogue.require(model_id, "moderation")
    rnd = call.random("moderations", body)
    words = {w.strip().lower(): c for w, c in call.settings.flagged_words.items() if w.strip()}
    items = _items(body["input"])
    if not model.id.startswith("omni") and any(kind == "image" for parts in items for kind, _ in parts):
        raise invalid(f"Model '{model.id}' does not support image inputs; use omni-moderation-latest.", "input",
                      "invalid_value")
    results = []
    for parts in items:
        found: set[str] = set()
        kinds: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        for kind, text in parts:
            applies = [c for c in CATEGORIES if kind == "text" or c in _IMAGE_CATEGORIES]
            found |= _hits(text, words) & set(applies)  # an image (its URL words, here) only flags image categories
            for category in applies:
                kinds[category].append(kind)
        scores = {c: (round(0.9 + rnd.random() * 0.09, 6) if c in found else round(rnd.random() * 0.0009, 8))
                  for c in CATEGORIES}
        result: dict[str, Any] = {
            "flagged": bool(found),
            "categories": {c: c in found for c in CATEGORIES},
            "category_scores": scores,
        }
        result["category_applied_input_types"] = {c: sorted(set(kinds[c])) for c in CATEGORIES}
        results.append(result)
    response = {"id": "modr-" + rnd.token(29), "model": model.id, "results": results}
    return await call.reply(response)
