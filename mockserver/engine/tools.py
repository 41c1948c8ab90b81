"""Which functions a turn calls, and with which arguments (chat tools, legacy functions, responses).

The rule for `tool_choice: "auto"`: a function is *asked for* when the last user message

1. names it: contains its name, or the name with `_` and `-` read as spaces ("get_weather" or
   "get weather"), in any case; or
2. plainly asks for what it does: it shares a content word with the function's name, or two with
   its description. Content words have three letters or more and are not common English words nor
   generic tool verbs (get, fetch, find, list, create, update, ...); "s", "es", "ed" and "ing"
   endings are ignored when comparing. "What's the weather in Paris?" asks for
   `get_current_weather` (it shares "weather").

"auto" calls every function asked for, in `tools` order, when `parallel_tool_calls` is true (the
default), else only the best match (a shared name word scores 2, a description word 1, naming the
function outright beats both; ties go to the earlier tool). Nothing asked for gives a text answer,
and so does a turn that follows tool results. "required" calls what "auto" would, or the best-scoring
function when nothing is asked for; a named function is called alone; "none" never calls.

Arguments come from `schemagen`: valid JSON for the function's `parameters`, with values taken
from the user's message where it offers them, read from where it mentions the function: in
"weather in Lisbon and the time in Tokyo" the weather call gets Lisbon and the time call Tokyo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import schemagen, textgen
from .generation import json_text
from .rng import RequestRandom

_GENERIC = frozenset(
    ["get", "set", "fetch", "find", "list", "search", "create", "update", "delete", "remove", "add", "call", "run", "invoke", "execute", "function", "tool", "current", "given", "specified", "specific", "return", "returns", "retrieve", "lookup", "look", "check", "data", "info", "information", "details", "provide", "new", "based", "value", "values"]  # noqa: E501 (data)
)
_SUFFIXES = ("", "s", "es", "ed", "d", "ing")
_NAMED = 100  # the score of a function the message names outright
_ASKED = 2  # the score at which a function counts as asked for


@dataclass(frozen=True, slots=True)
class Function:
    """A callable function as the model sees it."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool = False

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Function:
        """From a definition: chat's `tools[].function`, a legacy `functions[]` entry or a responses tool."""
        parameters = spec.get("parameters")
        return cls(spec["name"], spec.get("description") or "", parameters if isinstance(parameters, dict) else None,
                   bool(spec.get("strict")))

    def check(self, param: str) -> None:
        """OpenAI's 400 for parameters that are not an object schema, or that strict mode refuses."""
        if self.parameters is not None and (self.strict or "type" in self.parameters):
            schemagen.check_strict_schema(self.parameters, param, subject=f"function '{self.name}'",
                                          code="invalid_function_parameters", root_only=not self.strict)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: `call_` id, function name and the arguments' JSON text."""

    id: str
    name: str
    arguments: str


def relevance(function: Function, message: str) -> int:
    """How plainly `message` asks for `function` (see the module's rule); `_ASKED` or more calls it."""
    spaced = re.sub(r"[_-]+", " ", function.name)
    for phrase in (function.name, spaced):
        if re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", message, re.IGNORECASE):
            return _NAMED
    said = _content_words(message)
    name_words, description_words = _words_of(function)
    return 2 * _shared(name_words, said) + _shared(description_words, said)


def select(functions: list[Function], choice: str | Function, message: str, *, parallel: bool = True) -> list[Function]:
    """The functions to call for `tool_choice` `choice` ("none", "auto", "required" or a function)."""
    if isinstance(choice, Function):
        return [choice]
    if choice == "none" or not functions:
        return []
    scores = [relevance(f, message) for f in functions]
    asked = [i for i, score in enumerate(scores) if score >= _ASKED]
    if not asked and choice == "required":
        asked = [scores.index(max(scores))]
    if not parallel and asked:
        asked = [max(asked, key=lambda i: (scores[i], -i))]
    return [functions[i] for i in asked]


def calls(functions: list[Function], rnd: RequestRandom, hint: str) -> list[ToolCall]:
    """One call per function, each with its own id and arguments valid for its parameters."""
    made = []
    for index, function in enumerate(functions):
        call_rnd = rnd.child("tool_call", index)
        call_id = "call_" + call_rnd.token(24)
        schema = {"type": "object", **(function.parameters or {})}
        arguments = schemagen.generate(schema, call_rnd, _from_mention(hint, function))
        made.append(ToolCall(call_id, function.name, json_text(arguments)))
    return made


def _words_of(function: Function) -> tuple[set[str], set[str]]:
    """The content words of the function's name, and those only its description has."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", re.sub(r"[_-]+", " ", function.name))
    name_words = _content_words(spaced)
    return name_words, _content_words(function.description) - name_words


def _from_mention(message: str, function: Function) -> str:
    """`message` read from its first word about `function` on, then wrapping around to its start."""
    wanted = set().union(*_words_of(function))
    for word in re.finditer(r"[^\W\d_]+", message):
        if any(_same_word(word.group().lower(), w) for w in wanted):
            return message[word.start():] + " " + message[:word.start()]
    return message


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in textgen.keywords(text, 1000)} - _GENERIC


def _shared(words: set[str], said: set[str]) -> int:
    """How many of `words` occur in `said`, ignoring plural and verb endings."""
    return sum(any(_same_word(w, s) for s in said) for w in words)


def _same_word(a: str, b: str) -> bool:
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and long[len(short):] in _SUFFIXES
