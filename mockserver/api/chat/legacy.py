"""POST /v1/completions: the legacy text completion endpoint, JSON or SSE.

A rule (`rules`) whose match holds for a prompt scripts the text of that prompt's choices; each
prompt of a list is matched on its own, as turn 1 with no tool results."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_text, encoding_for_model

from ...engine import rules, textgen
from ...engine.catalogue import ModelInfo, context_error
from ...engine.generation import Output, finish, logprob_entry, stop_list
from ...engine.rng import RequestRandom, request_random, without
from ...engine.rules import Answer, Subject
from ...engine.state import Call
from ...engine.validation import (
    LOGIT_BIAS,
    MODEL,
    PENALTY,
    SEED,
    STOP,
    STREAM_OPTIONS,
    TEMPERATURE,
    TOP_P,
    USER,
    Arr,
    Bool,
    Int,
    N,
    Nullable,
    Obj,
    OneOf,
    Str,
)
from ...errors import invalid

DEFAULT_MAX_TOKENS = 16
_TRANSPORT_FIELDS = ("stream", "stream_options")
_NEUTRAL_FIELDS = _TRANSPORT_FIELDS + ("max_tokens", "stop", "logprobs", "echo", "user")

REQUEST = Obj(
    {
        "model": MODEL,
        "prompt": Nullable(OneOf(Str(), Arr(OneOf(Str(), Int()), min_len=1), Arr(Arr(Int(), min_len=1), min_len=1))),
        "best_of": Nullable(Int(0, 20)),
        "echo": Nullable(Bool()),
        "frequency_penalty": PENALTY,
        "presence_penalty": PENALTY,
        "logit_bias": LOGIT_BIAS,
        "logprobs": Nullable(Int(0, 5)),
        "max_tokens": Nullable(Int(0)),
        "n": N,
        "seed": SEED,
        "stop": STOP,
        "stream": Nullable(Bool()),
        "stream_options": STREAM_OPTIONS,
        "suffix": Nullable(Str()),
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "user": USER,
    },
    required=("model", "prompt"),
)


def prompts(body: dict[str, Any], model: ModelInfo) -> list[tuple[str, int]]:
    """Each prompt's text and token count. Token arrays are decoded with the model's encoding and
    counted as sent, the way OpenAI bills them; a null prompt is the lone `<|endoftext|>` token."""
    prompt = body.get("prompt")
    if prompt is None:
        return [("", 1)]
    if isinstance(prompt, str):
        return [(prompt, count_text(prompt, model.id))]
    if all(isinstance(p, str) for p in prompt):
        return [(p, count_text(p, model.id)) for p in prompt]
    enc = encoding_for_model(model.id)
    if all(isinstance(p, int) for p in prompt):
        return [(_decode(enc, prompt, "prompt"), len(prompt))]
    if all(isinstance(p, list) for p in prompt):
        return [(_decode(enc, p, f"prompt[{i}]"), len(p)) for i, p in enumerate(prompt)]
    raise invalid("Invalid 'prompt': an array must hold only strings or only tokens.", "prompt", "invalid_value")


def _decode(enc: Any, tokens: list[int], param: str) -> str:
    try:
        return enc.decode(tokens)
    except (KeyError, ValueError, OverflowError):
        raise invalid(f"Invalid token in '{param}': every token must be in the model's vocabulary.", param,
                      "invalid_value") from None


def generate(body: dict[str, Any], model: ModelInfo, rnd: RequestRandom, parts: list[tuple[str, int]],
             scripts: list[Answer | None]) -> list[Output]:
    """One output per prompt of `parts` and `n`, like OpenAI's indexing (prompt-major); a prompt with a
    script answers its text."""
    enc = encoding_for_model(model.id)
    limit = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    outputs = []
    for p_index, ((prompt, _), script) in enumerate(zip(parts, scripts, strict=False)):
        for c_index in range(body.get("n") or 1):
            if script is not None:
                text = script.text or ""
            else:
                text = " " + textgen.answer(prompt, rnd.child("choice", p_index, c_index))
            outputs.append(finish(text, enc, limit, stop_list(body.get("stop"))))
    return outputs


def _logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The legacy `logprobs` object for consecutive tokens, the first at character `offset`.

    `top_logprobs` maps the `logprobs` most likely tokens to their logprob; it always holds the
    sampled token, so a map has up to `logprobs + 1` entries.
    """
    offsets, position = [], offset
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{e["token"]: e["logprob"], **{t["token"]: t["logprob"] for t in e["top_logprobs"]}}
                         for e in entries],
        "text_offset": offsets,
    }


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model = call.catalogue.require(body["model"], "completion")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      "stream_options", "invalid_value")
    if body.get("best_of") is not None and body["best_of"] < (body.get("n") or 1):
        raise invalid("best_of must be greater than or equal to n.", "best_of", "invalid_value")
    completion_id = "cmpl-" + call.random("completions", without(body, _TRANSPORT_FIELDS)).token(29)
    rnd = request_random(call.settings.seed, "completions/text", without(body, _NEUTRAL_FIELDS))
    parts = await call.compute(prompts, body, model)
    for _, count in parts:
        too_long = context_error(model, count, body.get("max_tokens", DEFAULT_MAX_TOKENS))
        if too_long is not None:
            raise too_long
    scripts = [await rules.scripted(call, Subject(rules.COMPLETIONS, body["model"], text)) for text, _ in parts]
    outputs = await call.compute(generate, body, model, rnd, parts, scripts)
    texts, prompt_tokens = [text for text, _ in parts], sum(count for _, count in parts)
    n = body.get("n") or 1
    echo = bool(body.get("echo"))
    top = body.get("logprobs")
    entries: list[list[dict[str, Any]] | None] = [None] * len(outputs)
    if top is not None:
        logprobs_rnd = rnd.child("logprobs")
        entries = [[logprob_entry(piece, logprobs_rnd, top) for piece in o.pieces] for o in outputs]
    head = {"id": completion_id, "object": "text_completion", "created": call.clock.now(), "model": body["model"]}
    completion_tokens = sum(o.tokens for o in outputs)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}

    def choice(index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    if not body.get("stream"):
        choices = []
        for index, output in enumerate(outputs):
            prefix = texts[index // n] if echo else ""
            entry = entries[index]
            logprobs = None if entry is None else _logprobs(entry, len(prefix))
            choices.append(choice(index, prefix + output.text, logprobs, output.finish_reason))
        return await call.reply({**head, "choices": choices, "usage": usage},
                                chunks=max(len(o.pieces) for o in outputs) + 1)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    tail = {"usage": None} if include_usage else {}

    def frame(payload: dict[str, Any]) -> bytes:
        return sse.frame(dumps({**head, "choices": [payload], **tail}))

    frames = []
    for index, output in enumerate(outputs):
        offset = 0
        if echo:
            frames.append(frame(choice(index, texts[index // n], None, None)))
            offset = len(texts[index // n])
        entry = entries[index]
        for position, piece in enumerate(output.pieces):
            logprobs = None if entry is None else _logprobs(entry[position:position + 1], offset)
            frames.append(frame(choice(index, piece, logprobs, None)))
            offset += len(piece)
        frames.append(frame(choice(index, "", None, output.finish_reason)))
    if include_usage:
        frames.append(sse.frame(dumps({**head, "choices": [], "usage": usage})))
    frames.append(sse.DONE_FRAME)
    return await call.stream(frames)
