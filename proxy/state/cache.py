"""The response cache in Redis, for every gateway process using one `[state] url` (a `CacheStore`).

An answer is one string key, `PREFIX cache:DIGEST`: a JSON header line (status, headers, stream flag,
when it was stored and when it expires, wall seconds) then the body, byte for byte. Redis expires the
key (`PX`, the answer's lifetime) so it frees the memory by itself; `get` also compares the stored
expiry with the gateway's clock, so every gateway agrees on a hit whatever Redis's clock says.

`max_bytes` is kept exactly, for the answers this cache stored, by one Lua script per `put`: a sorted
set of the stored digests scored by their expiry, a hash of their sizes and a running total. A put
first drops the answers past their expiry, then those soonest to expire (with one `ttl_s` for all:
the oldest) until the total fits. Redis's own memory overhead (key names, the index) is not counted.
The script names answer keys it builds itself, so it needs a single Redis (not Redis Cluster), as the
rest of the shared state does.

The client is its own (binary replies, the state's timeout on every call). A Redis that fails or
times out is a miss for `get` and a skipped store for `put` (the `cache` stage logs it); a request
never fails because of its cache.
"""

from __future__ import annotations

import os
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..cache_store import CachedAnswer
from ..wire.jsoncodec import dumps, loads

# KEYS: the answer's key, the index (zset: digest -> expiry), the sizes (hash), the total (string).
# ARGV: digest, payload, expiry (wall s), lifetime (ms), size, max bytes, now (wall s), answer key prefix.
# Returns the total size after the put.
PUT = """
local entry, index, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, payload, exp, px = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local size, cap, now, prefix = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local old = tonumber(redis.call('HGET', sizes, id) or '0')
redis.call('SET', entry, payload, 'PX', px)
redis.call('ZADD', index, exp, id)
redis.call('HSET', sizes, id, size)
local used = redis.call('INCRBY', total, size - old)
local function drop(victim)
  local s = tonumber(redis.call('HGET', sizes, victim) or '0')
  redis.call('HDEL', sizes, victim)
  redis.call('ZREM', index, victim)
  redis.call('DEL', prefix .. victim)
  used = redis.call('DECRBY', total, s)
end
for _, victim in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now)) do
  if victim ~= id then drop(victim) end
end
while used > cap do
  local first = redis.call('ZRANGE', index, 0, 1)
  local victim = first[1]
  if victim == id then victim = first[2] end
  if victim == nil then break end
  drop(victim)
end
return used
"""


class RedisCacheStore:
    """Cached answers shared through Redis (see the module's docstring)."""

    def __init__(self, client: Redis, max_bytes: int, prefix: str = "oaigate:") -> None:
        self.client, self.max_bytes = client, max_bytes
        self.entry_prefix = f"{prefix}cache:a:"
        self._index, self._sizes, self._total = f"{prefix}cache:index", f"{prefix}cache:sizes", f"{prefix}cache:bytes"
        self._put = client.register_script(PUT)

    @classmethod
    def from_config(cls, config: Any) -> RedisCacheStore:
        state = config.state
        password = os.environ.get(state.password_env) if state.password_env else None
        timeout = state.timeout_s
        pool = BlockingConnectionPool.from_url(
            state.url, max_connections=64, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), **({"password": password} if password else {}))
        return cls(Redis.from_pool(pool), config.cache.max_bytes, state.prefix)

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        payload = cast("bytes | None", await self.client.get(self.entry_prefix + key))  # binary replies
        if payload is None:
            return None
        head, _, body = payload.partition(b"\n")
        meta = loads(head)
        if meta["expires"] <= now:
            return None
        return CachedAnswer(meta["status"], meta["headers"], body, meta["stream"], meta["created"])

    async def put(self, key: str, answer: CachedAnswer, expires: float) -> bool:
        size = answer.size
        if size > self.max_bytes:
            return False
        meta = {"status": answer.status, "headers": answer.headers, "stream": answer.stream,
                "created": answer.created, "expires": expires}
        lifetime_ms = max(int((expires - answer.created) * 1000), 1)
        await self._put(keys=[self.entry_prefix + key, self._index, self._sizes, self._total],
                        args=[key, dumps(meta) + b"\n" + answer.body, repr(expires), lifetime_ms, size,
                              self.max_bytes, repr(answer.created), self.entry_prefix])
        return True

    async def total_bytes(self) -> int:
        """What the stored answers add up to (as `max_bytes` counts them)."""
        return int(await self.client.get(self._total) or 0)

    async def close(self) -> None:
        await self.client.aclose()


__all__ = ["RedisCacheStore"]
