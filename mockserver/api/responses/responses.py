"""The Responses API: POST /v1/responses (JSON or SSE events), GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items, POST /v1/responses/{id}/cancel, POST /v1/responses/input_tokens
and POST /v1/responses/compact.

The context of a response is its predecessors' inputs and outputs (`previous_response_id`), then its
own input; `instructions` are not carried over, as with OpenAI, and `input_items` lists that whole
context. The answer is generated from the last user message as chat's is: function calls by the
rule of `tools` (`allowed_tools` narrows the functions and sets the mode), else a message whose text
follows `text.format` (schema-valid JSON for `json_schema`) and reports the tool results given since
the last user message, or a refusal when the message holds the `refusal_trigger` setting; a matching
rule (`rules`) scripts the text, function calls or refusal instead. Reasoning models think for a
number of tokens scaled by `reasoning.effort` and show an empty-summary `reasoning` item;
`max_output_tokens` counts those tokens too.

Not emulated (accepted, echoed where OpenAI echoes them, otherwise ignored): built-in and custom
tools (never called), reasoning summaries, `truncation`, `prompt`, `context_management`,
`moderation`, `prompt_cache_*`, `service_tier`, stream obfuscation, and `include` values other than
`message.output_text.logprobs` and `reasoning.encrypted_content`.

`conversation` (see `conversations`) prepends the conversation's items and appends the response's input
and output to it. `background: true` (see `background`) answers `queued` and moves on the virtual
clock; a streamed background request streams the finished response.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

import tiktoken
from aiohttp import web

from proxy.wire import sse
from proxy.wire.jsoncodec import dumps
from proxy.wire.tokens import count_chat_prompt, encoding_for_model

from ...engine import rules, schemagen, textgen, vision
from ...engine.caching import PROMPT_CACHE, PromptCache
from ...engine.catalogue import Catalogue, ModelInfo, context_error
from ...engine.control import on_reset
from ...engine.dispatch import LINE_HANDLERS
from ...engine.faults import FAULT, PACING, Pacing
from ...engine.generation import (
    REFUSAL,
    REFUSAL_TRIGGER,
    Output,
    answer_text,
    finish,
    logprob_entry,
    pieces_of,
    refuses,
)
from ...engine.rng import RequestRandom, request_random, without
from ...engine.rules import Answer, Subject
from ...engine.state import CLOCK, SETTINGS, SLEEP, Call, endpoint
from ...engine.streaming import send_stream
from ...engine.tools import Function, ToolCall, calls, select
from ...engine.validation import (
    METADATA,
    MODEL,
    STREAM_OPTIONS,
    TEMPERATURE,
    TOP_P,
    USER,
    Anything,
    Arr,
    Bool,
    Custom,
    Int,
    Nullable,
    Obj,
    OneOf,
    Str,
)
from ...errors import MockError, invalid
from ..files.files import answer, query_int
from . import background, conversations
from .store import RESPONSES, ResponseStore, Stored

ROLES = ("user", "assistant", "system", "developer")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
INCLUDE = (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
)
LOGPROBS = "message.output_text.logprobs"
ENCRYPTED_REASONING = "reasoning.encrypted_content"

_STATUS = Str(("in_progress", "completed", "incomplete"))
_INPUT_PARTS = ("input_text", "input_image", "input_file")
_ROLE_PARTS = {"user": _INPUT_PARTS, "system": _INPUT_PARTS, "developer": _INPUT_PARTS,
               "assistant": ("output_text", "refusal")}
_PART_RULES = {
    "input_text": Obj({"type": Str(), "text": Str(), "prompt_cache_breakpoint": Anything()}, required=("type", "text")),
    "input_image": Obj({"type": Str(), "image_url": Nullable(Str()), "file_id": Nullable(Str()),
                        "detail": Str(("low", "high", "auto", "original")), "prompt_cache_breakpoint": Anything()},
                       required=("type",)),
    "input_file": Obj({"type": Str(), "file_id": Nullable(Str()), "file_data": Str(), "file_url": Str(),
                       "filename": Str(), "detail": Str(("auto", "low", "high")),
                       "prompt_cache_breakpoint": Anything()},
                      required=("type",)),
    "output_text": Obj({"type": Str(), "text": Str(), "annotations": Arr(Obj(extra=True)),
                        "logprobs": Arr(Obj(extra=True))}, required=("type", "text")),
    "refusal": Obj({"type": Str(), "refusal": Str()}, required=("type", "refusal")),
}


def _check_content(message: dict[str, Any], path: str) -> None:
    content = message["content"]
    OneOf(Str(), Arr(Obj(extra=True))).check(content, f"{path}.content")
    if isinstance(content, list):
        for index, part in enumerate(content):
            where = f"{path}.content[{index}]"
            if "type" not in part:
                raise invalid(f"Missing required parameter: '{where}.type'.", f"{where}.type",
                              "missing_required_parameter")
            Str(_ROLE_PARTS[message["role"]]).check(part["type"], f"{where}.type")
            _PART_RULES[part["type"]].check(part, where)


_ITEM_RULES: dict[str, Obj | Custom] = {
    "message": Custom(Obj({"type": Str(), "id": Str(), "role": Str(ROLES), "content": Anything(), "status": _STATUS,
                           "phase": Anything()}, required=("role", "content")), _check_content),
    "function_call": Obj({"type": Str(), "id": Str(), "call_id": Str(min_len=1), "name": Str(min_len=1),
                          "arguments": Str(), "status": _STATUS, "namespace": Str(), "caller": Anything()},
                         required=("type", "call_id", "name", "arguments")),
    "function_call_output": Obj({"type": Str(), "id": Nullable(Str()), "call_id": Str(min_len=1, max_len=64),
                                 "output": OneOf(Str(), Arr(Obj(extra=True))), "status": Nullable(_STATUS),
                                 "name": Nullable(Str()), "namespace": Nullable(Str()), "caller": Anything()},
                                required=("type", "call_id", "output")),
    "reasoning": Obj({"type": Str(), "id": Str(), "summary": Arr(Obj(extra=True)), "content": Arr(Obj(extra=True)),
                      "encrypted_content": Nullable(Str()), "status": _STATUS}, required=("type", "id", "summary")),
    "item_reference": Obj({"type": Nullable(Str()), "id": Str()}, required=("id",)),
}
_OPAQUE_ITEMS = (
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "image_generation_call",
    "code_interpreter_call", "local_shell_call", "local_shell_call_output", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response",
    "mcp_call", "custom_tool_call", "custom_tool_call_output", "compaction",
)
_ITEM_TYPE = Str((*_ITEM_RULES, *_OPAQUE_ITEMS))


def _kind(item: dict[str, Any]) -> str:
    """An item's type; without one it is a message, or an item reference when it has only an id."""
    if isinstance(item.get("type"), str):
        return item["type"]
    return "item_reference" if "role" not in item and "id" in item else "message"


def _check_item(item: dict[str, Any], path: str) -> None:
    if item.get("type") is not None:
        _ITEM_TYPE.check(item["type"], f"{path}.type")
    _ITEM_RULES.get(_kind(item), Obj(extra=True)).check(item, path)


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_FUNCTION_TOOL = Obj(
    {"type": Str(), "name": Str(max_len=64), "description": Nullable(Str()), "parameters": Nullable(Obj(extra=True)),
     "strict": Nullable(Bool()), "defer_loading": Bool(), "output_schema": Nullable(Obj(extra=True)),
     "allowed_callers": Anything()},
    required=("type", "name"),
)


def _check_tool(tool: dict[str, Any], path: str) -> None:
    if tool["type"] != "function":
        return
    _FUNCTION_TOOL.check(tool, path)
    if not _TOOL_NAME.fullmatch(tool["name"]):
        raise invalid(f"Invalid '{path}.name': string does not match pattern. Expected a string that matches the "
                      "pattern '^[a-zA-Z0-9_-]+$'.", f"{path}.name", "invalid_value")


_FORMAT = Obj({"type": Str(("text", "json_schema", "json_object")), "name": Str(max_len=64), "schema": Obj(extra=True),
               "strict": Nullable(Bool()), "description": Str()}, required=("type",))


def _check_format(fmt: dict[str, Any], path: str) -> None:
    if fmt["type"] == "json_schema":
        Obj(_FORMAT.fields, required=("type", "name", "schema")).check(fmt, path)


_INPUT_ITEMS = Arr(Custom(Obj(extra=True), _check_item))

REQUEST = Obj(
    {
        "model": MODEL,
        "input": OneOf(Str(), _INPUT_ITEMS),
        "instructions": Nullable(Str()),
        "tools": Arr(Custom(Obj({"type": Str()}, required=("type",), extra=True), _check_tool)),
        "tool_choice": OneOf(Str(("none", "auto", "required")),
                             Obj({"type": Str(), "name": Str(), "mode": Str(("auto", "required")),
                                  "tools": Arr(Obj({"type": Str(), "name": Str()}, required=("type",), extra=True))},
                                 required=("type",), extra=True)),
        "parallel_tool_calls": Nullable(Bool()),
        "max_tool_calls": Nullable(Int(1)),
        "text": Nullable(Obj({"format": Custom(_FORMAT, _check_format),
                              "verbosity": Nullable(Str(("low", "medium", "high")))})),
        "max_output_tokens": Nullable(Int(16)),
        "previous_response_id": Nullable(Str()),
        "store": Nullable(Bool()),
        "metadata": METADATA,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "top_logprobs": Nullable(Int(0, 20)),
        "user": USER,
        "safety_identifier": Nullable(Str(max_len=64)),
        "prompt_cache_key": Nullable(Str()),
        "prompt_cache_retention": Nullable(Str(("in_memory", "24h"))),
        "prompt_cache_options": Anything(),
        "reasoning": Nullable(Obj({"effort": Nullable(Str(EFFORTS)),
                                   "summary": Nullable(Str(("auto", "concise", "detailed"))),
                                   "generate_summary": Nullable(Str(("auto", "concise", "detailed"))),
                                   "mode": Anything(), "context": Anything()})),
        "stream": Nullable(Bool()),
        "stream_options": STREAM_OPTIONS,
        "truncation": Nullable(Str(("auto", "disabled"))),
        "include": Nullable(Arr(Str(INCLUDE))),
        "background": Nullable(Bool()),
        "service_tier": Nullable(Str(("auto", "default", "flex", "scale", "priority"))),
        "conversation": Nullable(OneOf(Str(), Obj({"id": Str()}, required=("id",)))),
        "context_management": Anything(),
        "prompt": Anything(),
        "moderation": Anything(),
    },
    required=("model",),
)

_TRANSPORT_FIELDS = ("stream", "stream_options")
# Fields that do not change what the model writes: a lower `max_output_tokens` truncates the same answer,
# and the reasoning effort changes how long the model thinks, not its answer.
_NEUTRAL_FIELDS = _TRANSPORT_FIELDS + (
    "max_output_tokens", "store", "metadata", "user", "include", "top_logprobs", "service_tier", "background",
    "reasoning", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "truncation",
)
_EFFORT_SCALE = {"none": 0.0, "minimal": 0.25, "low": 0.5, "medium": 1.0, "high": 2.0, "xhigh": 3.0, "max": 4.0}


# --- validation ---------------------------------------------------------------------------------

def model_for(catalogue: Catalogue, model_id: str) -> ModelInfo:
    """The model, or the 400 OpenAI answers on /v1/responses for an unknown or non-text model."""
    model = catalogue.get(model_id)
    if model is None:
        raise MockError(400, f"The requested model '{model_id}' does not exist.", param="model",
                        code="model_not_found")
    if not model.text:
        raise MockError(400, f"The requested model '{model_id}' is not supported with the Responses API.",
                        param="model")
    return model


def validate(body: dict[str, Any], model: ModelInfo) -> None:
    """Cross-field rules OpenAI enforces beyond the schema."""
    if body.get("input") is None and not body.get("previous_response_id") and body.get("prompt") is None:
        raise invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      "stream_options", "invalid_value")
    if body.get("conversation") is not None and body.get("previous_response_id"):
        raise invalid("Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' "
                      "or 'conversation'.", None, "mutually_exclusive_parameters")
    if body.get("background") and body.get("store") is False:
        raise invalid("Background mode requires 'store' to be true.", "background")
    if model.reasoning:
        for name in ("temperature", "top_p"):
            if body.get(name) not in (None, 1):
                raise invalid(f"Unsupported parameter: '{name}' is not supported with this model.", name,
                              "unsupported_parameter")
    elif (body.get("reasoning") or {}).get("effort") is not None:
        raise invalid("Unsupported parameter: 'reasoning.effort' is not supported with this model.",
                      "reasoning.effort", "unsupported_parameter")
    fmt = _format(body)
    if fmt["type"] == "json_schema" and fmt.get("strict"):
        schemagen.check_strict_schema(fmt["schema"], "text.format.schema", subject=f"response_format '{fmt['name']}'")


def functions(body: dict[str, Any]) -> tuple[list[Function], str | Function]:
    """The function tools and the `tool_choice` among them, after OpenAI's checks; other tools are never
    called, so choosing one of them answers with a message."""
    tools = body.get("tools") or []
    found = []
    for index, tool in enumerate(tools):
        if tool["type"] == "function":
            function = Function.of(tool)
            function.check(f"tools[{index}].parameters")
            found.append(function)
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, str):
        return found, choice
    if choice["type"] == "allowed_tools":
        names = {t.get("name") for t in choice.get("tools", []) if t.get("type") == "function"}
        return [f for f in found if f.name in names], choice.get("mode", "auto")
    if choice["type"] == "function" and "name" not in choice:
        raise invalid("Missing required parameter: 'tool_choice.name'.", "tool_choice.name",
                      "missing_required_parameter")
    name = choice.get("name", choice["type"])
    if not any(t["type"] == choice["type"] and t.get("name", name) == name for t in tools):
        raise invalid(f"Tool choice '{name}' not found in 'tools' parameter.", "tool_choice")
    return found, next((f for f in found if f.name == name), "none") if choice["type"] == "function" else "none"


def _format(body: dict[str, Any]) -> dict[str, Any]:
    return (body.get("text") or {}).get("format") or {"type": "text"}


# --- context: the items a response is generated from ------------------------------------------

def _hex_id(prefix: str, rnd: RequestRandom) -> str:
    """An OpenAI-shaped item id: prefix and 48 hex digits."""
    return f"{prefix}{rnd.getrandbits(192):048x}"


def _normal_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "input_image":
        return {"type": "input_image", "detail": part.get("detail", "auto"), "file_id": part.get("file_id"),
                "image_url": part.get("image_url")}
    if part["type"] == "output_text":
        return {"type": "output_text", "annotations": part.get("annotations", []),
                "logprobs": part.get("logprobs", []), "text": part["text"]}
    return part


def _normal_item(item: dict[str, Any], rnd: RequestRandom, store: ResponseStore) -> dict[str, Any]:
    """An input item as `input_items` lists it: with an id, a status and content parts."""
    kind = _kind(item)
    if kind == "message":
        content = item["content"]
        if isinstance(content, str):
            part_type = "output_text" if item["role"] == "assistant" else "input_text"
            content = [{"type": part_type, "text": content}]
        return {"id": item.get("id") or _hex_id("msg_", rnd), "type": "message",
                "status": item.get("status", "completed"), "content": [_normal_part(p) for p in content],
                "role": item["role"]}
    if kind == "function_call":
        return {"id": item.get("id") or _hex_id("fc_", rnd), "type": "function_call",
                "status": item.get("status", "completed"), "arguments": item["arguments"], "call_id": item["call_id"],
                "name": item["name"]}
    if kind == "function_call_output":
        return {"id": item.get("id") or _hex_id("fco_", rnd), "type": "function_call_output",
                "status": item.get("status") or "completed", "call_id": item["call_id"], "output": item["output"]}
    if kind == "item_reference":
        found = store.find_item(item["id"])
        if found is None:
            raise MockError(404, f"Item with id '{item['id']}' not found.", param="input")
        return found
    return item


def normalize_items(items: list[dict[str, Any]], rnd: RequestRandom, store: ResponseStore | None = None,
                    path: str = "items") -> list[dict[str, Any]]:
    """Items given to the Conversations API, checked and normalized as `input` items are."""
    _INPUT_ITEMS.check(items, path)
    return [_normal_item(item, rnd.child("item", index), store or ResponseStore())
            for index, item in enumerate(items)]


def conversation_id(body: dict[str, Any]) -> str | None:
    conversation = body.get("conversation")
    if conversation is None:
        return None
    return conversation if isinstance(conversation, str) else conversation["id"]


def input_items(body: dict[str, Any], rnd: RequestRandom, store: ResponseStore) -> list[dict[str, Any]]:
    """The request's `input` as normalized items with deterministic ids."""
    raw = body.get("input")
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    return [_normal_item(item, rnd.child("item", index), store) for index, item in enumerate(raw)]


def _previous(body: dict[str, Any], store: ResponseStore) -> list[dict[str, Any]]:
    """The context a `previous_response_id` carries: its inputs, then its outputs."""
    previous_id = body.get("previous_response_id")
    if not previous_id:
        return []
    stored = store.get(previous_id)
    if stored is None:
        raise MockError(404, f"Previous response with id '{previous_id}' not found.", param="previous_response_id",
                        code="previous_response_not_found")
    return [*stored.items, *stored.response["output"]]


def _check_context(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """OpenAI's rules: no item twice, every call answered, no answer without its call."""
    known = {item.get("id") for item in previous} - {None}
    for item in new:
        if item.get("id") in known:
            raise invalid(f"Duplicate item found with id {item['id']}. Remove duplicate items from your input and "
                          "try again.", "input")
    context = previous + new
    call_ids = [i["call_id"] for i in context if i.get("type") == "function_call"]
    answered = {i["call_id"] for i in context if i.get("type") == "function_call_output"}
    for item in context:
        if item.get("type") == "function_call_output" and item["call_id"] not in call_ids:
            raise invalid(f"No tool call found for function call output with call_id {item['call_id']}.", "input")
    for call_id in call_ids:
        if call_id not in answered:
            raise invalid(f"No tool output found for function call {call_id}.", "input")


def _is_user_message(item: dict[str, Any]) -> bool:
    return item.get("type") == "message" and item.get("role") == "user"


def _output_text(output: Any) -> str:
    return output if isinstance(output, str) else textgen.text_of_content(output)


def _last_user_text(context: list[dict[str, Any]]) -> str:
    for item in reversed(context):
        if _is_user_message(item):
            return textgen.text_of_content(item["content"])
    return ""


def _tool_results(context: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(function name, output text) of the tool results given since the last user message."""
    names = {i["call_id"]: i["name"] for i in context if i.get("type") == "function_call"}
    results = []
    for item in reversed(context):
        if _is_user_message(item):
            break
        if item.get("type") == "function_call_output":
            results.append((names[item["call_id"]], _output_text(item["output"])))
    return results[::-1]


def _mentions_json(instructions: str | None, context: list[dict[str, Any]]) -> bool:
    texts = [instructions or ""]
    texts += [textgen.text_of_content(i["content"]) for i in context if i.get("type") == "message"]
    return any("json" in text.lower() for text in texts)


def _as_chat_messages(instructions: str | None, context: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The context as chat messages, so the prompt is counted the way chat prompts are."""
    parts = {"input_text": lambda p: {"type": "text", "text": p["text"]},
             "output_text": lambda p: {"type": "text", "text": p["text"]},
             "refusal": lambda p: p,
             "input_image": lambda p: {"type": "image_url",
                                       "image_url": {"url": p.get("image_url"), "detail": p["detail"]}},
             "input_file": lambda p: {"type": "file"}}
    messages: list[dict[str, Any]] = [{"role": "developer", "content": instructions}] if instructions else []
    for item in context:
        kind = item.get("type")
        if kind == "message":
            messages.append({"role": item["role"], "content": [parts[p["type"]](p) for p in item["content"]]})
        elif kind == "function_call":
            messages.append({"role": "assistant", "tool_calls": [
                {"function": {"name": item["name"], "arguments": item["arguments"]}}]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item["output"])})
    return messages


# --- generation ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Draft:
    """What the model writes: reasoning tokens, then function calls or one message (maybe a refusal)."""

    reasoning: int
    calls: tuple[tuple[ToolCall, Output], ...] = ()
    message: Output | None = None
    refusal: bool = False

    @property
    def incomplete(self) -> bool:
        outputs = [o for _, o in self.calls] + ([self.message] if self.message else [])
        return any(o.finish_reason == "length" for o in outputs) or not outputs

    @property
    def output_tokens(self) -> int:
        return self.reasoning + sum(o.tokens for _, o in self.calls) + (self.message.tokens if self.message else 0)


def draft(body: dict[str, Any], model: ModelInfo, context: list[dict[str, Any]], rnd: RequestRandom,
          refusal_trigger: str = REFUSAL_TRIGGER, script: Answer | None = None) -> Draft:
    """Generate the answer (or write the `script`ed one) within `max_output_tokens`, which reasoning
    tokens count against."""
    enc = encoding_for_model(model.id)
    limit = body.get("max_output_tokens")
    thinking = 0
    if model.reasoning:
        effort = (body.get("reasoning") or {}).get("effort") or "medium"
        thinking = int(rnd.child("reasoning").choice((64, 128, 192, 256, 320)) * _EFFORT_SCALE[effort])
    if limit is not None and thinking >= limit:
        return Draft(limit)
    room = None if limit is None else limit - thinking
    if script is not None:
        return _scripted(script, thinking, rnd, enc, room)
    prompt, results = _last_user_text(context), _tool_results(context)
    if refuses(prompt, refusal_trigger):
        return Draft(thinking, message=finish(REFUSAL, enc, room, []), refusal=True)
    found, choice = functions(body)
    chosen = select(found, "none" if results and choice == "auto" else choice, prompt,
                    parallel=body.get("parallel_tool_calls") is not False)
    made = _calling(calls(chosen, rnd, prompt), enc, room)
    if made:
        return Draft(thinking, made)
    fmt = _format(body)
    text = answer_text(fmt["type"], fmt.get("schema"), prompt, results, rnd)
    return Draft(thinking, message=finish(text, enc, room, []))


def _scripted(script: Answer, thinking: int, rnd: RequestRandom, enc: tiktoken.Encoding, room: int | None) -> Draft:
    """A rule's answer as a draft, cut by the token limit like a generated one."""
    if script.tool_calls is not None:
        made = [ToolCall(c.id or "call_" + rnd.child("tool_call", index).token(24), c.name, c.arguments_text())
                for index, c in enumerate(script.tool_calls)]
        return Draft(thinking, _calling(made, enc, room))
    if script.refusal is not None:
        return Draft(thinking, message=finish(script.refusal_text, enc, room, []), refusal=True)
    return Draft(thinking, message=finish(script.text or "", enc, room, []))


def _calling(to_call: list[ToolCall], enc: tiktoken.Encoding, room: int | None) -> tuple[tuple[ToolCall, Output], ...]:
    """The calls with their arguments' token pieces, as many as `room` leaves space for."""
    made = []
    for call in to_call:
        if room == 0:
            break
        arguments = finish(call.arguments, enc, room, [])
        made.append((call, arguments))
        room = None if room is None else room - arguments.tokens
    return tuple(made)


def _usage(input_tokens: int, written: Draft, cached: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": min(cached, input_tokens), "cache_write_tokens": 0},
        "output_tokens": written.output_tokens,
        "output_tokens_details": {"reasoning_tokens": written.reasoning},
        "total_tokens": input_tokens + written.output_tokens,
    }


def _output(written: Draft, body: dict[str, Any], rnd: RequestRandom) -> list[dict[str, Any]]:
    """The output items: reasoning, then function calls or the message."""
    include = body.get("include") or []
    items: list[dict[str, Any]] = []
    if written.reasoning:
        reasoning: dict[str, Any] = {"id": _hex_id("rs_", rnd), "type": "reasoning", "summary": []}
        if ENCRYPTED_REASONING in include:
            reasoning["encrypted_content"] = base64.b64encode(rnd.randbytes(48 + written.reasoning)).decode()
        items.append(reasoning)
    for call, arguments in written.calls:
        status = "incomplete" if arguments.finish_reason == "length" else "completed"
        items.append({"id": _hex_id("fc_", rnd), "type": "function_call", "status": status,
                      "arguments": arguments.text, "call_id": call.id, "name": call.name})
    message = written.message
    if message is not None:
        if written.refusal:
            part: dict[str, Any] = {"type": "refusal", "refusal": message.text}
        else:
            logprobs: list[dict[str, Any]] = []
            if LOGPROBS in include:
                logprobs_rnd = rnd.child("logprobs")
                logprobs = [logprob_entry(p, logprobs_rnd, body.get("top_logprobs") or 0) for p in message.pieces]
            part = {"type": "output_text", "annotations": [], "logprobs": logprobs, "text": message.text}
        items.append({"id": _hex_id("msg_", rnd), "type": "message",
                      "status": "incomplete" if message.finish_reason == "length" else "completed",
                      "content": [part], "role": "assistant"})
    return items


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool["type"] != "function":
        return tool
    return {"type": "function", "description": tool.get("description"), "name": tool["name"],
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


def response_object(
    body: dict[str, Any], model: ModelInfo, response_id: str, created_at: int, output: list[dict[str, Any]],
    usage: dict[str, Any], incomplete: bool,
) -> dict[str, Any]:
    """The Response object, field for field as OpenAI returns it."""
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "incomplete" if incomplete else "completed",
        "background": bool(body.get("background")),
        "completed_at": None if incomplete else created_at,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        **({"conversation": {"id": conversation_id(body)}} if body.get("conversation") is not None else {}),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": {"effort": reasoning.get("effort") or ("medium" if model.reasoning else None),
                      "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default" if body.get("service_tier") in (None, "auto") else body["service_tier"],
        "store": body.get("store") is not False,
        "temperature": body.get("temperature") if body.get("temperature") is not None else 1.0,
        "text": {"format": _format(body), "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [_echo_tool(t) for t in body.get("tools") or []],
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": body.get("top_p") if body.get("top_p") is not None else 1.0,
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        **({"user": body["user"]} if "user" in body else {}),
        "metadata": body.get("metadata") or {},
    }


# --- streaming ----------------------------------------------------------------------------------

def events(response: dict[str, Any], enc: tiktoken.Encoding) -> list[dict[str, Any]]:
    """OpenAI's event sequence for a finished response: created, in_progress, each item added, its
    text or arguments in token-sized deltas, done, then completed (or incomplete)."""
    out: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": len(out), **fields})

    pending = {**without(response, ("usage",)), "status": "in_progress", "completed_at": None,
               "incomplete_details": None, "output": []}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "content": []})
            for part_index, part in enumerate(item["content"]):
                where = {"item_id": item["id"], "output_index": index, "content_index": part_index}
                if part["type"] == "refusal":
                    emit("response.content_part.added", **where, part={**part, "refusal": ""})
                    for piece in _pieces(part["refusal"], enc):
                        emit("response.refusal.delta", **where, delta=piece)
                    emit("response.refusal.done", **where, refusal=part["refusal"])
                else:
                    emit("response.content_part.added", **where, part={**part, "logprobs": [], "text": ""})
                    logprobs = part["logprobs"]
                    for number, piece in enumerate([e["token"] for e in logprobs] or _pieces(part["text"], enc)):
                        emit("response.output_text.delta", **where, delta=piece,
                             logprobs=[logprobs[number]] if logprobs else [])
                    emit("response.output_text.done", **where, text=part["text"], logprobs=logprobs)
                emit("response.content_part.done", **where, part=part)
        elif item["type"] == "function_call":
            emit("response.output_item.added", output_index=index,
                 item={**item, "status": "in_progress", "arguments": ""})
            for piece in _pieces(item["arguments"], enc):
                emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece)
            emit("response.function_call_arguments.done", item_id=item["id"], name=item["name"],
                 output_index=index, arguments=item["arguments"])
        else:
            emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
    emit(f"response.{response['status']}", response=response)
    return out


def _pieces(text: str, enc: tiktoken.Encoding) -> list[str]:
    return pieces_of(enc.encode(text, disallowed_special=()), enc)


def frames(response: dict[str, Any], enc: tiktoken.Encoding, after: int = -1) -> list[bytes]:
    """The SSE frames (`event:` and `data:` lines, no `[DONE]`) of events numbered above `after`."""
    return [sse.frame(dumps(e), event=e["type"]) for e in events(response, enc) if e["sequence_number"] > after]


# --- handlers -----------------------------------------------------------------------------------

def _context(body: dict[str, Any], store: ResponseStore, rnd: RequestRandom,
             conversation: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The items the response is generated from (and stored with), after OpenAI's checks."""
    previous = list(conversation) if conversation is not None else _previous(body, store)
    new = input_items(body, rnd.child("input"), store)
    _check_context(previous, new)
    context = previous + new
    if _format(body)["type"] == "json_object" and not _mentions_json(body.get("instructions"), context):
        raise invalid("Response input messages must contain the word 'json' in some form to use 'text.format' of "
                      "type 'json_object'.", "input")
    return context


def subject(body: dict[str, Any], context: list[dict[str, Any]]) -> Subject:
    """What rules match on: the last user message, the user turn, whether tool results follow it."""
    turn = sum(1 for item in context if _is_user_message(item))
    return Subject(rules.RESPONSES, body["model"], _last_user_text(context), turn, bool(_tool_results(context)))


def _build(body: dict[str, Any], model: ModelInfo, context: list[dict[str, Any]], rnd: RequestRandom, seed: int,
           created_at: int, refusal_trigger: str, script: Answer | None, cache: PromptCache | None = None
           ) -> dict[str, Any]:
    """The response object."""
    tools = [t for t in body.get("tools") or [] if t["type"] == "function"]
    input_tokens = count_chat_prompt(_as_chat_messages(body.get("instructions"), context), model.id, tools,
                                     unknown_image=vision.UNKNOWN_SIZE)
    too_long = context_error(model, input_tokens, body.get("max_output_tokens"), responses=True)
    if too_long is not None:
        raise too_long
    text_rnd = request_random(seed, "responses/text", without(body, _NEUTRAL_FIELDS))
    written = draft(body, model, context, text_rnd, refusal_trigger, script)
    output = _output(written, body, rnd.child("output"))
    cached = 0
    if cache is not None:
        parts = [body.get("instructions") or "", [_cache_view(item) for item in context], tools]
        cached = cache.use(model.id, parts, created_at, body.get("prompt_cache_retention"))
    return response_object(body, model, _hex_id("resp_", rnd), created_at, output,
                           _usage(input_tokens, written, cached), written.incomplete)


def _cache_view(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the prompt cache sees it: without its id, which differs between requests."""
    return {k: v for k, v in item.items() if k != "id"}


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    REQUEST.check(body, "")
    model = model_for(call.catalogue, body["model"])
    validate(body, model)
    store = call.request.app[RESPONSES]
    conversation = None
    if conversation_id(body) is not None:
        conversation = conversations.find(call.request.app, conversation_id(body) or "", "conversation")
    rnd = call.random("responses", without(body, _TRANSPORT_FIELDS))
    if conversation is not None:  # the same input in a later turn of a conversation is a new response
        rnd = rnd.child("conversation", len(conversation.items))
    context = await call.compute(_context, body, store, rnd, conversation.items if conversation else None)
    script = await rules.scripted(call, subject(body, context))
    cache = call.request.app[PROMPT_CACHE] if call.settings.prompt_caching else None
    response = await call.compute(_build, body, model, context, rnd, call.settings.seed, call.clock.now(),
                                  call.settings.refusal_trigger, script, cache)
    if conversation is not None:
        conversation.items.extend([*context[len(conversation.items):], *response["output"]])
    runs = background.start(call, response) if body.get("background") else None
    if response["store"]:
        store.put(response, tuple(context), runs)
    enc = encoding_for_model(model.id)
    if body.get("stream"):
        if runs is not None:
            runs.seen = True
        return await call.stream(frames(response, enc))
    if runs is not None:
        return await call.reply(background.view(response, runs, call.clock.now(), call.settings))
    return await call.reply(response, chunks=response["usage"]["output_tokens"] + 2)


def _stored(request: web.Request) -> Stored:
    response_id = request.match_info["response_id"]
    if not response_id.startswith("resp"):
        raise invalid(f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.",
                      "response_id")
    stored = request.app[RESPONSES].get(response_id)
    if stored is None:
        raise MockError(404, f"Response with id '{response_id}' not found.")
    return stored


async def retrieve(request: web.Request) -> web.StreamResponse:
    """GET /v1/responses/{id}; with `stream=true` its events again, after `starting_after`."""
    stored = _stored(request)
    if stored.background is not None:
        now = request.app[CLOCK].now()
        shown = background.view(stored.response, stored.background, now, request.app[SETTINGS], retrieving=True)
        if shown["status"] != "completed" or request.query.get("stream", "").lower() not in ("true", "1"):
            return await answer(request, shown)
    if request.query.get("stream", "").lower() not in ("true", "1"):
        return await answer(request, stored.response)
    after = query_int(request, "starting_after", -1, Int(0))
    enc = encoding_for_model(stored.response["model"])
    return await send_stream(request, frames(stored.response, enc, after), headers={},
                             pacing=request.get(PACING, Pacing()), fault=request.get(FAULT),
                             sleep=request.app[SLEEP])


async def delete(request: web.Request) -> web.StreamResponse:
    response_id = _stored(request).response["id"]
    request.app[RESPONSES].remove(response_id)
    return await answer(request, {"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: web.Request) -> web.StreamResponse:
    """GET /v1/responses/{id}/input_items: the context items, newest first unless `order=asc`."""
    return await answer(request, conversations.page(list(_stored(request).items), request))


async def cancel(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses/{id}/cancel: a background response not yet finished becomes `cancelled`."""
    stored = _stored(request)
    if stored.background is None:
        raise invalid("Only responses created with background=true can be cancelled.", None)
    now = request.app[CLOCK].now()
    return await answer(request, background.cancel(stored.response, stored.background, now, request.app[SETTINGS]))


_COUNT_FIELDS = ("model", "input", "previous_response_id", "tools", "text", "reasoning", "truncation",
                 "instructions", "conversation", "tool_choice", "parallel_tool_calls", "personality")


def _counted(call: Call, body: dict[str, Any], model: ModelInfo) -> tuple[list[dict[str, Any]], int]:
    """The context of a would-be response and its input tokens, by the real tokenizer."""
    store = call.request.app[RESPONSES]
    conversation = None
    if conversation_id(body) is not None:
        conversation = conversations.find(call.request.app, conversation_id(body) or "", "conversation")
    context = _context(body, store, request_random(call.settings.seed, "responses/count", body),
                       conversation.items if conversation else None)
    tools = [t for t in body.get("tools") or [] if t["type"] == "function"]
    return context, count_chat_prompt(_as_chat_messages(body.get("instructions"), context), model.id, tools,
                                      unknown_image=vision.UNKNOWN_SIZE)


async def input_tokens(call: Call) -> web.StreamResponse:
    """POST /v1/responses/input_tokens: what `usage.input_tokens` of that request would be."""
    body = call.body
    unknown = sorted(set(body) - set(_COUNT_FIELDS))
    if unknown:
        raise invalid(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    REQUEST.check({"model": "gpt-4o", **{k: v for k, v in body.items() if v is not None and k != "personality"}}, "")
    model = model_for(call.catalogue, body.get("model") or "gpt-4o")
    validate({**body, "model": model.id, "input": body.get("input") or ""}, model)
    call.random("responses/input_tokens", body)
    _, tokens = await call.compute(_counted, call, body, model)
    return await call.reply({"object": "response.input_tokens", "input_tokens": tokens})


_COMPACT_FIELDS = ("model", "input", "previous_response_id", "instructions", "prompt_cache_key",
                   "prompt_cache_retention", "prompt_cache_options", "service_tier", "safety_identifier")


async def compact(call: Call) -> web.StreamResponse:
    """POST /v1/responses/compact: the context's user messages kept as they are, everything else (the
    assistant's turns, tool calls and results) folded into one opaque `compaction` item, as OpenAI does."""
    body = call.body
    unknown = sorted(set(body) - set(_COMPACT_FIELDS))
    if unknown:
        raise invalid(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    if not body.get("model"):
        raise invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    REQUEST.check({k: v for k, v in body.items() if v is not None}, "")
    model = model_for(call.catalogue, body["model"])
    validate({"input": "", **body}, model)
    rnd = call.random("responses/compact", body)
    context, tokens = await call.compute(_counted, call, body, model)
    kept = [item for item in context if _is_user_message(item)]
    folded = [item for item in context if not _is_user_message(item)]
    output = list(kept)
    summary_tokens = 0
    if folded:
        blob = base64.b64encode(rnd.child("compaction").randbytes(32 + 8 * len(folded))).decode()
        output.append({"id": _hex_id("cmp_", rnd), "type": "compaction", "encrypted_content": blob})
        summary_tokens = min(tokens, 16 * len(folded))
    usage = {"input_tokens": tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
             "output_tokens": summary_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": tokens + summary_tokens}
    return await call.reply({"id": _hex_id("resp_", rnd), "object": "response.compaction",
                             "created_at": call.clock.now(), "output": output, "usage": usage})


def setup(app: web.Application) -> None:
    """Register the store (emptied by `POST /_mock/reset`), the routes, and /v1/responses for batch lines."""
    app[RESPONSES] = ResponseStore()
    on_reset(app, app[RESPONSES].clear)
    app[LINE_HANDLERS]["/v1/responses"] = create
    app.router.add_post("/v1/responses", endpoint(create))
    app.router.add_post("/v1/responses/input_tokens", endpoint(input_tokens))
    app.router.add_post("/v1/responses/compact", endpoint(compact))
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)
