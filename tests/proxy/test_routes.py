"""Routes and aliases: which upstream serves which model, with which key, under which name.

Two test upstreams (`a`, the default, and `b`) record what reached them (model, Authorization, body)
and answer chat completions naming themselves and the model they were sent, so every assertion is
about what actually crossed the wire.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pydantic
import pytest
from aiohttp import web

from proxy.config import Config, ConfigError, load_config
from proxy.stages.forward import Upstream
from proxy.stages.route import CACHE_SIZE, Route, Target, display_name
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Gateway, fetch

KEY_B_ENV = "OAIGATE_TEST_ROUTE_B_KEY"
KEY_B = "sk-route-b-SECRET-0e8d2c44f1"  # must reach upstream b only, never a client, the ledger or a file
MESSAGES = [{"role": "user", "content": "Say hello."}]
OAIGATE = str(Path(sys.executable).parent / "oaigate")


@dataclass
class Seen:
    path: str
    model: str | None
    authorization: str | None
    body: bytes


@dataclass
class Tagged:
    """A running test upstream: its name, its /v1 base URL and what reached it."""

    tag: str
    url: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def models(self) -> list[str | None]:
        return [s.model for s in self.seen]


def tagged_app(tag: str, seen: list[Seen], extra_headers: dict[str, str] | None = None) -> web.Application:
    """An OpenAI-shaped upstream whose answers say who it is and which model it was sent."""
    headers = {"x-request-id": f"req_{tag}", **(extra_headers or {})}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = json.loads(body)
        model = payload.get("model")
        seen.append(Seen(request.path, model, request.headers.get("Authorization"), body))
        usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        if not payload.get("stream"):
            return web.json_response({
                "id": f"chatcmpl-{tag}", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"{tag}:{model}"},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage}, headers=headers)
        with_usage = (payload.get("stream_options") or {}).get("include_usage") is True
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in (tag, ":", model):
            chunk: dict[str, Any] = {"id": f"chatcmpl-{tag}", "object": "chat.completion.chunk", "created": 1,
                                     "model": model,
                                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            if with_usage:
                chunk["usage"] = None
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if with_usage:
            last = {"id": f"chatcmpl-{tag}", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [], "usage": usage}
            await response.write(b"data: " + json.dumps(last).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def other(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(Seen(request.path, None, request.headers.get("Authorization"), body))
        if request.path == "/v1/files":
            return web.json_response({"id": f"file-{tag}", "object": "file", "bytes": len(body), "created_at": 1,
                                      "filename": "in.jsonl", "purpose": "batch", "status": "processed"})
        return web.json_response({"object": "list", "data": [
            {"id": f"{tag}-model", "object": "model", "created": 1, "owned_by": tag}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_route("*", "/v1/{tail:.*}", other)
    return app


@pytest.fixture
def key_b(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_B_ENV, KEY_B)
    return KEY_B


@pytest.fixture
def tagged(upstream: Callable[[web.Application], ServerThread]) -> Callable[..., Tagged]:
    def start(tag: str, extra_headers: dict[str, str] | None = None) -> Tagged:
        seen: list[Seen] = []
        return Tagged(tag, upstream(tagged_app(tag, seen, extra_headers)).url + "/v1", seen)

    return start


def chat(client: openai.OpenAI, model: str, **kwargs: Any) -> str:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)
    content = reply.choices[0].message.content
    assert content is not None
    return content


# --- routing -------------------------------------------------------------------------------------

def test_glob_routes_first_match_wins_and_the_rest_go_to_the_default(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged], key_b: str) -> None:
    a, b = tagged("a"), tagged("b")
    gw = gateway(a.url, routes=[
        {"model": "llama*", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "local-b"},
        {"model": "llama-3*", "base_url": a.url, "name": "never"},  # shadowed by the first
        {"model": "qwen[23]-?b", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "local-b"},
        {"model": "exact-model", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "local-b"},
    ])
    asked = ["llama-3-8b", "gpt-4o-mini", "llama", "qwen2-7b", "qwen4-7b", "exact-model", "exact-model-2",
             "LLAMA-3"]  # globs are case-sensitive, as model names are
    with gw.client() as client:
        answers = [chat(client, m) for m in asked]
    assert answers == ["b:llama-3-8b", "a:gpt-4o-mini", "b:llama", "b:qwen2-7b", "a:qwen4-7b", "b:exact-model",
                       "a:exact-model-2", "a:LLAMA-3"]
    assert b.models == ["llama-3-8b", "llama", "qwen2-7b", "exact-model"]
    assert a.models == ["gpt-4o-mini", "qwen4-7b", "exact-model-2", "LLAMA-3"]
    rows = gw.rows(expect=len(asked))
    assert [r["upstream"] for r in rows] == ["local-b" if x.startswith("b:") else display_name(a.url) for x in answers]
    assert [r["model_requested"] for r in rows] == asked
    assert gw.healthz()["upstreams"] == [display_name(a.url), "local-b", "never"]


def test_each_upstream_gets_its_own_key_and_no_key_leaks(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged], key_b: str, tmp_path: Path) -> None:
    a, b = tagged("a"), tagged("b")
    fixtures = tmp_path / "recorded"
    gw = gateway(a.url, ledger={"log_bodies": True}, fixtures={"mode": "record", "dir": str(fixtures)},
                 upstream={"max_retries": 0}, routes=[
                     {"model": "llama*", "base_url": b.url, "api_key_env": KEY_B_ENV},
                     {"model": "gone-*", "base_url": f"http://user:{KEY_B}@127.0.0.1:{_closed_port()}/v1",
                      "api_key_env": KEY_B_ENV},
                 ])
    with gw.client() as client:
        assert chat(client, "llama-3-8b") == "b:llama-3-8b"
        assert chat(client, "gpt-4o-mini") == "a:gpt-4o-mini"
        with pytest.raises(openai.APIStatusError) as failed:
            chat(client, "gone-1")
    assert [s.authorization for s in b.seen] == [f"Bearer {KEY_B}"]
    assert [s.authorization for s in a.seen] == [f"Bearer {UPSTREAM_KEY}"]
    error = failed.value.response
    assert error.status_code == 502
    message = error.json()["error"]["message"]
    assert "Could not reach the upstream (http://127.0.0.1:" in message
    rows = gw.rows(expect=3)
    assert rows[0]["upstream"] == display_name(b.url) != display_name(a.url) == rows[1]["upstream"]
    assert rows[2]["upstream"].startswith("http://127.0.0.1:") and rows[2]["status"] == 502
    assert all(r["request_body"] for r in rows)  # bodies were logged, keys were not
    gw.stop()
    written = [p for p in [*tmp_path.rglob("*")] if p.is_file()]
    assert any(p.is_relative_to(fixtures) for p in written), "nothing was recorded"
    for secret in (UPSTREAM_KEY, KEY_B, CLIENT_KEY):
        assert secret not in error.text
        for path in written:
            assert secret.encode() not in path.read_bytes(), (secret, path)


def test_a_route_without_a_key_env_gets_the_upstream_key_only_on_the_upstreams_own_host(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged]) -> None:
    a, b = tagged("a"), tagged("b")
    gw = gateway(a.url, routes=[{"model": "llama*", "base_url": b.url},  # another origin (port): no key
                                {"model": "gpt-x*", "base_url": a.url + "/", "name": "a-again"}])
    with gw.client() as client:
        chat(client, "llama-3-8b")
        chat(client, "gpt-x1")
    assert [s.authorization for s in b.seen] == [None]
    assert [s.authorization for s in a.seen] == [f"Bearer {UPSTREAM_KEY}"]


def test_requests_without_a_json_model_go_to_the_default(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged], key_b: str) -> None:
    a, b = tagged("a"), tagged("b")
    gw = gateway(a.url, routes=[{"model": "*", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "b"}])
    with gw.client() as client:
        assert [m.id for m in client.models.list()] == ["a-model"]
        uploaded = client.files.create(file=("in.jsonl", b'{"model": "llama"}\n'), purpose="batch")
        assert uploaded.id == "file-a"
        assert chat(client, "anything") == "b:anything"  # the catch-all route takes every JSON model
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", b"RIFF....", filename="a.wav", content_type="audio/wav")
    assert fetch("POST", gw.url + "/audio/transcriptions", data=form).status == 200
    assert fetch("POST", gw.url + "/embeddings", data=b"[not json", headers={"Content-Type": "application/json"}
                 ).status == 200
    assert [s.path for s in a.seen] == ["/v1/models", "/v1/files", "/v1/audio/transcriptions", "/v1/embeddings"]
    assert b.models == ["anything"]


# --- aliases -------------------------------------------------------------------------------------

def test_alias_is_rewritten_before_forwarding_and_recorded(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged], key_b: str) -> None:
    a, b = tagged("a"), tagged("b")
    gw = gateway(a.url, aliases={"fast": "gpt-4o-mini", "quick": "fast", "local": "llama-3-8b"},
                 routes=[{"model": "llama*", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "local-b"}])
    with gw.client() as client:
        reply = client.chat.completions.create(model="fast", messages=MESSAGES, temperature=0.5, max_tokens=7)
        assert reply.model == "gpt-4o-mini" and reply.choices[0].message.content == "a:gpt-4o-mini"
        assert chat(client, "quick") == "a:gpt-4o-mini"  # an alias of an alias
        assert chat(client, "local") == "b:llama-3-8b"   # an alias pointing at a routed model
        assert chat(client, "gpt-4o-mini") == "a:gpt-4o-mini"
    sent = json.loads(a.seen[0].body)
    assert sent == {"messages": MESSAGES, "model": "gpt-4o-mini", "temperature": 0.5, "max_tokens": 7}
    assert b"fast" not in a.seen[0].body
    assert b.models == ["llama-3-8b"]
    rows = gw.rows(expect=4)
    assert [(r["model_requested"], r["model_served"], r["upstream"]) for r in rows] == [
        ("fast", "gpt-4o-mini", display_name(a.url)),
        ("quick", "gpt-4o-mini", display_name(a.url)),
        ("local", "llama-3-8b", "local-b"),
        ("gpt-4o-mini", "gpt-4o-mini", display_name(a.url)),
    ]
    # priced as the real model: an alias name has no price of its own
    assert rows[0]["cost_microusd"] is not None and rows[0]["cost_microusd"] == rows[3]["cost_microusd"]


def test_alias_is_charged_to_the_real_models_budget_also_after_a_restart(
        gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    budget = [{"model": "gpt-4o-mini", "budget_usd": 1.0, "budget_period": "total"}]
    first = gateway(db=db, aliases={"fast": "gpt-4o-mini"}, budgets=budget)
    with first.client() as client:
        chat(client, "fast", max_tokens=5)
    (row,) = first.rows(expect=1)
    assert row["model_requested"] == "fast" and row["cost_microusd"] > 0
    (live,) = json.loads(fetch("GET", first.root + "/oaigate/budgets").body)["budgets"]
    assert live["scope"] == "model:gpt-4o-mini" and live["spent_usd"] == f"{row['cost_microusd'] / 1e6:.6f}"
    first.stop()
    second = gateway(db=db, aliases={"fast": "gpt-4o-mini"}, budgets=budget)
    (reloaded,) = json.loads(fetch("GET", second.root + "/oaigate/budgets").body)["budgets"]
    assert reloaded["spent_usd"] == live["spent_usd"]
    second.stop()
    tight = gateway(db=db, aliases={"fast": "gpt-4o-mini"},
                    budgets=[{**budget[0], "budget_usd": row["cost_microusd"] / 1e6}])
    with tight.client() as client, pytest.raises(openai.RateLimitError, match="model:gpt-4o-mini"):
        chat(client, "fast", max_tokens=5)


# --- streams, the mock, governors ----------------------------------------------------------------

def test_a_stream_through_a_route(gateway: Callable[..., Gateway], tagged: Callable[..., Tagged],
                                  key_b: str) -> None:
    a, b = tagged("a"), tagged("b")
    gw = gateway(a.url, aliases={"local": "llama-3-8b"},
                 routes=[{"model": "llama*", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "local-b"}])
    with gw.client() as client, client.chat.completions.create(model="local", messages=MESSAGES,
                                                               stream=True) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "b:llama-3-8b"
    assert all(c.choices and c.usage is None for c in chunks)  # the usage the gateway asked for is stripped
    sent = json.loads(b.seen[0].body)
    assert sent["model"] == "llama-3-8b" and sent["stream_options"] == {"include_usage": True}
    assert a.seen == []
    (row,) = gw.rows(expect=1)
    assert row["stream"] == 1 and row["upstream"] == "local-b" and row["model_requested"] == "local"
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_source"]) == (9, 3, "reported")


def test_the_embedded_mock_as_a_route_target_and_as_the_default(
        gateway: Callable[..., Gateway], tagged: Callable[..., Tagged], mock_url: str) -> None:
    a = tagged("a")
    gw = gateway(a.url, routes=[{"model": "gpt-4o*", "base_url": "mock"}])
    with gw.client() as client, openai.OpenAI(base_url=mock_url, api_key="sk-x", max_retries=0) as direct:
        via_mock = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
        expected = direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=8)
        assert chat(client, "llama-3-8b") == "a:llama-3-8b"
    assert via_mock.choices[0].message.content == expected.choices[0].message.content
    assert a.models == ["llama-3-8b"]
    assert [r["upstream"] for r in gw.rows(expect=2)] == ["mock", display_name(a.url)]
    assert gw.healthz()["upstreams"] == [display_name(a.url), "mock"]

    reverse = gateway("mock", routes=[{"model": "llama*", "base_url": a.url, "name": "a"}])
    with reverse.client() as client:
        assert chat(client, "llama-2") == "a:llama-2"
        assert chat(client, "gpt-4o-mini", max_tokens=8) == expected.choices[0].message.content
    assert [r["upstream"] for r in reverse.rows(expect=2)] == ["a", "mock"]


def test_the_adaptive_governor_is_per_upstream(gateway: Callable[..., Gateway], tagged: Callable[..., Tagged],
                                                key_b: str) -> None:
    a = tagged("a", {"x-ratelimit-remaining-requests": "100"})
    b = tagged("b", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"})
    gw = gateway(a.url, limits={"adaptive": True, "on_limit": "reject"},
                 routes=[{"model": "llama*", "base_url": b.url, "api_key_env": KEY_B_ENV, "name": "b"}])
    with gw.client() as client:
        assert chat(client, "llama-3-8b") == "b:llama-3-8b"  # b says: no requests left for a minute
        with pytest.raises(openai.RateLimitError, match="upstream is at its rate limit"):
            chat(client, "llama-3-8b")
        assert chat(client, "gpt-4o-mini") == "a:gpt-4o-mini"  # a is not held back by b's limit
        assert chat(client, "gpt-4o-mini") == "a:gpt-4o-mini"
    assert b.models == ["llama-3-8b"] and len(a.seen) == 2


# --- the router itself ---------------------------------------------------------------------------

def test_router_caches_glob_results_within_a_bound() -> None:
    default = Target(Upstream("a", "http://127.0.0.1:1/v1", None))
    routed = Target(Upstream("b", "http://127.0.0.1:2/v1", None))
    route = Route({}, [("llama*", routed)], default)
    assert route.select("llama-3") is routed and route.select("gpt-4o") is default
    assert route.select(None) is default
    assert route._cache == {"llama-3": routed, "gpt-4o": default}
    for i in range(CACHE_SIZE * 2):
        route.select(f"model-{i}")
    assert len(route._cache) <= CACHE_SIZE
    assert route.select("llama-3") is routed
    assert Route({}, [], default).select("llama-3") is default


# --- config --------------------------------------------------------------------------------------

def test_aliases_resolve_through_chains() -> None:
    config = Config.model_validate({"aliases": {"a": "b", "b": "c", "fast": "gpt-4o-mini"}})
    assert config.resolved_aliases() == {"a": "c", "b": "c", "fast": "gpt-4o-mini"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"aliases": {"a": "b", "b": "a"}}, "alias cycle: a -> b -> a"),
    ({"aliases": {"x": "y", "a": "b", "b": "c", "c": "b"}}, "alias cycle: b -> c -> b"),
    ({"aliases": {"self": "self"}}, "alias cycle: self -> self"),
    ({"routes": [{"model": 5, "base_url": "mock"}]}, "valid string"),
    ({"routes": [{"model": "gpt-[4o", "base_url": "mock"}]}, "never closed"),
    ({"routes": [{"model": "gpt-4o", "base_url": "ftp://example.com/v1"}]}, "http(s) URL"),
    ({"routes": [{"model": "gpt-4o"}]}, "Field required"),
    ({"routes": [{"modle": "gpt-4o", "model": "x", "base_url": "mock"}]}, "Extra inputs"),
])
def test_invalid_routes_and_aliases_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
        Config.model_validate(raw)


def test_valid_globs_are_accepted() -> None:
    patterns = ["gpt-4o*", "llama-?b", "qwen[23]*", "x[!a]", "y[]]", "z[!]]", "exact"]
    config = Config.model_validate({"routes": [{"model": p, "base_url": "mock"} for p in patterns]})
    assert [r.model for r in config.routes] == patterns


BAD_CONFIGS = [
    ('[aliases]\nfast = "quick"\nquick = "fast"\n', "aliases", "alias cycle: fast -> quick -> fast"),
    ('[[routes]]\nmodel = 5\nbase_url = "mock"\n', "routes[0].model", "valid string"),
    ('[[routes]]\nmodel = "gpt-[4o"\nbase_url = "mock"\n', "routes[0].model", "never closed"),
    ('[[routes]]\nmodel = "x"\nbase_url = "mock"\nkey_env = "K"\n', "routes[0].key_env", "unknown key"),
    ('[aliases]\nfast = 4\n', "aliases.fast", "valid string"),
    ('[[budgets]]\nmodel = "o[3"\nbudget_usd = 1\n', "budgets[0].model", "never closed"),  # same globs
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_CONFIGS, ids=["cycle", "glob-type", "glob", "unknown-key",
                                                                      "alias-type", "budget-glob"])
def test_bad_route_config_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.key) == (str(path), key)
    assert reason in caught.value.reason


@pytest.mark.parametrize(("text", "key", "reason"), BAD_CONFIGS[:3], ids=["cycle", "glob-type", "glob"])
def test_serve_with_a_bad_route_config_exits_2(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = subprocess.run([OAIGATE, "serve", "--config", str(path), "--port", "0", "--db", str(tmp_path / "x.db")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert f"{path}: {key}: " in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr and "serving on" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstreams_from_config_reads_each_key_and_strips_names() -> None:
    from proxy.stages.route import upstreams_from_config

    config = Config.model_validate({
        "upstream": {"base_url": "https://api.example.com/v1/", "api_key_env": UPSTREAM_KEY_ENV},
        "routes": [{"model": "llama*", "base_url": "http://127.0.0.1:11434/v1", "api_key_env": KEY_B_ENV},
                   {"model": "mistral*", "base_url": "http://127.0.0.1:11434/v1", "api_key_env": KEY_B_ENV},
                   {"model": "gpt-4o*", "base_url": "mock", "name": "offline"},
                   {"model": "local*", "base_url": "http://user:pw@127.0.0.1:8080/v1"}]})
    upstreams = upstreams_from_config(config, "http://127.0.0.1:9/v1",
                                      {UPSTREAM_KEY_ENV: UPSTREAM_KEY, KEY_B_ENV: KEY_B})
    assert upstreams.default == Upstream("https://api.example.com", "https://api.example.com/v1", UPSTREAM_KEY)
    ollama = Upstream("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1", KEY_B)
    assert [u for _, u in upstreams.routes] == [
        ollama, ollama, Upstream("offline", "http://127.0.0.1:9/v1", "oaigate-embedded-mock"),
        Upstream("http://127.0.0.1:8080", "http://user:pw@127.0.0.1:8080/v1", None),  # basic auth from the URL
    ]
    assert [u.name for u in upstreams.distinct] == ["https://api.example.com", "http://127.0.0.1:11434", "offline",
                                                    "http://127.0.0.1:8080"]
    assert upstreams_from_config(config, "http://127.0.0.1:9/v1", {}).default.api_key is None
