"""The mock's answers are a function of the request and `--seed` alone: the same bytes from every
process, and streamed answers that are the non-streamed ones cut into deltas."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mockserver.app import make_app
from mockserver.settings import MockSettings
from proxy.wire.tokens import count_text
from tests.http import Reply, joined_deltas, post, sse_payloads
from tests.servers import ServerThread

STARTUP_S = 20.0
SHUTDOWN_S = 5.0
_LISTENING = re.compile(rb"oaigate mock listening on (http://\S+)")

CHAT = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "How do glaciers carve valleys?"}], "n": 2}
REQUESTS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "model": "o3-mini", "logprobs": True, "top_logprobs": 2}),
    ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": [[38, 75, 7228], [1, 2, 3]], "logprobs": 2}),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Glaciers", "stream": True, "echo": True}),
]


class MockProcess:
    """`python -m mockserver --port 0 ARGS...` in `cwd`; `url` is read from its startup line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mockserver", "--port", "0", *args],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self._url = ""

    @property
    def url(self) -> str:
        if not self._url:
            self._url = self._read_url()
        return self._url

    def _read_url(self) -> str:
        assert self.process.stderr is not None
        output = b""
        deadline = time.monotonic() + STARTUP_S
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while not (match := _LISTENING.search(output)):
                remaining = deadline - time.monotonic()
                assert remaining > 0 and selector.select(remaining), f"no startup line in time: {output!r}"
                data = os.read(self.process.stderr.fileno(), 4096)
                assert data, f"mock exited with {self.process.wait()}: {output!r}"
                output += data
        return match.group(1).decode()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum`, then return the exit code once it has shut down."""
        self.process.send_signal(signum)
        self.process.communicate(timeout=SHUTDOWN_S)
        return self.process.returncode

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def send_all(base: str) -> list[Reply]:
    return [post(base + path, body) for path, body in REQUESTS]


@dataclass(frozen=True)
class Run:
    """What one `python -m mockserver` process answered to REQUESTS, and how it exited."""

    replies: list[Reply]
    exit_code: int


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Run]:
    """Seed -> what a `python -m mockserver` process with that `--seed` answered to REQUESTS.

    Both processes start side by side; seed 0 is stopped with SIGTERM, seed 1 with SIGINT."""
    cwd = tmp_path_factory.mktemp("mock-cwd")  # no config.toml there: built-in defaults
    started = {0: MockProcess(cwd), 1: MockProcess(cwd, "--seed", "1")}
    with contextlib.ExitStack() as stack:
        for mock in started.values():
            stack.enter_context(mock)
        replies = {seed: send_all(mock.url) for seed, mock in started.items()}
        return {seed: Run(replies[seed], mock.stop(signal.SIGINT if seed else signal.SIGTERM))
                for seed, mock in started.items()}


def in_process(seed: int) -> list[Reply]:
    """REQUESTS answered by a mock running in this process."""
    server = ServerThread(lambda: make_app(MockSettings(seed=seed))).start()
    try:
        return send_all(server.url)
    finally:
        server.stop()


def test_processes_shut_down_cleanly_on_sigterm_and_sigint(runs: dict[int, Run]) -> None:
    assert {seed: run.exit_code for seed, run in runs.items()} == {0: 0, 1: 0}


@pytest.mark.parametrize("seed", [0, 1])
def test_separate_processes_answer_byte_identically(runs: dict[int, Run], seed: int) -> None:
    there, here = runs[seed].replies, in_process(seed)

    assert [r.status for r in there] == [200] * len(REQUESTS)
    assert [r.body for r in there] == [r.body for r in here]
    assert [r.headers["x-request-id"] for r in there] == [r.headers["x-request-id"] for r in here]


def test_seed_changes_the_answers(runs: dict[int, Run]) -> None:
    default, seeded = runs[0].replies, runs[1].replies

    assert all(r.body != d.body for r, d in zip(seeded, default, strict=False))
    chat, other = seeded[0].json(), default[0].json()
    assert chat["choices"][0]["message"]["content"] != other["choices"][0]["message"]["content"]
    assert chat["id"] != other["id"]
    assert "glaciers" in chat["choices"][0]["message"]["content"].lower()


# --- properties, in process ------------------------------------------------------------------------

_CONTENT = st.text(max_size=120)
_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]), "content": _CONTENT}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": _CONTENT}),
    st.fixed_dictionaries({"role": st.just("user"),
                           "content": st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _CONTENT}),
                                               min_size=1, max_size=2)}),
)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    model = draw(st.sampled_from(["gpt-4o-mini", "gpt-4", "o3-mini"]))
    body: dict[str, Any] = {"model": model, "messages": draw(st.lists(_MESSAGE, min_size=1, max_size=3))}
    if draw(st.booleans()):
        body["n"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        limit = "max_completion_tokens" if model == "o3-mini" else draw(
            st.sampled_from(["max_tokens", "max_completion_tokens"]))
        body[limit] = draw(st.integers(1, 400 if model == "o3-mini" else 80))
    if draw(st.booleans()):
        body["stop"] = draw(st.one_of(st.text(min_size=1, max_size=4),
                                      st.lists(st.text(min_size=1, max_size=4), max_size=4)))
    if draw(st.booleans()):
        body["seed"] = draw(st.integers(-(2**63), 2**63 - 1))
    if model != "o3-mini" and draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 2))
    return body


def _ok(reply: Reply) -> Any:
    assert reply.status == 200, reply.body
    return reply.json()


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=chat_requests())
def test_chat_is_a_function_of_the_request(mock_server: ServerThread, body: dict[str, Any]) -> None:
    url = mock_server.url + "/v1/chat/completions"
    first, second = post(url, body), post(url, body)
    streamed = post(url, {**body, "stream": True, "stream_options": {"include_usage": True}})
    unlimited = _ok(post(url, {k: v for k, v in body.items() if k not in ("max_tokens", "max_completion_tokens")}))

    assert first.body == second.body
    completion = _ok(first)
    chunks = sse_payloads(streamed.body)
    texts = [c["message"]["content"] for c in completion["choices"]]
    assert joined_deltas(chunks) == dict(enumerate(texts))
    assert chunks[-1]["usage"] == completion["usage"]
    usage = completion["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert usage["completion_tokens"] == sum(count_text(t, body["model"]) for t in texts) + reasoning
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    for choice, full in zip(completion["choices"], unlimited["choices"], strict=False):
        assert full["message"]["content"].startswith(choice["message"]["content"])
        if choice["finish_reason"] == "length":
            assert limit is not None
        if limit is not None:
            assert count_text(choice["message"]["content"], body["model"]) <= limit


@settings(max_examples=30, deadline=None, database=None)
@given(
    prompt=st.one_of(st.text(max_size=80), st.lists(st.text(max_size=40), min_size=1, max_size=3),
                     st.lists(st.integers(0, 100_000), min_size=1, max_size=20)),
    n=st.integers(1, 3),
    max_tokens=st.integers(0, 40),
    echo=st.booleans(),
)
def test_completions_are_a_function_of_the_request(
    mock_server: ServerThread, prompt: Any, n: int, max_tokens: int, echo: bool
) -> None:
    url = mock_server.url + "/v1/completions"
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "n": n, "max_tokens": max_tokens, "echo": echo}
    first, second = post(url, body), post(url, body)
    streamed = post(url, {**body, "stream": True})

    assert first.body == second.body
    completion = _ok(first)
    joined: dict[int, str] = {}
    for chunk in sse_payloads(streamed.body):
        (choice,) = chunk["choices"]
        joined[choice["index"]] = joined.get(choice["index"], "") + choice["text"]
    assert joined == {c["index"]: c["text"] for c in completion["choices"]}
    assert completion["usage"]["completion_tokens"] <= max_tokens * len(completion["choices"])
