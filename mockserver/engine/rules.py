"""Scripted answers: rules that say what the mock answers to which requests, instead of generating.

A rule has a `match` (every condition given must hold; none given matches every request) and an
`answer`. Conditions:

- `model`: the requested model id, exactly or as a glob (`gpt-4o*`);
- `endpoint`: `/v1/chat/completions`, `/v1/responses` or `/v1/completions`, or a list of them
  (default: any of the three);
- `last_user`: a substring of the last user message (case-sensitive); `last_user_regex`: a regular
  expression searched in it (`(?i)` for case-insensitive). With no user message the text is "";
  legacy completions match each prompt on its own;
- `turn`: the number of user messages in the conversation, so the first user turn is 1 (with
  `previous_response_id`, the whole chain counts); legacy completions are always turn 1;
- `has_tool_results`: whether the conversation ends with tool results (chat: `tool` or `function`
  messages; responses: `function_call_output` items after the last user message).

An answer is one of `text`, `tool_calls` (`[{name, arguments}]`, arguments an object, or a string
sent verbatim), `refusal` (a string, or true for the default refusal) or `error` (`{status, message,
type, code, param, retry_after_ms}` in OpenAI's envelope; a 429 carries `retry-after` headers),
plus an optional `pacing` (`{ttft_ms, chunk_ms}`; alone it only changes timing and the answer is
generated as usual; an `x-mock-latency` header wins over it). A rule with `times = N` answers the
first N requests it matches, then no longer matches. Legacy completions have no tool calls nor
refusals: rules answering with those never match them.

Order: rules posted to `/_mock/rules` first (in the order posted), then the rules file's
(`rules_file`, `--rules`), then `[[mock.rules]]` of config.toml; the first rule that matches
answers. Unmatched requests are generated as before. `x-mock-fault`, recorded fixtures (`--fixtures`)
and request validation come first: an invalid request still gets its 400, whatever the rules say.
Batch lines are matched like direct requests. Scripted text passes through the request's
`stop`, token limit and streaming like generated text; ids and usage are computed as usual, and
the answer names its rule in an `x-mock-rule` header.

Control API: `GET /_mock/rules` lists every rule with its `id`, `source` and `used` count;
`POST /_mock/rules` adds a rule, a list of rules or `{"rules": [...]}` (all or nothing, a 400 in
OpenAI's envelope names the bad one); `DELETE /_mock/rules` removes the posted rules (those from
files and config stay); `POST /_mock/reset` removes them too and zeroes every `used` count.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from proxy.wire.configfile import ConfigError, read_toml, validate
from proxy.wire.errors import INVALID_REQUEST, SERVER_ERROR
from proxy.wire.jsoncodec import JSONDecodeError, dumps, loads

from ..errors import MockError, invalid
from .faults import LATENCY_HEADER, MAX_PACING_MS, MAX_RETRY_AFTER_MS, Fault, Pacing, error_for
from .generation import REFUSAL

if TYPE_CHECKING:
    from .state import Call

CHAT, RESPONSES, COMPLETIONS = "/v1/chat/completions", "/v1/responses", "/v1/completions"
ENDPOINTS = (CHAT, RESPONSES, COMPLETIONS)
RULE_HEADER = "x-mock-rule"
Endpoint = Literal["/v1/chat/completions", "/v1/responses", "/v1/completions"]

_STRICT = ConfigDict(extra="forbid", strict=True)


def _problem(error_type: str, message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose text reaches the user as is (no "Value error, " prefix)."""
    return PydanticCustomError(error_type, message, context)


class Match(BaseModel):
    """When a rule applies; every condition given must hold."""

    model_config = _STRICT

    model: str | None = Field(None, min_length=1, description="Model id, exact or a glob like `gpt-4o*`.")
    endpoint: list[Endpoint] | None = Field(None, min_length=1, description="Endpoint path(s); default: all three.")
    last_user: str | None = Field(None, description="A substring of the last user message (case-sensitive).")
    last_user_regex: str | None = Field(None, description="A regular expression searched in the last user message.")
    turn: int | None = Field(None, ge=1, description="The number of user messages in the conversation (1: first).")
    has_tool_results: bool | None = Field(None, description="Whether the conversation ends with tool results.")

    @field_validator("endpoint", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("last_user_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _problem("regex", "not a valid regular expression: {reason}", reason=str(exc)) from None
        return pattern

    def endpoints(self) -> tuple[str, ...]:
        return ENDPOINTS if self.endpoint is None else tuple(self.endpoint)


class ScriptedCall(BaseModel):
    """One tool call to answer with."""

    model_config = _STRICT

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The function's name.")
    arguments: dict[str, Any] | str = Field(
        default_factory=dict, description="An object (sent as compact JSON) or a string sent verbatim.")
    id: str | None = Field(None, min_length=1, description="The call id; default: derived from the request.")

    @field_validator("arguments", mode="before")
    @classmethod
    def _object_or_string(cls, value: Any) -> Any:
        if not isinstance(value, (dict, str)):
            raise _problem("arguments", "arguments must be an object or a string")
        return value

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


class ScriptedError(BaseModel):
    """An error answer in OpenAI's envelope."""

    model_config = _STRICT

    status: int = Field(ge=400, le=599, description="HTTP status, 400-599.")
    message: str | None = Field(None, description="Default: what OpenAI says for that status.")
    type: str | None = Field(None, description="Default: `requests` for 429, `server_error` for 5xx, else "
                             "`invalid_request_error`.")
    code: str | None = Field(None, description="Default: `rate_limit_exceeded` for 429, else null.")
    param: str | None = None
    retry_after_ms: int | None = Field(None, ge=0, le=MAX_RETRY_AFTER_MS,
                                       description="429 only: the `retry-after*` headers (default 1000).")

    @model_validator(mode="after")
    def _retry_after_needs_429(self) -> ScriptedError:
        if self.retry_after_ms is not None and self.status != 429:
            raise _problem("retry_after", "retry_after_ms applies to status 429 only")
        return self

    def exception(self, headers: dict[str, str]) -> MockError:
        """The `MockError` to raise, carrying `headers` (and a 429's rate-limit headers)."""
        retry_ms = 1000 if self.retry_after_ms is None else self.retry_after_ms
        extra: dict[str, str] = {}
        code = None
        if self.status == 429:
            extra = dict(error_for(Fault("429", retry_after_ms=retry_ms)).headers or {})
            message = f"Rate limit reached for requests (scripted by a mock rule). Please try again in {retry_ms}ms."
            kind, code = "requests", "rate_limit_exceeded"
        elif self.status >= 500:
            message, kind = _SERVER_MESSAGES.get(self.status, _SERVER_MESSAGES[500]), SERVER_ERROR
        else:
            message, kind = f"The mock answered with a scripted {self.status} error.", INVALID_REQUEST
        return MockError(self.status, self.message if self.message is not None else message,
                         type=self.type or kind, param=self.param, code=self.code if self.code is not None else code,
                         headers={**extra, **headers})


_SERVER_MESSAGES = {
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


class ScriptedPacing(BaseModel):
    """How long the answer takes, as `x-mock-latency` says it."""

    model_config = _STRICT

    ttft_ms: int = Field(0, ge=0, le=MAX_PACING_MS, description="Milliseconds before the first byte.")
    chunk_ms: int = Field(0, ge=0, le=MAX_PACING_MS, description="Milliseconds between stream chunks.")


_KINDS = ("text", "tool_calls", "refusal", "error")


class Answer(BaseModel):
    """What a matching request gets: one of text, tool_calls, refusal, error; and/or a pacing."""

    model_config = _STRICT

    text: str | None = None
    tool_calls: Annotated[list[ScriptedCall], Field(min_length=1)] | None = None
    refusal: str | Literal[True] | None = None
    error: ScriptedError | None = None
    pacing: ScriptedPacing | None = None

    @field_validator("refusal", mode="before")
    @classmethod
    def _string_or_true(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str) and value is not True:
            raise _problem("refusal", "refusal must be a string, or true for the default refusal")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Answer:
        given = [kind for kind in _KINDS if getattr(self, kind) is not None]
        if len(given) > 1:
            raise _problem("answer_kinds", "give one of text, tool_calls, refusal or error, not {given}",
                           given=" and ".join(given))
        if not given and self.pacing is None:
            raise _problem("answer_empty", "give one of text, tool_calls, refusal, error or pacing")
        return self

    @property
    def kind(self) -> str | None:
        """The answer's kind, or None for a pacing alone."""
        return next((kind for kind in _KINDS if getattr(self, kind) is not None), None)

    @property
    def refusal_text(self) -> str:
        return REFUSAL if self.refusal is True else self.refusal or ""


class Rule(BaseModel):
    """A `match` and its `answer`; optionally a `name` (shown in `x-mock-rule`) and a `times` limit."""

    model_config = _STRICT

    name: str | None = Field(None, pattern=r"^[ -~]{1,100}$", description="Shown in `x-mock-rule` and listings.")
    match: Match = Field(default_factory=Match)
    answer: Answer
    times: int | None = Field(None, ge=1, description="Answer the first N matching requests only.")

    @model_validator(mode="after")
    def _answerable(self) -> Rule:
        if self.answer.kind in ("tool_calls", "refusal") and self.match.endpoints() == (COMPLETIONS,):
            raise _problem("answer_endpoint", "legacy completions can only answer text or an error, not {kind}",
                           kind=self.answer.kind)
        return self

    def matches(self, subject: Subject) -> bool:
        """Whether every condition holds for `subject` (and the answer fits its endpoint)."""
        match = self.match
        if subject.endpoint not in match.endpoints():
            return False
        if subject.endpoint == COMPLETIONS and self.answer.kind in ("tool_calls", "refusal"):
            return False
        return ((match.model is None or fnmatch.fnmatchcase(subject.model, match.model))
                and (match.last_user is None or match.last_user in subject.last_user)
                and (match.last_user_regex is None or re.search(match.last_user_regex, subject.last_user) is not None)
                and (match.turn is None or match.turn == subject.turn)
                and (match.has_tool_results is None or match.has_tool_results == subject.has_tool_results))


class RulesFile(BaseModel):
    """A rules file: TOML `[[rules]]`, YAML or JSON `rules:`."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Subject:
    """What rules match on, as the endpoint reads it from the request."""

    endpoint: str
    model: str
    last_user: str = ""
    turn: int = 1
    has_tool_results: bool = False


# --- loading -----------------------------------------------------------------------------------

def load_file(path: str | Path) -> list[Rule]:
    """The rules in a `.toml`, `.yaml`/`.yml` or `.json` file; any problem is a `ConfigError` naming the
    file, the rule (`rules[2].answer`) and the reason."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = read_toml(path)
    elif suffix in (".yaml", ".yml", ".json"):
        data = _read_other(path, suffix)
    else:
        raise ConfigError(str(path), None, "a rules file must end in .toml, .yaml, .yml or .json")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, "expected a table with a `rules` list at the top level")
    return validate(RulesFile, data, str(path)).rules


def _read_other(path: Path, suffix: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, getattr(exc, "strerror", None) or str(exc)) from None
    if suffix == ".json":
        try:
            return loads(text)
        except JSONDecodeError as exc:
            raise ConfigError(str(path), None, f"not valid JSON: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(str(path), None,
                          "YAML rules need PyYAML (pip install pyyaml); or write them in TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"not valid YAML: {exc}") from None


def parse_posted(data: Any) -> list[Rule]:
    """Rules posted to `/_mock/rules`: one rule, a list of rules or `{"rules": [...]}`."""
    if isinstance(data, list):
        data = {"rules": data}
    elif isinstance(data, dict) and "rules" not in data:
        data = {"rules": [data]}
    if not isinstance(data, dict):
        raise invalid('The body must be a rule, a list of rules or {"rules": [...]}.')
    try:
        return validate(RulesFile, data, "request body").rules
    except ConfigError as exc:
        raise invalid(f"Invalid rule: {exc.key}: {exc.reason}" if exc.key else f"Invalid rules: {exc.reason}",
                      exc.key, "invalid_value") from None


# --- the rule book -----------------------------------------------------------------------------

@dataclass(slots=True)
class _Entry:
    rule: Rule
    id: str
    source: str
    used: int = 0

    @property
    def label(self) -> str:
        return self.rule.name or self.id

    def listing(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "used": self.used,
                **self.rule.model_dump(mode="json", exclude_none=True)}


class RuleBook:
    """The rules in force: posted ones, then configured ones (file, then config)."""

    def __init__(self, configured: Sequence[tuple[str, Sequence[Rule]]] = ()) -> None:
        self._configured = [_Entry(rule, f"{source}[{index}]", source)
                            for source, rules in configured for index, rule in enumerate(rules)]
        self._posted: list[_Entry] = []

    def __bool__(self) -> bool:
        return bool(self._posted or self._configured)

    def add(self, rules: Sequence[Rule]) -> None:
        for rule in rules:
            self._posted.append(_Entry(rule, f"posted[{len(self._posted)}]", "posted"))

    def clear_posted(self) -> None:
        self._posted.clear()

    def reset(self) -> None:
        """Forget the posted rules and every rule's use count."""
        self._posted.clear()
        for entry in self._configured:
            entry.used = 0

    def match(self, subject: Subject) -> _Entry | None:
        """The first rule that matches `subject` and has uses left; counts the use."""
        for entry in (*self._posted, *self._configured):
            if (entry.rule.times is None or entry.used < entry.rule.times) and entry.rule.matches(subject):
                entry.used += 1
                return entry
        return None

    def listing(self) -> list[dict[str, Any]]:
        return [entry.listing() for entry in (*self._posted, *self._configured)]


RULES = web.AppKey("rules", RuleBook)


async def scripted(call: Call, subject: Subject) -> Answer | None:
    """The answer of the first rule matching `subject`, with its pacing applied to `call`; an error
    answer is raised here. None when no rule matches, or the rule only paces."""
    book = call.request.app.get(RULES)
    if not book:
        return None
    entry = book.match(subject)
    if entry is None:
        return None
    call.headers[RULE_HEADER] = entry.label
    answer = entry.rule.answer
    if answer.pacing is not None and LATENCY_HEADER not in call.request.headers:
        call.pacing = Pacing(answer.pacing.ttft_ms / 1000, answer.pacing.chunk_ms / 1000)
    if answer.error is not None:
        if call.pacing.ttft_s:
            await call.sleep(call.pacing.ttft_s)
        raise answer.error.exception(dict(call.headers))
    return answer if answer.kind is not None else None


# --- control API -------------------------------------------------------------------------------

def _reply(book: RuleBook) -> web.Response:
    return web.Response(body=dumps({"object": "list", "data": book.listing()}), content_type="application/json")


async def list_rules(request: web.Request) -> web.Response:
    return _reply(request.app[RULES])


async def post_rules(request: web.Request) -> web.Response:
    try:
        body = loads(await request.read())
    except JSONDecodeError:
        raise invalid('The body must be JSON: a rule, a list of rules or {"rules": [...]}.') from None
    book = request.app[RULES]
    book.add(parse_posted(body))
    return _reply(book)


async def delete_rules(request: web.Request) -> web.Response:
    book = request.app[RULES]
    book.clear_posted()
    return _reply(book)


def setup(app: web.Application, file_rules: Sequence[Rule], config_rules: Sequence[Rule]) -> None:
    """Hold the configured rules, register `/_mock/rules` and have `/_mock/reset` forget posted rules."""
    from .control import PREFIX, on_reset

    book = RuleBook((("file", file_rules), ("config", config_rules)))
    app[RULES] = book
    on_reset(app, book.reset)
    app.router.add_get(PREFIX + "rules", list_rules)
    app.router.add_post(PREFIX + "rules", post_rules)
    app.router.add_delete(PREFIX + "rules", delete_rules)
