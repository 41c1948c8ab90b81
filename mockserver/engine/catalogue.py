"""The model catalogue: what `/v1/models` lists and what each endpoint accepts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import MockError

Kind = Literal["chat", "completion", "embedding", "moderation"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model: its id, what it does, and the limits the mock enforces."""

    id: str
    kind: Kind
    created: int
    owned_by: str = "system"
    max_output_tokens: int = 16_384
    reasoning: bool = False
    dimensions: int = 0

    def card(self) -> dict[str, object]:
        """The object `/v1/models` returns for this model."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


_CATALOGUE: tuple[ModelInfo, ...] = (
    ModelInfo("gpt-4o", "chat", 1715367049),
    ModelInfo("gpt-4o-2024-08-06", "chat", 1722814719),
    ModelInfo("gpt-4o-2024-11-20", "chat", 1739331543),
    ModelInfo("gpt-4o-mini", "chat", 1721172741),
    ModelInfo("gpt-4o-mini-2024-07-18", "chat", 1721172717),
    ModelInfo("chatgpt-4o-latest", "chat", 1723515131),
    ModelInfo("gpt-4.1", "chat", 1744316542, max_output_tokens=32_768),
    ModelInfo("gpt-4.1-2025-04-14", "chat", 1744315746, max_output_tokens=32_768),
    ModelInfo("gpt-4.1-mini", "chat", 1744318173, max_output_tokens=32_768),
    ModelInfo("gpt-4.1-nano", "chat", 1744321707, max_output_tokens=32_768),
    ModelInfo("gpt-4-turbo", "chat", 1712361441, max_output_tokens=4_096),
    ModelInfo("gpt-4", "chat", 1687882411, owned_by="openai", max_output_tokens=8_192),
    ModelInfo("gpt-3.5-turbo", "chat", 1677610602, owned_by="openai", max_output_tokens=4_096),
    ModelInfo("o1", "chat", 1734375816, max_output_tokens=100_000, reasoning=True),
    ModelInfo("o3", "chat", 1744225308, max_output_tokens=100_000, reasoning=True),
    ModelInfo("o3-mini", "chat", 1737146383, max_output_tokens=100_000, reasoning=True),
    ModelInfo("o4-mini", "chat", 1744225351, max_output_tokens=100_000, reasoning=True),
    ModelInfo("gpt-5", "chat", 1754425777, max_output_tokens=128_000, reasoning=True),
    ModelInfo("gpt-5-mini", "chat", 1754425928, max_output_tokens=128_000, reasoning=True),
    ModelInfo("gpt-5-nano", "chat", 1754426384, max_output_tokens=128_000, reasoning=True),
    ModelInfo("gpt-5.1", "chat", 1762800000, max_output_tokens=128_000, reasoning=True),
    ModelInfo("gpt-3.5-turbo-instruct", "completion", 1692901427, max_output_tokens=4_096),
    ModelInfo("davinci-002", "completion", 1692634301, max_output_tokens=16_384),
    ModelInfo("babbage-002", "completion", 1692634615, max_output_tokens=16_384),
    ModelInfo("text-embedding-3-small", "embedding", 1705948997, dimensions=1536),
    ModelInfo("text-embedding-3-large", "embedding", 1705953180, dimensions=3072),
    ModelInfo("text-embedding-ada-002", "embedding", 1671217299, owned_by="openai-internal", dimensions=1536),
    ModelInfo("omni-moderation-latest", "moderation", 1731689265),
    ModelInfo("omni-moderation-2024-09-26", "moderation", 1732734466),
    ModelInfo("text-moderation-latest", "moderation", 1680000000),
    ModelInfo("text-moderation-stable", "moderation", 1680000000),
)

_ENDPOINT_HINT: dict[Kind, str] = {
    "chat": "v1/chat/completions",
    "completion": "v1/completions",
    "embedding": "v1/embeddings",
    "moderation": "v1/moderations",
}


class Catalogue:
    """The built-in models plus the configured extras (treated as chat models)."""

    def __init__(self, extra: Sequence[str] = ()) -> None:
        self._models = {m.id: m for m in _CATALOGUE}
        for model_id in extra:
            self._models.setdefault(model_id, ModelInfo(model_id, "chat", 1735689600, owned_by="user"))

    def list(self) -> list[ModelInfo]:
        """Every model, in catalogue order."""
        return list(self._models.values())

    def get(self, model_id: str) -> ModelInfo | None:
        """The model, or its base for a fine-tune `ft:BASE:org::id`; None when unknown."""
        if model_id in self._models:
            return self._models[model_id]
        if model_id.startswith("ft:"):
            base = self._models.get(model_id.split(":")[1])
            if base is not None:
                return ModelInfo(model_id, base.kind, base.created, "user", base.max_output_tokens,
                                 base.reasoning, base.dimensions)
        return None

    def require(self, model_id: str, kind: Kind) -> ModelInfo:
        """The model if it exists and serves `kind`; otherwise the error OpenAI answers."""
        model = self.get(model_id)
        if model is None:
            raise MockError(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if model.kind == "chat" and kind == "completion":
            raise MockError(
                404,
                "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
                "v1/chat/completions?",
                param="model",
            )
        if model.kind != kind:
            raise MockError(
                404,
                f"This is not a {kind} model and thus not supported in the {_ENDPOINT_HINT[kind]} "
                f"endpoint. Did you mean to use {_ENDPOINT_HINT[model.kind]}?",
                param="model",
                code="model_not_found" if kind != "chat" else None,
            )
        return model
