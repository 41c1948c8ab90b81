"""Prompt caching as OpenAI reports it: a prompt whose first 1,024 or more tokens were sent before,
recently (virtual clock), has that prefix counted in `cached_tokens`, in steps of 128 tokens.

A prompt is the request's canonical text (every message's role and content, then the tools), tokenized
with the model's encoding. Each request records the prefixes it has at 1,024, 1,152, 1,280... tokens;
a later one gets the longest of its own prefixes that was recorded within `TTL_S` (five minutes;
`prompt_cache_retention: "24h"` keeps them a day). Prefixes are keyed by model, as OpenAI's caches are
per model. Bounded: past `CAPACITY` prefixes the oldest go. Turn it off with
`[mock] prompt_caching = false`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from aiohttp import web

from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import encoding_for_model

MIN_TOKENS = 1024
STEP = 128
TTL_S = 300
LONG_TTL_S = 86_400
CAPACITY = 100_000


class PromptCache:
    """Prefix hashes with the virtual time each was last sent and how long it lives."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, tuple[int, int]] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def use(self, model: str, parts: list[Any], now: int, retention: str | None = None) -> int:
        """The cached tokens of a prompt made of `parts` sent at `now`, and remember its prefixes."""
        enc = encoding_for_model(model)
        tokens = enc.encode_ordinary("".join(p if isinstance(p, str) else dumps(p).decode() for p in parts))
        if len(tokens) < MIN_TOKENS:
            return 0
        ttl = LONG_TTL_S if retention == "24h" else TTL_S
        digest = hashlib.sha256(model.encode())
        cached, done = 0, 0
        keys = []
        for end in range(MIN_TOKENS, len(tokens) + 1, STEP):
            digest.update(b"".join(t.to_bytes(4, "little") for t in tokens[done:end]))
            done = end
            key = digest.copy().digest()
            keys.append(key)
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] <= seen[1]:
                cached = end
        for key in keys:
            self._seen.pop(key, None)
            self._seen[key] = (now, ttl)
        while len(self._seen) > CAPACITY:
            self._seen.popitem(last=False)
        return cached


PROMPT_CACHE = web.AppKey("prompt_cache", PromptCache)
