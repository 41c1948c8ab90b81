"""The model catalogue: what `/v1/models` lists and what each endpoint accepts.

The list of models and their context windows come from genai-prices' maintained table (its OpenAI
provider), the same table the gateway prices with, so the two agree and upgrading that package brings
new models. What the table does not know (what a model does, its embedding dimensions, its output
limit) is given by name family (`family`), so a model the table adds later gets sensible values.
`[mock] models` adds or overrides entries; `[mock] accept_unknown_models` answers any other name like
its nearest family instead of 404.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Literal

from genai_prices import data as price_data
from pydantic import BaseModel, ConfigDict, Field

from ..errors import MockError

Kind = Literal["chat", "responses", "completion", "embedding", "moderation", "image", "speech", "transcription",
               "realtime"]

DEFAULT_CREATED = 1_735_689_600  # 2025-01-01: `created` of a model whose name carries no date
_DATED = re.compile(r"-(\d{4})-(\d{2})-(\d{2})$")


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
    context_window: int | None = None

    def card(self) -> dict[str, object]:
        """The object `/v1/models` returns for this model."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}

    @property
    def text(self) -> bool:
        """Whether the Responses API serves it (chat models and Responses-only ones)."""
        return self.kind in ("chat", "responses")


class ModelSpec(BaseModel):
    """A `[[mock.models]]` entry: a model to add, or fields to override on a listed one."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="The model id.")
    kind: Kind | None = Field(None, description="What it does (default: by name family, else chat).")
    context_window: int | None = Field(None, gt=0, description="Prompt plus output tokens it accepts.")
    max_output_tokens: int | None = Field(None, gt=0, description="The largest `max_tokens` it accepts.")
    dimensions: int | None = Field(None, gt=0, description="Embedding models: the vector's length.")
    reasoning: bool | None = Field(None, description="A reasoning model (reasoning tokens, rejected sampling).")


def _created(model_id: str) -> int:
    """A dated snapshot's date (`gpt-4o-2024-08-06`), else a fixed instant: never the wall clock."""
    match = _DATED.search(model_id)
    if match is None:
        return DEFAULT_CREATED
    year, month, day = (int(g) for g in match.groups())
    return int(dt.datetime(year, month, day, tzinfo=dt.UTC).timestamp())


def family(model_id: str, context_window: int | None = None, owned_by: str = "system") -> ModelInfo:
    """What a model of this name is, by its family: the hand-kept knowledge the price table lacks."""
    name = model_id.lower().removeprefix("ft:").split(":")[0]
    kind: Kind = "chat"
    reasoning, dimensions, out, window = False, 0, 16_384, 128_000
    if name.startswith("text-embedding"):
        kind, out, window = "embedding", 0, 8_192
        dimensions = 3072 if "large" in name else 1536
    elif "moderation" in name:
        kind, out, window = "moderation", 0, 32_768
    elif name.startswith("tts-") or name.endswith("-tts"):
        kind, out, window = "speech", 0, 4_096
    elif "whisper" in name and "realtime" not in name or "transcribe" in name and "realtime" not in name:
        kind, out, window = "transcription", 0, 16_000
    elif "realtime" in name or name.startswith("gpt-live"):
        kind, window = "realtime", 32_000
    elif "image" in name or name.startswith("dall-e"):
        kind, out, window = "image", 0, 32_000
    elif "instruct" in name or re.match(r"^(text-)?(ada|babbage|curie|davinci)", name):
        kind, out, window = "completion", (4_096 if "instruct" in name else 16_384), 16_385
    elif re.search(r"(^|-)(pro|deep-research)(-|$)|codex|^computer-use", name):
        kind = "responses"
    if kind in ("chat", "responses"):
        if re.match(r"^o\d", name) or re.match(r"^gpt-oss", name) or (
                re.match(r"^gpt-[5-9]", name) and "chat" not in name) or "codex" in name:
            reasoning, out, window = True, 100_000, 200_000
            if name.startswith(("gpt-5", "gpt-6", "gpt-7", "gpt-8", "gpt-9")) or "codex" in name:
                out, window = 128_000, 400_000
        elif name.startswith("gpt-4.1"):
            out, window = 32_768, 1_047_576
        elif name.startswith("gpt-4-turbo") or name.startswith("gpt-3.5"):
            out, window = 4_096, 16_385 if name.startswith("gpt-3.5") else 128_000
        elif name.startswith("gpt-4") and not name.startswith("gpt-4o") and not name.startswith("gpt-4.5"):
            out, window = 8_192, 8_192
        elif name.startswith("computer-use"):
            out, window = 1_024, 8_192
    return ModelInfo(model_id, kind, _created(model_id), owned_by, out, reasoning, dimensions,
                     context_window or window)


def _snapshots(model: object) -> Iterable[str]:
    """The id of a table entry and the dated snapshots its matcher names (`gpt-4o-2024-08-06`)."""
    model_id: str = model.id  # type: ignore[attr-defined]
    yield model_id
    for clause in getattr(model.match, "or_", None) or ():  # type: ignore[attr-defined]
        name = getattr(clause, "equals", None)
        if isinstance(name, str) and name.startswith(model_id + "-") and _DATED.search(name):
            yield name


def listed_in_table(model_id: str) -> bool:
    """Whether a table id is a model name OpenAI lists (not a matcher for a family of fine-tunes or a
    provider's variant such as `gpt-4o:extended`)."""
    return not (model_id.startswith("ft:") or ".ft-" in model_id or ":" in model_id or model_id == "moderation")


@cache
def table_models() -> tuple[ModelInfo, ...]:
    """Every OpenAI model of genai-prices' table, with its context window where the table has one."""
    openai = next(p for p in price_data.providers if p.id == "openai")
    found: dict[str, ModelInfo] = {}
    for entry in openai.models:
        if not listed_in_table(entry.id):
            continue
        for model_id in _snapshots(entry):
            found.setdefault(model_id, family(model_id, entry.context_window))
    return tuple(found.values())


# Models OpenAI lists that the price table lacks or names only by a matcher (moderations, DALL·E).
_BESIDES_TABLE = ("dall-e-2", "dall-e-3", "omni-moderation-latest", "omni-moderation-2024-09-26",
                  "text-moderation-latest", "text-moderation-stable")

_ENDPOINT_HINT: dict[Kind, str] = {
    "chat": "v1/chat/completions",
    "responses": "v1/responses",
    "completion": "v1/completions",
    "embedding": "v1/embeddings",
    "moderation": "v1/moderations",
    "image": "v1/images/generations",
    "speech": "v1/audio/speech",
    "transcription": "v1/audio/transcriptions",
    "realtime": "v1/realtime",
}


class Catalogue:
    """The table's models, the ones it lacks, then `[mock] models` (added, or overriding fields)."""

    def __init__(self, extra: Sequence[str | ModelSpec] = (), accept_unknown: bool = False) -> None:
        self._models = {m.id: m for m in table_models()}
        for model_id in _BESIDES_TABLE:
            self._models.setdefault(model_id, family(model_id))
        for spec in extra:
            if isinstance(spec, str):
                spec = ModelSpec(id=spec)
            self._models[spec.id] = self._apply(spec)
        self._fine_tunes: dict[str, ModelInfo] = {}
        self._deleted: set[str] = set()
        self.accept_unknown = accept_unknown

    def _apply(self, spec: ModelSpec) -> ModelInfo:
        changes = {k: v for k, v in spec.model_dump(exclude={"id"}).items() if v is not None}
        base = self._models.get(spec.id) or family(spec.id, owned_by="user")
        if changes.get("kind") == "embedding" and not base.dimensions:
            changes.setdefault("dimensions", 1536)
        return replace(base, **changes)

    def list(self) -> list[ModelInfo]:
        """Every model, in catalogue order, then the fine-tunes made here."""
        return list(self._models.values()) + list(self._fine_tunes.values())

    def add_fine_tune(self, model: ModelInfo) -> None:
        """A fine-tuned model a job produced: listed and accepted until deleted."""
        self._fine_tunes[model.id] = model

    def made_here(self, model_id: str) -> bool:
        """Whether a job here produced this model (deleted or not)."""
        return model_id in self._fine_tunes or model_id in self._deleted

    def delete_fine_tune(self, model_id: str) -> bool:
        """Forget a fine-tune a job made; False when it was not one of those. A deleted one is refused."""
        if self._fine_tunes.pop(model_id, None) is None:
            return False
        self._deleted.add(model_id)
        return True

    def reset(self) -> None:
        """Forget the fine-tunes (for `/_mock/reset`)."""
        self._fine_tunes.clear()
        self._deleted.clear()

    def get(self, model_id: str) -> ModelInfo | None:
        """The model, or its base for a fine-tune `ft:BASE:org::id`, or (with `accept_unknown`) its
        family's defaults; None when unknown."""
        if model_id in self._models:
            return self._models[model_id]
        if model_id in self._fine_tunes:
            return self._fine_tunes[model_id]
        if model_id in self._deleted:
            return None
        if model_id.startswith("ft:"):
            base = self._models.get(model_id.split(":")[1])
            if base is not None:
                return replace(base, id=model_id, owned_by="user")
        if self.accept_unknown and model_id.strip():
            return family(model_id, owned_by="user")
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
        if model.kind == kind:
            return model
        if model.kind == "chat" and kind == "completion":
            raise MockError(
                404,
                "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
                "v1/chat/completions?",
                param="model",
            )
        if model.kind == "responses" and kind == "chat":
            raise MockError(404, "This model is only supported in v1/responses and not in v1/chat/completions.",
                            param="model")
        raise MockError(
            404,
            f"This is not a {kind} model and thus not supported in the {_ENDPOINT_HINT[kind]} "
            f"endpoint. Did you mean to use {_ENDPOINT_HINT[model.kind]}?",
            param="model",
            code="model_not_found" if kind != "chat" else None,
        )


def context_error(model: ModelInfo, prompt: int, output: int | None, *, responses: bool = False) -> MockError | None:
    """OpenAI's 400 `context_length_exceeded` when the prompt plus the requested output exceed the model's
    window; None when they fit (or the window is unknown)."""
    window = model.context_window
    if window is None or prompt + (output or 0) <= window:
        return None
    if responses:
        return MockError(400, "Your input exceeds the context window of this model. Please adjust your input and "
                         "try again.", param="input", code="context_length_exceeded")
    if output:
        message = (f"This model's maximum context length is {window} tokens. However, you requested "
                   f"{prompt + output} tokens ({prompt} in the messages, {output} in the completion). Please "
                   "reduce the length of the messages or completion.")
    else:
        message = (f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                   f"{prompt} tokens. Please reduce the length of the messages.")
    return MockError(400, message, param="messages", code="context_length_exceeded")
