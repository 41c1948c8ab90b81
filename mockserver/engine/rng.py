"""Deterministic randomness derived from the canonical request and the `--seed`.

Never Python's salted `hash()` nor the wall clock: the same request gives the same bytes on any
machine. `random.Random` seeded with an int is stable across platforms and Python versions.
"""

from __future__ import annotations

import random
import string
from typing import Any

from proxy.wire.jsoncodec import digest

_ALPHABET = string.ascii_letters + string.digits


class RequestRandom(random.Random):
    """A PRNG for one request, plus helpers for OpenAI-shaped ids."""

    def __init__(self, *parts: Any) -> None:
        self.key = digest(*parts)
        super().__init__(int.from_bytes(self.key, "big"))

    def child(self, *parts: Any) -> RequestRandom:
        """An independent stream for a sub-part (a choice index, an embedding input...)."""
        return RequestRandom(self.key.hex(), *parts)

    def token(self, length: int) -> str:
        """Random letters and digits, like the tail of OpenAI's ids."""
        return "".join(self.choice(_ALPHABET) for _ in range(length))


def request_random(seed: int, endpoint: str, body: Any) -> RequestRandom:
    """The PRNG for a request to `endpoint` with this (already stripped of transport fields) body."""
    return RequestRandom("oaigate-mock/1", seed, endpoint, body)


def without(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`body` minus `fields`: what a seed should not depend on."""
    return {k: v for k, v in body.items() if k not in fields}
