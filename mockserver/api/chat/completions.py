"""POST /v1/chat/completions: validation, generation and the JSON or SSE answer.

Each choice is one of: text (an answer about the last user message; after tool results, an answer
quoting them; JSON valid for `response_format`), a refusal (the last user message contains the
`refusal_trigger` setting), tool calls (when, see `tools`) or a legacy `function_call`; a matching
rule (`rules`) scripts any of these instead, for every choice. A call costs completion tokens for
its name plus its arguments, as the prompt counts it when sent back. `store: true` keeps the
completion for the stored-completions API (`stored`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import tiktoken
from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_chat_prompt, encoding_for_model

from ...engine import rules, schemagen, textgen, vision
from ...engine.caching import PROMPT_CACHE
from ...engine.catalogue import ModelInfo, context_error
from ...engine.generation import (
    REFUSAL,
    REFUSAL_TRIGGER,
    Output,
    answer_text,
    finish,
    logprob_entry,
    refuses,
    stop_list,
)
from ...engine.rng import RequestRandom, request_random, without
from ...engine.rules import Answer, Subject
from ...engine.state import Call
from ...engine.tools import Function, ToolCall, calls, select
from ...engine.validation import (
    LOGIT_BIAS,
    METADATA,
    MODEL,
    PENALTY,
    SEED,
    STOP,
    STREAM_OPTIONS,
    TEMPERATURE,
    TOP_P,
    USER,
    Anything,
    Arr,
    Bool,
    Custom,
    Int,
    N,
    Nullable,
    Obj,
    OneOf,
    Str,
)
from ...errors import invalid
from . import stored

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
                      "audio": Nullable(Obj(extra=True)), "annotations": Nullable(Arr(Obj(extra=True)))}),
    "tool": Obj({**_COMMON, "content": _content("tool"), "tool_call_id": Str()}, required=("content", "tool_call_id")),
    "function": Obj({**_COMMON, "content": Nullable(Str())}, required=("content", "name")),
}


def _check_message(message: dict[str, Any], path: str) -> None:
    if "role" not in message:
        raise invalid(f"Missing required parameter: '{path}.role'.", f"{path}.role", "missing_required_parameter")
    Str(ROLES).check(message["role"], f"{path}.role")
    _MESSAGE_RULES[message["role"]].check(message, path)


def _check_name(name: str, path: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9_-]+", name):
        raise invalid(f"Invalid '{path}': string does not match pattern. Expected a string that matches the "
                      "pattern '^[a-zA-Z0-9_-]+$'.", path, "invalid_value")


_NAME = Custom(Str(max_len=64), _check_name)
_FUNCTION = Obj({"name": _NAME, "description": Str(), "parameters": Obj(extra=True), "strict": Nullable(Bool())},
                required=("name",))
_TOOL = Obj({"type": Str(("function", "custom")), "function": _FUNCTION, "custom": Obj(extra=True)},
            required=("type",))
_TOOL_CHOICE = OneOf(Str(("none", "auto", "required")),
                     Obj({"type": Str(("function", "allowed_tools", "custom")), "function": Obj({"name": Str()},
                         required=("name",)), "allowed_tools": Obj(extra=True), "custom": Obj(extra=True)},
                         required=("type",)))
_JSON_SCHEMA = Obj({"name": _NAME, "description": Str(), "schema": Obj(extra=True), "strict": Nullable(Bool())},
                   required=("name",))
_RESPONSE_FORMAT = Obj({"type": Str(("text", "json_object", "json_schema")), "json_schema": _JSON_SCHEMA},
                       required=("type",))
_ALLOWED_TOOLS = Obj({"mode": Str(("auto", "required")),
                      "tools": Arr(Obj({"type": Str(), "function": Obj({"name": Str()}, required=("name",))},
                                       required=("type",), extra=True))},
                     required=("mode", "tools"))

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
    "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prediction",
    "reasoning_effort",
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
    if not model.reasoning and body.get("reasoning_effort") is not None:
        raise invalid("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                      "reasoning_effort", "unsupported_parameter")
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
    calling = False
    for index, message in enumerate(body["messages"]):
        if message["role"] == "tool" and not calling:
            raise invalid("Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                          "with 'tool_calls'.", f"messages.[{index}].role")
        calling = message["role"] == "tool" or bool(message["role"] == "assistant" and message.get("tool_calls"))


@dataclass(frozen=True, slots=True)
class Plan:
    """What every choice of a request is asked for: the functions it may call and how, and the format."""

    functions: list[Function]
    choice: str | Function
    parallel: bool = True
    legacy: bool = False
    response_format: dict[str, Any] | None = None


def plan(body: dict[str, Any]) -> Plan:
    """The request's `Plan`, after OpenAI's checks of its tools, functions and `response_format`."""
    response_format = body.get("response_format")
    if response_format is not None:
        _check_response_format(response_format, body["messages"])
    if body.get("tools") or body.get("tool_choice") is not None:
        functions, choice = _tool_functions(body)
        return Plan(functions, choice, body.get("parallel_tool_calls") is not False, False, response_format)
    if body.get("functions") or body.get("function_call") is not None:
        functions, choice = _legacy_functions(body)
        return Plan(functions, choice, False, True, response_format)
    return Plan([], "none", response_format=response_format)


def _check_response_format(response_format: dict[str, Any], messages: list[dict[str, Any]]) -> None:
    if response_format["type"] == "json_object":
        if not any("json" in textgen.text_of_content(m.get("content")).lower() for m in messages):
            raise invalid("'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                          "'json_object'.", "messages")
    elif response_format["type"] == "json_schema":
        spec = response_format.get("json_schema")
        if spec is None:
            raise invalid("Missing required parameter: 'response_format.json_schema'.", "response_format.json_schema",
                          "missing_required_parameter")
        if spec.get("strict"):
            schemagen.check_strict_schema(spec.get("schema"), "response_format",
                                          subject=f"response_format '{spec['name']}'")


def _tool_functions(body: dict[str, Any]) -> tuple[list[Function], str | Function]:
    tools = body.get("tools") or []
    functions = []
    for index, tool in enumerate(tools):
        if tool["type"] != "function":
            continue
        if "function" not in tool:
            raise invalid(f"Missing required parameter: 'tools[{index}].function'.", f"tools[{index}].function",
                          "missing_required_parameter")
        function = Function.of(tool["function"])
        function.check(f"tools[{index}].function.parameters")
        functions.append(function)
    choice = body.get("tool_choice")
    if choice is not None and not tools:
        raise invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                      "tool_choice", "invalid_value")
    if choice is None or isinstance(choice, str):
        return functions, choice or "auto"
    if choice["type"] == "function":
        if "function" not in choice:
            raise invalid("Missing required parameter: 'tool_choice.function'.", "tool_choice.function",
                          "missing_required_parameter")
        return functions, _named(functions, choice["function"]["name"], "tool_choice", "tools")
    if choice["type"] == "allowed_tools":
        allowed = choice.get("allowed_tools")
        _ALLOWED_TOOLS.check(allowed, "tool_choice.allowed_tools")
        names = {t["function"]["name"] for t in allowed["tools"] if "function" in t}
        return [f for f in functions if f.name in names], allowed["mode"]
    return functions, "none"  # a custom tool: the mock never calls those


def _legacy_functions(body: dict[str, Any]) -> tuple[list[Function], str | Function]:
    functions = [Function.of(f) for f in body.get("functions") or []]
    for index, function in enumerate(functions):
        function.check(f"functions[{index}].parameters")
    choice = body.get("function_call")
    if choice is not None and not functions:
        raise invalid("Invalid value for 'function_call': 'function_call' is only allowed when 'functions' are "
                      "specified.", "function_call", "invalid_value")
    if choice is None or isinstance(choice, str):
        return functions, choice or "auto"
    return functions, _named(functions, choice["name"], "function_call", "functions")


def _named(functions: list[Function], name: str, param: str, where: str) -> Function:
    for function in functions:
        if function.name == name:
            return function
    raise invalid(f"Invalid value for '{param}': function '{name}' not found in '{where}'.", param, "invalid_value")


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


def tool_results(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(function name, output) of the tool or function messages that end the conversation."""
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    results = []
    for message in reversed(messages):
        if message["role"] not in ("tool", "function"):
            break
        name = message.get("name") or names.get(message.get("tool_call_id"), "the tool")
        results.append((name, textgen.text_of_content(message.get("content"))))
    return results[::-1]


def subject(body: dict[str, Any]) -> Subject:
    """What rules match on: the last user message, the user turn, whether tool results end the turn."""
    messages = body["messages"]
    users = [m for m in messages if m.get("role") == "user"]
    last_user = textgen.text_of_content(users[-1].get("content")) if users else ""
    return Subject(rules.CHAT, body["model"], last_user, len(users), bool(tool_results(messages)))


def fingerprint(seed: int, model: str) -> str:
    """`system_fingerprint`: stable per model and seed."""
    return "fp_" + RequestRandom("fingerprint", seed, model).key.hex()[:10]


@dataclass(frozen=True, slots=True)
class Called:
    """A tool call as generated: its arguments' token pieces (cut by the token limit) and its cost."""

    call: ToolCall
    arguments: Output
    tokens: int


@dataclass(frozen=True, slots=True)
class Reply:
    """One choice: content or refusal pieces, or calls; plus its reasoning tokens."""

    output: Output
    finish_reason: str
    refusal: bool = False
    calls: tuple[Called, ...] = ()
    legacy: bool = False
    reasoning: int = 0

    @property
    def tokens(self) -> int:
        return self.output.tokens + sum(c.tokens for c in self.calls) + self.reasoning

    @property
    def chunks(self) -> int:
        return len(self.output.pieces) + sum(len(c.arguments.pieces) + 1 for c in self.calls)


def generate(body: dict[str, Any], model: ModelInfo, rnd: RequestRandom, request_plan: Plan,
             refusal_trigger: str = REFUSAL_TRIGGER, script: Answer | None = None) -> tuple[list[Reply], int]:
    """Each choice's reply (the `script`ed one, when a rule gave one), and the prompt's token count."""
    enc = encoding_for_model(model.id)
    messages = body["messages"]
    limit = token_limit(body)
    prompt_tokens = count_chat_prompt(messages, model.id, body.get("tools") or body.get("functions"),
                                      unknown_image=vision.UNKNOWN_SIZE)
    too_long = context_error(model, prompt_tokens, limit)
    if too_long is not None:
        raise too_long
    prompt, results = last_user_text(messages), tool_results(messages)
    stop = stop_list(body.get("stop"))
    replies = []
    for index in range(body.get("n") or 1):
        choice_rnd = rnd.child("choice", index)
        scale = EFFORT_SCALE[body.get("reasoning_effort") or "medium"]
        thinking = int(choice_rnd.choice((64, 128, 192, 256, 320)) * scale) if model.reasoning else 0
        room: int | None
        if limit is not None and thinking >= limit:
            thinking, room = limit, 0
        else:
            room = None if limit is None else limit - thinking
        if room == 0:
            reply = Reply(Output((), "length", 0), "length")
        else:
            reply = _reply(request_plan, prompt, results, choice_rnd, enc, room, stop, refusal_trigger, script)
        replies.append(replace(reply, reasoning=thinking))
    return replies, prompt_tokens


def _reply(
    request_plan: Plan, prompt: str, results: list[tuple[str, str]], rnd: RequestRandom, enc: tiktoken.Encoding,
    room: int | None, stop: list[str], refusal_trigger: str, script: Answer | None,
) -> Reply:
    if script is not None:
        return _scripted(script, request_plan, rnd, enc, room, stop)
    if refuses(prompt, refusal_trigger):
        output = finish(REFUSAL, enc, room, stop)
        return Reply(output, output.finish_reason, refusal=True)
    choice = "none" if results and request_plan.choice == "auto" else request_plan.choice
    chosen = select(request_plan.functions, choice, prompt, parallel=request_plan.parallel)
    if not chosen:
        response_format = request_plan.response_format or {"type": "text"}
        schema = (response_format.get("json_schema") or {}).get("schema")
        output = finish(answer_text(response_format["type"], schema, prompt, results, rnd), enc, room, stop)
        return Reply(output, output.finish_reason)
    return _calling(calls(chosen, rnd, prompt), enc, room, request_plan.legacy)


def _scripted(script: Answer, request_plan: Plan, rnd: RequestRandom, enc: tiktoken.Encoding, room: int | None,
              stop: list[str]) -> Reply:
    """A rule's answer as a reply, cut by `stop` and the token limit like a generated one."""
    if script.tool_calls is not None:
        made = [ToolCall(c.id or "call_" + rnd.child("tool_call", index).token(24), c.name, c.arguments_text())
                for index, c in enumerate(script.tool_calls)]
        return _calling(made[:1] if request_plan.legacy else made, enc, room, request_plan.legacy)
    if script.refusal is not None:
        output = finish(script.refusal_text, enc, room, stop)
        return Reply(output, output.finish_reason, refusal=True)
    output = finish(script.text or "", enc, room, stop)
    return Reply(output, output.finish_reason)


def _calling(to_call: list[ToolCall], enc: tiktoken.Encoding, room: int | None, legacy: bool) -> Reply:
    """A reply making `to_call` (as a legacy `function_call` when `legacy`), until the token limit."""
    made, cut = [], False
    for call in to_call:
        name_tokens = len(enc.encode_ordinary(call.name))
        arguments = finish(call.arguments, enc, None if room is None else max(room - name_tokens, 0), [])
        made.append(Called(call, arguments, name_tokens + arguments.tokens))
        room = None if room is None else room - name_tokens - arguments.tokens
        cut = arguments.finish_reason == "length" or room is not None and room <= 0
        if cut:
            break
    finish_reason = "length" if cut else "function_call" if legacy else "tool_calls"
    return Reply(Output((), finish_reason, 0), finish_reason, calls=tuple(made), legacy=legacy)


# How long a reasoning model thinks, relative to `medium` (the Responses API scales the same way).
EFFORT_SCALE = {"none": 0.0, "minimal": 0.25, "low": 0.5, "medium": 1.0, "high": 2.0, "xhigh": 3.0, "max": 4.0}


def usage(prompt_tokens: int, replies: list[Reply], cached: int = 0, predicted: tuple[int, int] = (0, 0)
          ) -> dict[str, Any]:
    """OpenAI's usage: rejected prediction tokens are billed as completion tokens, as OpenAI does."""
    accepted, rejected = predicted
    completion = sum(r.tokens for r in replies) + rejected
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt_tokens), "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": sum(r.reasoning for r in replies), "audio_tokens": 0,
                                      "accepted_prediction_tokens": accepted, "rejected_prediction_tokens": rejected},
    }


def prediction_tokens(body: dict[str, Any], replies: list[Reply], model: str) -> tuple[int, int]:
    """(accepted, rejected) tokens of a `prediction`: its tokens the answer also has, and the rest."""
    prediction = body.get("prediction")
    if not prediction:
        return 0, 0
    enc = encoding_for_model(model)
    predicted = enc.encode_ordinary(textgen.text_of_content(prediction.get("content")))
    written: dict[int, int] = {}
    for reply in replies:
        for token in enc.encode_ordinary("".join(reply.output.pieces)):
            written[token] = written.get(token, 0) + 1
    accepted = 0
    for token in predicted:
        if written.get(token):
            written[token] -= 1
            accepted += 1
    return accepted, len(predicted) - accepted


def served_tier(body: dict[str, Any]) -> str:
    """The `service_tier` OpenAI answers: the one asked for, `default` for `auto` or none."""
    tier = body.get("service_tier")
    return "default" if tier in (None, "auto") else tier


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model = call.catalogue.require(body["model"], "chat")
    validate(body, model)
    request_plan = plan(body)
    completion_id = "chatcmpl-" + call.random("chat.completions", without(body, _TRANSPORT_FIELDS)).token(29)
    script = await rules.scripted(call, subject(body))
    rnd = request_random(call.settings.seed, "chat.completions/text", without(body, _NEUTRAL_FIELDS))
    replies, prompt_tokens = await call.compute(generate, body, model, rnd, request_plan,
                                                call.settings.refusal_trigger, script)
    head = {"id": completion_id, "object": "chat.completion", "created": call.clock.now(), "model": body["model"]}
    cached = 0
    if call.settings.prompt_caching:
        cache = call.request.app[PROMPT_CACHE]
        cached = await call.compute(cache.use, model.id, [body["messages"], body.get("tools") or []],
                                    call.clock.now(), body.get("prompt_cache_retention"))
    predicted = prediction_tokens(body, replies, model.id)
    render = _Render(head, fingerprint(call.settings.seed, model.id), replies, prompt_tokens, body, rnd, cached,
                     predicted)
    if body.get("store"):
        stored.keep(call.request.app, render.completion(), body, call.headers["x-request-id"])
    if body.get("stream"):
        return await call.stream(render.frames())
    return await call.reply(render.completion(), chunks=max(r.chunks for r in replies) + 2)


@dataclass(frozen=True, slots=True)
class _Render:
    """The replies as OpenAI's JSON body or SSE frames."""

    head: dict[str, Any]
    system_fingerprint: str
    replies: list[Reply]
    prompt_tokens: int
    body: dict[str, Any]
    rnd: RequestRandom
    cached: int = 0
    predicted: tuple[int, int] = (0, 0)

    def _logprobs_rnd(self) -> RequestRandom | None:
        return self.rnd.child("logprobs") if self.body.get("logprobs") else None

    def completion(self) -> dict[str, Any]:
        """The non-streamed `chat.completion`."""
        logprobs_rnd, top = self._logprobs_rnd(), self.body.get("top_logprobs") or 0
        choices = []
        for index, reply in enumerate(self.replies):
            logprobs = None
            if logprobs_rnd is not None:
                entries = [logprob_entry(p, logprobs_rnd, top) for p in reply.output.pieces]
                logprobs = _logprobs(reply, entries)
            choices.append({"index": index, "message": _message(reply), "logprobs": logprobs,
                            "finish_reason": reply.finish_reason})
        return {**self.head, "choices": choices,
                "usage": usage(self.prompt_tokens, self.replies, self.cached, self.predicted),
                "service_tier": served_tier(self.body), "system_fingerprint": self.system_fingerprint}

    def frames(self) -> list[bytes]:
        """The SSE frames OpenAI sends: per choice a role delta, deltas by token, the finish; then the
        optional usage chunk and [DONE]."""
        include_usage = bool((self.body.get("stream_options") or {}).get("include_usage"))
        chunk_head = {**self.head, "object": "chat.completion.chunk", "service_tier": served_tier(self.body),
                      "system_fingerprint": self.system_fingerprint}
        tail = {"usage": None} if include_usage else {}
        logprobs_rnd, top = self._logprobs_rnd(), self.body.get("top_logprobs") or 0

        def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish_reason: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return sse.frame(dumps({**chunk_head, "choices": [choice], **tail}))

        frames = []
        for index, reply in enumerate(self.replies):
            for delta, piece in _deltas(reply):
                logprobs = None
                if logprobs_rnd is not None and piece is not None:
                    logprobs = _logprobs(reply, [logprob_entry(piece, logprobs_rnd, top)])
                frames.append(chunk(index, delta, logprobs))
            frames.append(chunk(index, {}, None, reply.finish_reason))
        if include_usage:
            frames.append(sse.frame(dumps({**chunk_head, "choices": [],
                                           "usage": usage(self.prompt_tokens, self.replies, self.cached,
                                                                          self.predicted)})))
        frames.append(sse.DONE_FRAME)
        return frames


def _message(reply: Reply) -> dict[str, Any]:
    text = reply.output.text
    message: dict[str, Any] = {"role": "assistant", "content": None if reply.refusal or reply.calls else text,
                               "refusal": text if reply.refusal else None}
    if reply.calls and reply.legacy:
        message["function_call"] = {"name": reply.calls[0].call.name, "arguments": reply.calls[0].arguments.text}
    elif reply.calls:
        message["tool_calls"] = [
            {"id": c.call.id, "type": "function", "function": {"name": c.call.name, "arguments": c.arguments.text}}
            for c in reply.calls
        ]
    message["annotations"] = []
    return message


def _logprobs(reply: Reply, entries: list[dict[str, Any]]) -> dict[str, Any]:
    if reply.calls:
        return {"content": None, "refusal": None}
    return {"content": None, "refusal": entries} if reply.refusal else {"content": entries, "refusal": None}


def _deltas(reply: Reply) -> Iterator[tuple[dict[str, Any], str | None]]:
    """A reply's deltas before its finish chunk, each with the token piece it carries (for logprobs)."""
    field = "refusal" if reply.refusal else "content"
    if reply.calls:
        yield {"role": "assistant", "content": None, "refusal": None}, None
    else:
        yield {"role": "assistant", "content": None if reply.refusal else "",
               "refusal": "" if reply.refusal else None}, None
    for piece in reply.output.pieces:
        yield {field: piece}, piece
    for index, called in enumerate(reply.calls):
        name, pieces = called.call.name, called.arguments.pieces
        if reply.legacy:
            yield {"function_call": {"name": name, "arguments": ""}}, None
            yield from (({"function_call": {"arguments": p}}, None) for p in pieces)
        else:
            yield {"tool_calls": [{"index": index, "id": called.call.id, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}, None
            yield from (({"tool_calls": [{"index": index, "function": {"arguments": p}}]}, None) for p in pieces)
