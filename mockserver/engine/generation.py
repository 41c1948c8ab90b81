"""From generated text to what an endpoint returns: stop sequences, token limits, token pieces
for streaming, logprobs, JSON text and refusals. Shared by chat, legacy completions and responses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import tiktoken

from . import schemagen, textgen
from .rng import RequestRandom

REFUSAL_TRIGGER = "[[refuse]]"  # the default `refusal_trigger`: in the last user message, the model refuses
REFUSAL = "I'm sorry, but I can't help with that request."

_ALTERNATIVES = (" the", " a", " and", " of", " to", ".", ",", " is", " in", " that", " it", " for", " on",
                 " with", " as", " this", " be", " by", " are", " or")


@dataclass(frozen=True, slots=True)
class Output:
    """One choice's text, split into token-aligned pieces whose concatenation is `text`."""

    pieces: tuple[str, ...]
    finish_reason: str
    tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def stop_list(stop: Any) -> list[str]:
    """The `stop` parameter as a list of non-empty strings."""
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str) and s]
    return []


def pieces_of(tokens: list[int], enc: tiktoken.Encoding) -> list[str]:
    """Decode tokens one by one, merging tokens that only together form valid UTF-8."""
    pieces: list[str] = []
    pending = b""
    for token in tokens:
        pending += enc.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue
        pending = b""
    return pieces


def finish(text: str, enc: tiktoken.Encoding, max_tokens: int | None, stop: list[str]) -> Output:
    """Apply `stop` (cut before the earliest match) then `max_tokens` (truncate, "length")."""
    finish_reason = "stop"
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    if cuts:
        text = text[: min(cuts)]
    tokens = enc.encode(text, disallowed_special=())
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, finish_reason = tokens[:max_tokens], "length"
    pieces = pieces_of(tokens, enc)
    return Output(tuple(pieces), finish_reason, len(enc.encode("".join(pieces), disallowed_special=())))


def logprob_entry(piece: str, rnd: RequestRandom, top: int) -> dict[str, Any]:
    """A chat `logprobs.content[]` entry for `piece`, with `top` deterministic alternatives."""
    chosen = -round(rnd.random() ** 3 * 2.5, 6)
    alternatives = [piece] + [a for a in rnd.sample(_ALTERNATIVES, min(top, len(_ALTERNATIVES))) if a != piece]
    top_entries = []
    value = chosen
    for alt in alternatives[:top]:
        top_entries.append({"token": alt, "logprob": value, "bytes": list(alt.encode())})
        value = round(value - 0.5 - rnd.random() * 3, 6)
    return {"token": piece, "logprob": chosen, "bytes": list(piece.encode()), "top_logprobs": top_entries}


def refuses(prompt: str, trigger: str = REFUSAL_TRIGGER) -> bool:
    """Whether the model refuses to answer `prompt`: it contains `trigger` (the `refusal_trigger`
    setting; empty never refuses)."""
    return bool(trigger) and trigger in prompt


def json_text(value: Any) -> str:
    """JSON as models write it: compact, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def answer_text(kind: str, schema: dict[str, Any] | None, prompt: str, results: list[tuple[str, str]],
                rnd: RequestRandom) -> str:
    """What the model writes: JSON valid for `schema` (`kind` "json_schema"), a JSON object
    ("json_object"), or prose ("text"); each draws on the tool results when there are some."""
    if kind == "json_schema":
        return json_text(schemagen.generate(schema or {"type": "object"}, rnd,
                                            " ".join([prompt, *(out for _, out in results)])))
    if kind == "json_object":
        answer = textgen.json_answer(prompt, rnd)
        if results:
            answer["tool_results"] = dict(results)
        return json_text(answer)
    return textgen.answer_from_results(prompt, results, rnd) if results else textgen.answer(prompt, rnd)
