"""POST /v1/moderations: deterministic categories and scores; configured words flag the input."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .state import Call
from .validation import MODEL, Arr, Obj, OneOf, Str

CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
_IMAGE_CATEGORIES = frozenset({"self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                               "violence", "violence/graphic"})

_PART = OneOf(Obj({"type": Str(("text", "image_url")), "text": Str(),
                   "image_url": Obj({"url": Str()}, required=("url",))}, required=("type",)))
REQUEST = Obj(
    {"model": MODEL, "input": OneOf(Str(), Arr(OneOf(Str(), Obj(extra=True)), min_len=1))},
    required=("input",),
)


def _items(value: Any) -> list[list[tuple[str, str]]]:
    """Each result's parts as (kind, text): a string, a list of strings, or one multimodal list."""
    if isinstance(value, str):
        return [[("text", value)]]
    if all(isinstance(v, str) for v in value):
        return [[("text", v)] for v in value]
    parts = []
    for index, part in enumerate(value):
        _PART.check(part, f"input[{index}]")
        if part["type"] == "text":
            parts.append(("text", part.get("text", "")))
        else:
            parts.append(("image", part.get("image_url", {}).get("url", "")))
    return [parts]


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model_id = body.get("model") or "omni-moderation-latest"
    model = call.catalogue.require(model_id, "moderation")
    rnd = call.random("moderations", body)
    words = {w.lower(): c for w, c in call.settings.flagged_words.items()}
    results = []
    for parts in _items(body["input"]):
        found: set[str] = set()
        kinds: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        for kind, text in parts:
            hits = {words[w] for w in re.findall(r"[\w'-]+", text.lower()) if w in words}
            found |= hits
            for category in CATEGORIES:
                if kind == "text" or category in _IMAGE_CATEGORIES:
                    kinds[category].append(kind)
        scores = {c: (round(0.9 + rnd.random() * 0.09, 6) if c in found else round(rnd.random() * 0.0009, 8))
                  for c in CATEGORIES}
        result: dict[str, Any] = {
            "flagged": bool(found),
            "categories": {c: c in found for c in CATEGORIES},
            "category_scores": scores,
        }
        if model.id.startswith("omni"):
            result["category_applied_input_types"] = {c: sorted(set(kinds[c])) for c in CATEGORIES}
        results.append(result)
    response = {"id": "modr-" + rnd.token(29), "model": model.id, "results": results}
    return await call.reply(response)
