"""estimate: the worst case of a request before it goes upstream, for budgets and rate limits.

Prompt tokens are counted locally (messages, tools and images by OpenAI's rules where feasible, see
`proxy.wire.tokens`); the completion's worst case is the request's own cap (`max_completion_tokens`,
`max_tokens`, `max_output_tokens`) or, when it sets none, `limits.default_max_tokens`, which the
gateway then also sends upstream so the estimate is a true bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..exchange import Exchange
from ..wire.jsoncodec import dumps
from ..wire.tokens import count_request_prompt
from . import Stage

OFFLOAD_BYTES = 32 * 1024  # larger bodies are tokenized in a thread, off the event loop

# endpoint -> the field that caps completion tokens (None: the endpoint generates no tokens)
CAP_FIELDS: dict[str, tuple[str, ...] | None] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
    "/v1/embeddings": None,
    "/v1/moderations": None,
}
_LEGACY_COMPLETIONS_DEFAULT = 16


@dataclass(frozen=True, slots=True)
class Estimate:
    """Worst-case tokens of one request."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class Estimator(Stage):
    """Sets `ex.estimate` for generation endpoints; `enabled` is false when no limit needs it."""

    def __init__(self, default_max_tokens: int, enabled: bool = True) -> None:
        self.default_max_tokens, self.enabled = default_max_tokens, enabled

    async def request(self, ex: Exchange) -> None:
        if not self.enabled or ex.method != "POST" or ex.path not in CAP_FIELDS or ex.json is None:
            return
        model = ex.model or ""
        if len(ex.body) > OFFLOAD_BYTES:
            prompt = await asyncio.to_thread(count_request_prompt, ex.json, model)
        else:
            prompt = count_request_prompt(ex.json, model)
        fields = CAP_FIELDS[ex.path]
        completion = 0
        if fields is not None:
            caps = [ex.json[f] for f in fields if isinstance(ex.json.get(f), int) and ex.json[f] >= 0]
            if caps:
                completion = caps[0]
            elif ex.path == "/v1/completions":
                completion = _LEGACY_COMPLETIONS_DEFAULT
            else:
                completion = self.default_max_tokens
                ex.json = {**ex.json, fields[0]: completion}
                ex.body = dumps(ex.json)
            completion *= _choices(ex)
        ex.estimate = Estimate(prompt, completion)


def _choices(ex: Exchange) -> int:
    n = (ex.json or {}).get("n")
    return n if isinstance(n, int) and 1 <= n <= 128 else 1
