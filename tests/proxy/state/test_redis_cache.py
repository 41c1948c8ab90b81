"""The response cache in Redis (`[state] url`): gateways sharing one Redis share their cached answers,
never across keys with scope "key"; answers expire with the gateways' clock (and Redis frees them by
itself); the store stays within `max_bytes`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from proxy.app import make_app
from proxy.cache_store import CachedAnswer
from proxy.clock import ManualClock
from proxy.config import Config
from proxy.state.cache import RedisCacheStore
from tests.servers import ServerThread

from ...redis_server import RedisServer
from ..conftest import CLIENT_KEY, UPSTREAM_KEY_ENV, Gateway
from ..mocks import MockUpstream
from ..test_cache import CHAT, OTHER_KEY, _stream, calls, post


@pytest.fixture
def mock(upstream: Callable[[web.Application], ServerThread]) -> MockUpstream:
    return MockUpstream.start(upstream)


@pytest.fixture
def gateways(tmp_path: Path, upstream_key: str, redis_server: RedisServer, mock: MockUpstream
             ) -> Iterator[Callable[..., tuple[Gateway, Gateway, ManualClock]]]:
    """Factory: two gateways on one Redis with the cache on (`cache` settings), sharing a `ManualClock`."""
    started: list[Gateway] = []

    def start(keys: list[dict[str, Any]] | tuple[()] = (), **cache: Any) -> tuple[Gateway, Gateway, ManualClock]:
        clock = ManualClock()
        pair = []
        for _ in range(2):
            db = tmp_path / f"ledger-{len(started)}.db"
            config = Config.model_validate({
                "upstream": {"base_url": mock.url, "api_key_env": UPSTREAM_KEY_ENV}, "ledger": {"path": str(db)},
                "keys": list(keys), "state": {"url": redis_server.url}, "cache": {"enabled": True, **cache}})
            gw = Gateway(ServerThread(lambda config=config: make_app(config, clock=clock)).start(), config, db)
            started.append(gw)
            pair.append(gw)
        return pair[0], pair[1], clock

    yield start
    for gw in started:
        gw.stop()


def test_two_gateways_share_their_cached_answers(gateways: Callable[..., tuple[Gateway, Gateway, ManualClock]],
                                                 mock: MockUpstream, redis_server: RedisServer) -> None:
    a, b, _ = gateways()
    first, second = post(a, CHAT), post(b, CHAT)
    assert (first.headers["x-oaigate-cache"], second.headers["x-oaigate-cache"]) == ("miss", "hit")
    assert second.body == first.body
    assert calls(mock) == 1  # the mock's journal: one upstream call for the pair
    miss, hit = a.rows(expect=1)[0], b.rows(expect=1)[0]
    assert (hit["cache"], hit["cost_microusd"], hit["saved_microusd"]) == ("hit", 0, miss["cost_microusd"])
    assert not list(Path(a.db).parent.glob("*.cache.db"))  # nothing in SQLite: the answers are in Redis
    assert any(k.startswith("oaigate:cache:a:") for k in redis_server.client().scan_iter("oaigate:cache:*"))

    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    streamed = [asyncio.run(_stream(gw.url, body)) for gw in (b, a)]
    assert [s[0] for s in streamed] == ["miss", "hit"]
    assert streamed[1][1] == streamed[0][1]  # the same frames, replayed byte for byte
    assert calls(mock) == 2


def test_scope_key_never_shares_across_keys(gateways: Callable[..., tuple[Gateway, Gateway, ManualClock]],
                                            mock: MockUpstream) -> None:
    keys = [{"name": "a", "key": CLIENT_KEY}, {"name": "b", "key": OTHER_KEY}]
    a, b, _ = gateways(keys)
    assert [post(gw, CHAT, key=key).headers["x-oaigate-cache"]
            for gw, key in ((a, CLIENT_KEY), (b, OTHER_KEY), (a, OTHER_KEY), (b, CLIENT_KEY))] == \
        ["miss", "miss", "hit", "hit"]
    assert calls(mock) == 2


def test_answers_expire_after_ttl_on_the_gateways_clock(
        gateways: Callable[..., tuple[Gateway, Gateway, ManualClock]], mock: MockUpstream,
        redis_server: RedisServer) -> None:
    a, b, clock = gateways(ttl_s=60)
    assert post(a, CHAT).headers["x-oaigate-cache"] == "miss"
    (key,) = [k for k in redis_server.client().scan_iter("oaigate:cache:a:*")]
    assert 0 < redis_server.client().pttl(key) <= 60_000  # Redis frees it by itself too
    clock.advance(59)
    assert post(b, CHAT).headers["x-oaigate-cache"] == "hit"
    clock.advance(1)
    assert post(b, CHAT).headers["x-oaigate-cache"] == "miss"
    assert post(a, CHAT).headers["x-oaigate-cache"] == "hit"
    assert calls(mock) == 2


def test_the_store_stays_within_max_bytes(redis_server: RedisServer) -> None:
    async def go() -> None:
        store = RedisCacheStore(Redis.from_url(redis_server.url), max_bytes=250)
        other = RedisCacheStore(Redis.from_url(redis_server.url), max_bytes=250)  # a second gateway
        for i in range(5):
            answer = CachedAnswer(200, {"content-type": "x"}, bytes([i]) * 80, False, float(i))
            assert await (store if i % 2 else other).put(f"k{i}", answer, 1000.0)
            assert await store.total_bytes() <= 250
        kept = [await other.get(f"k{i}", 10.0) for i in range(5)]
        assert [k is not None for k in kept] == [False, False, False, True, True]  # the oldest went first
        assert kept[4] == CachedAnswer(200, {"content-type": "x"}, bytes([4]) * 80, False, 4.0)
        assert not await store.put("huge", CachedAnswer(200, {}, bytes(300), False, 9.0), 1000.0)
        assert await store.get("k4", 1000.0) is None  # expired on the caller's clock
        # a put drops what expired before anything else: k3 and k4 are gone, not counted any more
        assert await store.put("k5", CachedAnswer(200, {}, bytes(10), False, 2000.0), 3000.0)
        assert await store.total_bytes() == 10
        assert await store.client.exists(store.entry_prefix + "k3") == 0
        await store.close()
        await other.close()

    asyncio.run(go())
