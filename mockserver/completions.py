"""POST /v1/completions: the legacy text completion endpoint, JSON or SSE."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_text, encoding_for_model

from . import textgen
from .errors import invalid
from .generation import Output, finish, stop_list
from .models import ModelInfo
from .rng import RequestRandom, request_random, without
from .state import Call
from .validation import (
    LOGIT_BIAS, MODEL, N, PENALTY, SEED, STOP, STREAM_OPTIONS, TEMPERATURE, TOP_P, USER,
    Arr, Bool, Int, Nullable, Obj, OneOf, Str,
)

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


def prompts(body: dict[str, Any], model: ModelInfo) -> list[str]:
    """The prompt as a list of strings; token arrays are decoded with the model's encoding."""
    prompt = body.get("prompt")
    if prompt is None:
        return ["<|endoftext|>"]
    if isinstance(prompt, str):
        return [prompt]
    enc = encoding_for_model(model.id)
    if all(isinstance(p, int) for p in prompt):
        return [_decode(enc, prompt, "prompt")]
    if all(isinstance(p, list) for p in prompt):
        return [_decode(enc, p, f"prompt[{i}]") for i, p in enumerate(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise invalid("Invalid 'prompt': an array must hold only strings or only tokens.", "prompt", "invalid_value")


def _decode(enc: Any, tokens: list[int], param: str) -> str:
    try:
        return enc.decode(tokens)
    except (KeyError, ValueError, OverflowError):
        raise invalid(f"Invalid token in '{param}': every token must be in the model's vocabulary.", param,
                      "invalid_value") from None


def generate(body: dict[str, Any], model: ModelInfo, rnd: RequestRandom) -> tuple[list[str], list[Output], int]:
    """One output per prompt and `n`, and the prompt tokens, like OpenAI's indexing (prompt-major)."""
    texts = prompts(body, model)
    enc = encoding_for_model(model.id)
    limit = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    outputs = []
    for p_index, prompt in enumerate(texts):
        for c_index in range(body.get("n") or 1):
            text = textgen.answer(prompt, rnd.child("choice", p_index, c_index))
            outputs.append(finish(" " + text, enc, limit, stop_list(body.get("stop"))))
    return texts, outputs, sum(count_text(t, model.id) for t in texts)


def _logprobs(output: Output, rnd: RequestRandom, top: int, offset: int) -> dict[str, Any]:
    values = [-round(rnd.random() ** 3 * 2.5, 6) for _ in output.pieces]
    offsets, position = [], offset
    for piece in output.pieces:
        offsets.append(position)
        position += len(piece)
    return {
        "tokens": list(output.pieces),
        "token_logprobs": values,
        "top_logprobs": [{piece: value} for piece, value in zip(output.pieces, values)] if top else None,
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
    texts, outputs, prompt_tokens = await call.compute(generate, body, model, rnd)
    n = body.get("n") or 1
    echo = bool(body.get("echo"))
    logprobs_rnd = rnd.child("logprobs") if body.get("logprobs") is not None else None
    head = {"id": completion_id, "object": "text_completion", "created": call.clock.now(), "model": body["model"]}
    completion_tokens = sum(o.tokens for o in outputs)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}

    def choice(index: int, text: str, output: Output | None, finish_reason: str | None) -> dict[str, Any]:
        logprobs = None
        if logprobs_rnd is not None and output is not None:
            logprobs = _logprobs(output, logprobs_rnd, body["logprobs"], len(text) - len(output.text))
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    if not body.get("stream"):
        choices = []
        for index, output in enumerate(outputs):
            prefix = texts[index // n] if echo else ""
            choices.append(choice(index, prefix + output.text, output, output.finish_reason))
        return await call.reply({**head, "choices": choices, "usage": usage},
                                chunks=max(len(o.pieces) for o in outputs) + 1)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    tail = {"usage": None} if include_usage else {}
    frames = []
    for index, output in enumerate(outputs):
        if echo:
            frames.append(sse.frame(dumps({**head, "choices": [choice(index, texts[index // n], None, None)], **tail})))
        for piece in output.pieces:
            single = Output((piece,), output.finish_reason, 1)
            frames.append(sse.frame(dumps({**head, "choices": [choice(index, piece, single, None)], **tail})))
        frames.append(sse.frame(dumps({**head, "choices": [choice(index, "", None, output.finish_reason)], **tail})))
    if include_usage:
        frames.append(sse.frame(dumps({**head, "choices": [], "usage": usage})))
    frames.append(sse.DONE_FRAME)
    return await call.stream(frames)
