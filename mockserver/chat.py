"""POST /v1/chat/completions: validation, generation and the JSON or SSE answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_chat_prompt, encoding_for_model

from . import textgen
from .errors import invalid
from .generation import Output, finish, logprob_entry, stop_list
from .models import ModelInfo
from .rng import RequestRandom, request_random, without
from .state import Call
from .validation import (
    LOGIT_BIAS, METADATA, MODEL, N, PENALTY, SEED, STOP, STREAM_OPTIONS, TEMPERATURE, TOP_P, USER,
    Anything, Arr, Bool, Custom, Int, Nullable, Obj, OneOf, Str,
)

ROLES = ("system", "assistant", "user", "function", "tool", "developer")

_TEXT_PART = Obj({"type": Str(), "text": Str()}, required=("type", "text"))
_PART_FIELDS = {
    "text": _TEXT_PART,
    "image_url": Obj({"type": Str(), "image_url": Obj({"url": Str(), "detail": Str(("auto", "low", "high"))},
                                                      required=("url",))}, required=("type", "image_url")),
    "input_audio": Obj({"type": Str(), "input_audio": Obj({"data": Str(), "format": Str(("wav", "mp3"))},
                                                          required=("data", "format"))},
                       required=("type", "input_audio")),
    "file": Obj({"type": Str(), "file": Obj({"file_data": Str(), "file_id": Str(), "filename": Str()})},
                required=("type", "file")),
    "refusal": Obj({"type": Str(), "refusal": Str()}, required=("type", "refusal")),
}
_ALLOWED_PARTS = {
    "user": ("text", "image_url", "input_audio", "file"),
    "system": ("text",),
    "developer": ("text",),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}


def _check_part(role: str) -> Custom:
    def check(part: dict[str, Any], path: str) -> None:
        if "type" not in part:
            raise invalid(f"Missing required parameter: '{path}.type'.", f"{path}.type", "missing_required_parameter")
        Str(_ALLOWED_PARTS[role]).check(part["type"], f"{path}.type")
        _PART_FIELDS[part["type"]].check(part, path)

    return Custom(Obj(extra=True), check)


def _content(role: str) -> OneOf:
    return OneOf(Str(), Arr(_check_part(role), min_len=1))


_TOOL_CALL = Obj(
    {"id": Str(), "type": Str(("function",)), "function": Obj({"name": Str(), "arguments": Str()},
                                                             required=("name", "arguments"))},
    required=("id", "type", "function"),
)
_COMMON = {"role": Str(ROLES), "name": Str()}
_MESSAGE_RULES: dict[str, Obj] = {
    "system": Obj({**_COMMON, "content": _content("system")}, required=("content",)),
    "developer": Obj({**_COMMON, "content": _content("developer")}, required=("content",)),
    "user": Obj({**_COMMON, "content": _content("user")}, required=("content",)),
    "assistant": Obj({**_COMMON, "content": Nullable(_content("assistant")), "refusal": Nullable(Str()),
                      "tool_calls": Arr(_TOOL_CALL), "function_call": Nullable(Obj(extra=True)),
                      "audio": Nullable(Obj(extra=True))}),
    "tool": Obj({**_COMMON, "content": _content("tool"), "tool_call_id": Str()}, required=("content", "tool_call_id")),
    "function": Obj({**_COMMON, "content": Nullable(Str())}, required=("content", "name")),
}


def _check_message(message: dict[str, Any], path: str) -> None:
    if "role" not in message:
        raise invalid(f"Missing required parameter: '{path}.role'.", f"{path}.role", "missing_required_parameter")
    Str(ROLES).check(message["role"], f"{path}.role")
    _MESSAGE_RULES[message["role"]].check(message, path)


_FUNCTION = Obj({"name": Str(max_len=64), "description": Str(), "parameters": Obj(extra=True),
                 "strict": Nullable(Bool())}, required=("name",))
_TOOL = Obj({"type": Str(("function", "custom")), "function": _FUNCTION, "custom": Obj(extra=True)},
            required=("type",))
_TOOL_CHOICE = OneOf(Str(("none", "auto", "required")),
                     Obj({"type": Str(("function", "allowed_tools", "custom")), "function": Obj({"name": Str()},
                         required=("name",)), "allowed_tools": Obj(extra=True), "custom": Obj(extra=True)},
                         required=("type",)))
_RESPONSE_FORMAT = Obj({"type": Str(("text", "json_object", "json_schema")), "json_schema": Obj(extra=True)},
                       required=("type",))

REQUEST = Obj(
    {
        "model": MODEL,
        "messages": Arr(Custom(Obj(extra=True), _check_message), min_len=1),
        "audio": Nullable(Obj(extra=True)),
        "frequency_penalty": PENALTY,
        "presence_penalty": PENALTY,
        "function_call": OneOf(Str(("none", "auto")), Obj({"name": Str()}, required=("name",))),
        "functions": Arr(_FUNCTION, min_len=1, max_len=128),
        "logit_bias": LOGIT_BIAS,
        "logprobs": Nullable(Bool()),
        "top_logprobs": Nullable(Int(0, 20)),
        "max_tokens": Nullable(Int(1)),
        "max_completion_tokens": Nullable(Int(1)),
        "metadata": METADATA,
        "modalities": Nullable(Arr(Str(("text", "audio")))),
        "moderation": Anything(),
        "n": N,
        "parallel_tool_calls": Bool(),
        "prediction": Nullable(Obj(extra=True)),
        "prompt_cache_key": Str(),
        "prompt_cache_options": Anything(),
        "prompt_cache_retention": Nullable(Str(("in-memory", "24h"))),
        "reasoning_effort": Nullable(Str(("none", "minimal", "low", "medium", "high", "xhigh"))),
        "response_format": _RESPONSE_FORMAT,
        "safety_identifier": Str(),
        "seed": SEED,
        "service_tier": Nullable(Str(("auto", "default", "flex", "scale", "priority"))),
        "stop": STOP,
        "store": Nullable(Bool()),
        "stream": Nullable(Bool()),
        "stream_options": STREAM_OPTIONS,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "tool_choice": _TOOL_CHOICE,
        "tools": Arr(_TOOL, max_len=128),
        "user": USER,
        "verbosity": Nullable(Str(("low", "medium", "high"))),
        "web_search_options": Obj(extra=True),
    },
    required=("model", "messages"),
)

_TRANSPORT_FIELDS = ("stream", "stream_options")
# Fields that do not change what the model would write: a shorter `max_tokens` truncates the same
# answer, and `stop` cuts it, as with a real model at temperature 0.
_NEUTRAL_FIELDS = _TRANSPORT_FIELDS + (
    "max_tokens", "max_completion_tokens", "stop", "logprobs", "top_logprobs", "user", "metadata", "store",
    "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
)


def validate(body: dict[str, Any], model: ModelInfo) -> None:
    """Cross-field rules OpenAI enforces beyond the schema."""
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      "stream_options", "invalid_value")
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise invalid("Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' "
                      "is used.", "top_logprobs", "invalid_value")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise invalid("max_tokens and max_completion_tokens cannot both be set. Use max_completion_tokens.",
                      "max_tokens", "invalid_value")
    if model.reasoning:
        if body.get("max_tokens") is not None:
            raise invalid("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        for name in ("temperature", "top_p"):
            if body.get(name) not in (None, 1):
                raise invalid(f"Unsupported value: '{name}' does not support {body[name]} with this model. "
                              "Only the default (1) value is supported.", name, "unsupported_value")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    limit = token_limit(body)
    if limit is not None and limit > model.max_output_tokens:
        raise invalid(f"{limit_name} is too large: {limit}. This model supports at most "
                      f"{model.max_output_tokens} completion tokens, whereas you provided {limit}.",
                      limit_name, "invalid_value")


def token_limit(body: dict[str, Any]) -> int | None:
    """`max_completion_tokens`, else the deprecated `max_tokens`; an explicit null means unset."""
    if body.get("max_completion_tokens") is not None:
        return body["max_completion_tokens"]
    return body.get("max_tokens")


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message, or of the last message when no user spoke."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return textgen.text_of_content(message.get("content"))
    return textgen.text_of_content(messages[-1].get("content"))


def fingerprint(seed: int, model: str) -> str:
    """`system_fingerprint`: stable per model and seed."""
    return "fp_" + RequestRandom("fingerprint", seed, model).key.hex()[:10]


def generate(body: dict[str, Any], model: ModelInfo, rnd: RequestRandom) -> tuple[list[Output], list[int], int]:
    """Each choice's output and reasoning tokens, and the prompt's token count."""
    enc = encoding_for_model(model.id)
    prompt = last_user_text(body["messages"])
    limit = token_limit(body)
    stop = stop_list(body.get("stop"))
    outputs, reasoning = [], []
    for index in range(body.get("n") or 1):
        choice_rnd = rnd.child("choice", index)
        thinking = choice_rnd.choice((64, 128, 192, 256, 320)) if model.reasoning else 0
        if limit is not None and thinking >= limit:
            thinking, room = limit, 0
        else:
            room = None if limit is None else limit - thinking
        output = finish(textgen.answer(prompt, choice_rnd), enc, room, stop)
        if room == 0:
            output = Output((), "length", 0)
        outputs.append(output)
        reasoning.append(thinking)
    return outputs, reasoning, count_chat_prompt(body["messages"], model.id, body.get("tools"))


def usage(prompt_tokens: int, outputs: list[Output], reasoning: list[int]) -> dict[str, Any]:
    completion = sum(o.tokens for o in outputs) + sum(reasoning)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": sum(reasoning), "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model = call.catalogue.require(body["model"], "chat")
    validate(body, model)
    completion_id = "chatcmpl-" + call.random("chat.completions", without(body, _TRANSPORT_FIELDS)).token(29)
    rnd = request_random(call.settings.seed, "chat.completions/text", without(body, _NEUTRAL_FIELDS))
    outputs, reasoning, prompt_tokens = await call.compute(generate, body, model, rnd)
    head = {"id": completion_id, "object": "chat.completion", "created": call.clock.now(), "model": body["model"]}
    top = body.get("top_logprobs") or 0
    system_fingerprint = fingerprint(call.settings.seed, model.id)
    logprobs_rnd = rnd.child("logprobs") if body.get("logprobs") else None
    if body.get("stream"):
        frames = _frames(head, system_fingerprint, outputs, prompt_tokens, reasoning, body, logprobs_rnd, top)
        return await call.stream(frames)
    choices = []
    for index, output in enumerate(outputs):
        logprobs = None
        if logprobs_rnd is not None:
            logprobs = {"content": [logprob_entry(p, logprobs_rnd, top) for p in output.pieces], "refusal": None}
        choices.append({
            "index": index,
            "message": {"role": "assistant", "content": output.text, "refusal": None, "annotations": []},
            "logprobs": logprobs,
            "finish_reason": output.finish_reason,
        })
    response = {**head, "choices": choices, "usage": usage(prompt_tokens, outputs, reasoning),
                "service_tier": "default", "system_fingerprint": system_fingerprint}
    return await call.reply(response, chunks=max(len(o.pieces) for o in outputs) + 2)


def _frames(
    head: dict[str, Any], system_fingerprint: str, outputs: list[Output], prompt_tokens: int,
    reasoning: list[int], body: dict[str, Any], logprobs_rnd: RequestRandom | None, top: int,
) -> list[bytes]:
    """The SSE frames OpenAI sends: role delta, content deltas by token, finish, optional usage, [DONE]."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunk_head = {**head, "object": "chat.completion.chunk", "service_tier": "default",
                  "system_fingerprint": system_fingerprint}
    tail = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse.frame(dumps({**chunk_head, "choices": [choice], **tail}))

    frames = []
    for index, output in enumerate(outputs):
        frames.append(chunk(index, {"role": "assistant", "content": "", "refusal": None}))
        for piece in output.pieces:
            logprobs = None
            if logprobs_rnd is not None:
                logprobs = {"content": [logprob_entry(piece, logprobs_rnd, top)], "refusal": None}
            frames.append(chunk(index, {"content": piece}, logprobs))
        frames.append(chunk(index, {}, None, output.finish_reason))
    if include_usage:
        frames.append(sse.frame(dumps({**chunk_head, "choices": [], "usage": usage(prompt_tokens, outputs, reasoning)})))
    frames.append(sse.DONE_FRAME)
    return frames
