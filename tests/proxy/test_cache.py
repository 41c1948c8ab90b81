"""The response cache end to end: the real `openai` SDK and raw HTTP through the gateway, in front of a
standalone mock whose journal counts what reached it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import make_app
from proxy.cache_store import CachedAnswer, SQLiteCacheStore
from proxy.cli import cli
from proxy.clock import ManualClock
from proxy.config import Config
from proxy.exchange import Exchange
from proxy.stages.cache import Cache
from proxy.wire.jsoncodec import dumps
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, UPSTREAM_KEY_ENV, Gateway, Reply, fetch
from .mocks import MockUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0}
OTHER_KEY = "sk-client-other-4471"


@pytest.fixture
def mock(upstream: Callable[[web.Application], ServerThread]) -> MockUpstream:
    return MockUpstream.start(upstream)


@pytest.fixture
def clocked(tmp_path: Path, upstream_key: str) -> Iterator[Callable[..., tuple[Gateway, ManualClock]]]:
    """Factory: a gateway with a `ManualClock` (as `gateway()` builds one, plus the clock)."""
    started: list[Gateway] = []

    def start(base_url: str, **sections: Any) -> tuple[Gateway, ManualClock]:
        db = tmp_path / f"clocked-{len(started)}.db"
        config = Config.model_validate({**sections, "upstream": {"base_url": base_url, "api_key_env": UPSTREAM_KEY_ENV},
                                        "ledger": {"path": str(db)}})
        clock = ManualClock()
        gw = Gateway(ServerThread(lambda: make_app(config, clock=clock)).start(), config, db)
        started.append(gw)
        return gw, clock

    yield start
    for gw in started:
        gw.stop()


def post(gw: Gateway, body: dict[str, Any], key: str = CLIENT_KEY, path: str = "/chat/completions",
         **headers: str) -> Reply:
    return fetch("POST", gw.url + path, key=key, json=body, headers=headers)


def calls(mock: MockUpstream, path: str = "/v1/chat/completions") -> int:
    return len(mock.calls(path))


def cached_gateway(gateway: Callable[..., Gateway], mock: MockUpstream, **cache: Any) -> Gateway:
    return gateway(mock.url, cache={"enabled": True, **cache})


def test_an_identical_request_is_answered_once_and_byte_for_byte(gateway: Callable[..., Gateway],
                                                                 mock: MockUpstream) -> None:
    gw = cached_gateway(gateway, mock)
    first, second = post(gw, CHAT), post(gw, CHAT)
    assert (first.status, second.status) == (200, 200)
    assert (first.headers["x-oaigate-cache"], second.headers["x-oaigate-cache"]) == ("miss", "hit")
    assert second.body == first.body
    assert calls(mock) == 1
    miss, hit = gw.rows(expect=2)
    assert (miss["cache"], miss["saved_microusd"]) == ("miss", None) and miss["cost_microusd"] > 0
    assert (hit["cache"], hit["cost_microusd"], hit["saved_microusd"]) == ("hit", 0, miss["cost_microusd"])
    assert hit["upstream"] is None and hit["prompt_tokens"] is None  # spent nothing, tokens count nowhere
    assert hit["simulated"] == miss["simulated"] == 1  # the mock's answer, replayed
    assert hit["finish_reason"] == miss["finish_reason"] == "stop"
    metrics = fetch("GET", gw.root + "/metrics").body.decode()
    assert 'oaigate_cache_requests_total{result="hit"} 1.0' in metrics
    assert 'oaigate_cache_requests_total{result="miss"} 1.0' in metrics
    gw.stop()
    spent = CliRunner().invoke(cli, ["spend", "--db", str(gw.db), "--format", "json"], catch_exceptions=False)
    total = json.loads(spent.stdout)["total"]
    # the mock's answer is priced as simulated spend; the hit saved what it would have cost
    assert (total["saved_microusd"], total["simulated_microusd"]) == (miss["cost_microusd"], miss["cost_microusd"])
    table = CliRunner().invoke(cli, ["spend", "--db", str(gw.db)], catch_exceptions=False).stdout
    assert "saved by" in table and f"${miss['cost_microusd'] / 1e6:.6f}" in table


def test_the_sdk_gets_the_same_answer(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = cached_gateway(gateway, mock)
    with gw.client() as client:
        first = client.embeddings.create(model="text-embedding-3-small", input="cache me")
        again = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="cache me")
    assert again.headers["x-oaigate-cache"] == "hit"  # embeddings are deterministic: always cacheable
    assert again.parse().data[0].embedding == first.data[0].embedding
    assert calls(mock, "/v1/embeddings") == 1


async def _stream(url: str, body: dict[str, Any], path: str = "/chat/completions") -> tuple[str, bytes, list[bytes]]:
    """A stream read raw: its cache header, its bytes, and the pieces they came in."""
    async with aiohttp.ClientSession() as session, session.post(
            url + path, json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as response:
        pieces = [piece async for piece in response.content.iter_any()]
        return response.headers["x-oaigate-cache"], b"".join(pieces), pieces


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_hit_replays_the_same_frames(gateway: Callable[..., Gateway], mock: MockUpstream,
                                              include_usage: bool) -> None:
    gw = cached_gateway(gateway, mock)
    body = {**CHAT, "stream": True, **({"stream_options": {"include_usage": True}} if include_usage else {})}
    first = asyncio.run(_stream(gw.url, body))
    second = asyncio.run(_stream(gw.url, body))
    assert (first[0], second[0]) == ("miss", "hit")
    assert second[1] == first[1] and first[1].endswith(b"data: [DONE]\n\n")
    assert (b'"usage":{' in first[1]) is include_usage
    assert calls(mock) == 1
    miss, hit = gw.rows(expect=2)
    assert hit["saved_microusd"] == miss["cost_microusd"] > 0 and hit["stream"] == 1
    # a non-stream request is not served a stream's answer
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "miss" and calls(mock) == 2


def test_a_responses_stream_is_replayed_too(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = cached_gateway(gateway, mock)
    body = {"model": "gpt-4o-mini", "input": "Say hello.", "temperature": 0, "stream": True}
    first = asyncio.run(_stream(gw.url, body, "/responses"))
    second = asyncio.run(_stream(gw.url, body, "/responses"))
    assert (first[0], second[0], second[1] == first[1]) == ("miss", "hit", True)
    assert b"response.completed" in first[1] and calls(mock, "/v1/responses") == 1
    miss, hit = gw.rows(expect=2)
    assert hit["saved_microusd"] == miss["cost_microusd"] > 0
    assert hit["finish_reason"] == miss["finish_reason"] == "completed"


def test_keys_never_share_with_scope_key_and_do_with_global(gateway: Callable[..., Gateway],
                                                            mock: MockUpstream) -> None:
    keys = [{"name": "a", "key": CLIENT_KEY}, {"name": "b", "key": OTHER_KEY}]
    own = gateway(mock.url, keys=keys, cache={"enabled": True})
    assert [post(own, CHAT, key=k).headers["x-oaigate-cache"] for k in (CLIENT_KEY, OTHER_KEY, OTHER_KEY)] == \
        ["miss", "miss", "hit"]
    assert calls(mock) == 2
    shared = gateway(mock.url, keys=keys, cache={"enabled": True, "scope": "global"})
    assert [post(shared, CHAT, key=k).headers["x-oaigate-cache"] for k in (CLIENT_KEY, OTHER_KEY)] == ["miss", "hit"]
    assert calls(mock) == 3


def test_answers_expire_after_ttl(clocked: Callable[..., tuple[Gateway, ManualClock]], mock: MockUpstream) -> None:
    gw, clock = clocked(mock.url, cache={"enabled": True, "ttl_s": 60})
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "miss"
    clock.advance(59)
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "hit"
    clock.advance(1)
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "miss"
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "hit"
    assert calls(mock) == 2


def test_only_successful_answers_are_cached(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = gateway(mock.url, upstream={"max_retries": 0}, cache={"enabled": True})
    failed = post(gw, CHAT, **{"x-mock-fault": "500"})
    assert (failed.status, failed.headers["x-oaigate-cache"]) == (500, "miss")
    assert [post(gw, CHAT).headers["x-oaigate-cache"] for _ in range(2)] == ["miss", "hit"]
    assert calls(mock) == 2


def test_by_default_only_deterministic_requests_are_cached(gateway: Callable[..., Gateway],
                                                           mock: MockUpstream) -> None:
    gw = cached_gateway(gateway, mock)
    warm = {**CHAT, "temperature": 0.7}
    assert [post(gw, warm).headers["x-oaigate-cache"] for _ in range(2)] == ["bypass", "bypass"]
    seeded = {**warm, "seed": 7}
    assert [post(gw, seeded).headers["x-oaigate-cache"] for _ in range(2)] == ["miss", "hit"]
    unset = {k: v for k, v in CHAT.items() if k != "temperature"}  # temperature defaults to 1
    assert post(gw, unset).headers["x-oaigate-cache"] == "bypass"
    assert calls(mock) == 4
    anything = cached_gateway(gateway, mock, deterministic_only=False)
    assert [post(anything, {**warm, "n": 2}).headers["x-oaigate-cache"] for _ in range(2)] == ["miss", "hit"]


def test_request_headers_control_the_cache(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gw = cached_gateway(gateway, mock)
    assert post(gw, CHAT, **{"x-oaigate-cache": "no-store"}).headers["x-oaigate-cache"] == "bypass"
    assert post(gw, CHAT, **{"Cache-Control": "no-store"}).headers["x-oaigate-cache"] == "bypass"
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "miss"  # nothing was stored by the two above
    assert post(gw, CHAT, **{"x-oaigate-cache": "refresh"}).headers["x-oaigate-cache"] == "miss"
    assert post(gw, CHAT, **{"Cache-Control": "no-cache"}).headers["x-oaigate-cache"] == "miss"
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "hit"
    assert calls(mock) == 5
    bad = post(gw, CHAT, **{"x-oaigate-cache": "forever"})
    assert bad.status == 400
    assert json.loads(bad.body)["error"]["param"] == "x-oaigate-cache"
    assert all("x-oaigate-cache" not in e["headers"] for e in mock.journal())  # never sent upstream


def test_a_hit_takes_no_budget_reservation(gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    """Key b's budget cannot pay for this request's worst case, yet its identical request is a hit."""
    keys = [{"name": "a", "key": CLIENT_KEY}, {"name": "b", "key": OTHER_KEY, "budget_usd": 0.000001}]
    gw = gateway(mock.url, keys=keys, cache={"enabled": True, "scope": "global"})
    assert post(gw, CHAT, key=OTHER_KEY).status == 429  # a miss is admitted as usual: over budget
    assert post(gw, CHAT).headers["x-oaigate-cache"] == "miss"
    hit = post(gw, CHAT, key=OTHER_KEY)
    assert (hit.status, hit.headers["x-oaigate-cache"]) == (200, "hit")
    budget = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=OTHER_KEY).body)["budgets"][0]
    assert (budget["spent_usd"], budget["reserved_usd"]) == ("0.000000", "0.000000")
    assert calls(mock) == 1


def test_the_store_stays_within_max_bytes(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteCacheStore(tmp_path / "c.db", max_bytes=250)
        for i in range(5):
            assert await store.put(f"k{i}", CachedAnswer(200, {}, bytes(100), False, float(i)), 1000.0)
        assert store.total_bytes <= 250
        assert [await store.get(f"k{i}", 0.0) is not None for i in range(5)] == [False, False, False, True, True]
        assert not await store.put("huge", CachedAnswer(200, {}, bytes(300), False, 9.0), 1000.0)
        assert await store.get("k4", 1000.0) is None  # expired
        await store.close()

    asyncio.run(go())


def test_cache_config_is_checked() -> None:
    with pytest.raises(ValueError, match="include"):
        Config.model_validate({"cache": {"include": ["chat/completions"]}})
    with pytest.raises(ValueError, match="scope"):
        Config.model_validate({"cache": {"scope": "team"}})
    with pytest.raises(ValueError, match="ttl_s"):
        Config.model_validate({"cache": {"ttl_s": 0}})


class BrokenStore:
    """A store whose disk has gone: every call fails."""

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        raise OSError("disk I/O error")

    async def put(self, key: str, answer: CachedAnswer, expires: float) -> bool:
        raise OSError("disk I/O error")

    async def close(self) -> None:
        pass


def test_a_broken_store_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(Config.model_validate({"cache": {"enabled": True}}).cache, BrokenStore(), ManualClock())
    ex = Exchange("POST", "/v1/chat/completions", "", CIMultiDictProxy(CIMultiDict()), dumps(CHAT))
    ex.status, ex.stream_ended = 200, True

    async def go() -> None:
        await cache.request(ex)
        cache.chunk(ex, b'{"id": "chatcmpl-1"}')
        await cache.finish(ex)

    asyncio.run(go())
    assert ex.cache == "miss" and ex.response_headers["x-oaigate-cache"] == "miss"
    assert [r.message for r in caplog.records] == ["the response cache could not be read",
                                                   "the response cache could not store an answer"]
