"""Shared state on Redis (`redis.asyncio`, one pooled client per process).

Every hot-path step is one Lua script, one round trip: reserving in every budget that applies and
admitting against every rate-limit scope (one script for both when a request has both: a `Reserve`
prepared by the budget rides along with the rate limit's admission), settling a request, releasing a
permit (see `scripts`). Script calls
made in the same turn of the event loop (concurrent requests) go out together in one pipeline, so a
busy gateway pays for one write and one read per batch, not per call. Each call has
a short deadline (`[state] timeout_s`); the first that fails marks the state unavailable and starts a
probe that pings Redis until it answers. Meanwhile calls fail at once with `StateUnavailable` (the
books then answer 503, or enforce locally with `on_unavailable = "local"`), settles are kept in a
backlog, and when Redis answers again the spend this process last knew is re-offered (Redis keeps
the larger figure: it may have lost its data) and the backlog is added, with no one restarting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from . import StateUnavailable, scripts

log = logging.getLogger("oaigate.state")

PROBE_S = 0.5  # how often an unavailable Redis is pinged
MAX_BACKLOG = 100_000  # settles kept while Redis is away
MAX_BATCH = 256  # script calls per pipeline

Totals = tuple[int, int, int, int]  # spent micros, spent tokens, reserved micros, reserved tokens
Reserved = tuple[int, list[Totals], str]  # refusing account (1-based, 0: reserved), totals, reservation id
Admitted = tuple[str | None, float, list[tuple[float | None, float, float]]]  # see `RedisState.admit`


@dataclass(frozen=True, slots=True)
class Reserve:
    """A reservation's script call, prepared (`RedisState.prepare_reserve`): sent alone (`reserve`) or
    with the request's rate-limit admission, in one script (`reserve_and_admit`)."""

    keys: list[str]
    args: list[Any]
    rid: str
    accounts: int

    def parse(self, out: Sequence[Any]) -> Reserved:
        totals = [tuple(int(v) for v in out[1 + 4 * i:5 + 4 * i]) for i in range(self.accounts)]
        return int(out[0]), totals, self.rid  # type: ignore[return-value]


def safe_url(url: str) -> str:
    """`url` without its password, for logs and /healthz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisState:
    """Budgets, rate limits and governor holds for every gateway process using one Redis."""

    def __init__(self, client: Redis, *, url: str, prefix: str = "oaigate:", reservation_ttl_s: float = 660.0,
                 on_unavailable: str = "closed", timeout_s: float = 0.5) -> None:
        self.client, self.url, self.prefix = client, safe_url(url), prefix
        self.reservation_ttl_s, self.timeout_s = reservation_ttl_s, timeout_s
        self.local = on_unavailable == "local"
        self.available = True
        self.latency_ms: float | None = None
        self.outages = 0
        self.round_trips = 0  # pipelines sent (each one write and one read, however many calls it holds)
        self.backlog: list[tuple[list[str], list[Any]]] = []
        self.on_recover: list[Callable[[], Awaitable[None]]] = []  # e.g. the budget book re-seeding
        self._probe: asyncio.Task[None] | None = None
        self._reserve = client.register_script(scripts.RESERVE)
        self._settle = client.register_script(scripts.SETTLE)
        self._seed = client.register_script(scripts.SEED)
        self._admit = client.register_script(scripts.ADMIT)
        self._reserve_admit = client.register_script(scripts.RESERVE_ADMIT)
        self._release = client.register_script(scripts.RELEASE)
        self._hold = client.register_script(scripts.HOLD)
        self._background: set[asyncio.Task[Any]] = set()
        self._queue: list[tuple[AsyncScript, Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._recovering = False  # Redis answers again: only the probe's calls go through until it is done

    @classmethod
    def from_config(cls, config: Any) -> RedisState:
        state = config.state
        password = os.environ.get(state.password_env) if state.password_env else None
        if state.password_env and password is None:
            from ..config import ConfigError

            raise ConfigError("config", "state.password_env",
                              f"the environment variable {state.password_env} is not set")
        timeout = state.timeout_s
        pool = BlockingConnectionPool.from_url(
            state.url, max_connections=128, timeout=timeout, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), decode_responses=True, **({"password": password} if password else {}))
        ttl = state.reservation_ttl_s or config.upstream.timeout_s + 60.0
        return cls(Redis.from_pool(pool), url=state.url, prefix=state.prefix, reservation_ttl_s=ttl,
                   on_unavailable=state.on_unavailable, timeout_s=timeout)

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once; if it does not answer, serve anyway (503 or local) and keep probing."""
        try:
            await self.ping()
            log.info("shared state on %s (latency %.2f ms)", self.url, self.latency_ms or 0.0)
        except StateUnavailable:
            pass

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._background:  # settles still on their way get a moment, then go to the backlog's fate
            await asyncio.wait(list(self._background), timeout=self.timeout_s * 4)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.aclose()

    async def ping(self) -> float:
        """Round-trip time to Redis in ms (raises `StateUnavailable`, and marks it so, when it fails)."""
        started = time.perf_counter()
        await self._call(self.client.ping)
        self.latency_ms = (time.perf_counter() - started) * 1000
        return self.latency_ms

    def health(self) -> dict[str, object]:
        mode = "shared" if self.available else ("local" if self.local else "closed")
        return {"backend": "redis", "url": self.url, "available": self.available, "mode": mode,
                "degraded_to_local": not self.available and self.local, "outages": self.outages,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "backlog": len(self.backlog), "round_trips": self.round_trips}

    async def _call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """`fn(...)` with a deadline; its failure marks Redis unavailable (`StateUnavailable`)."""
        if not self._may_call():
            raise StateUnavailable()
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # the socket timeouts should fire first
                return await fn(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
            raise StateUnavailable() from None

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`script` in the next pipeline, as `_call` (the deadline is the pipeline's: one timer per batch)."""
        if not self._may_call():
            raise StateUnavailable()
        try:
            return await self._eval(script, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
            raise StateUnavailable() from None

    def _may_call(self) -> bool:
        return self.available or (self._recovering and asyncio.current_task() is self._probe)

    def _down(self, exc: BaseException) -> None:
        if not self.available:
            return
        self.available = False
        self.outages += 1
        what = ("each gateway process enforces its own budgets and limits until it is back" if self.local
                else "budgeted and rate-limited requests get 503 until it is back")
        log.warning("shared state on %s is unavailable (%s: %s): %s", self.url, type(exc).__name__, exc, what)
        if self._probe is None or self._probe.done():  # (a hook failing in the probe: it goes on)
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                async with asyncio.timeout(self.timeout_s * 2):
                    started = time.perf_counter()
                    await self.client.ping()
                    self.latency_ms = (time.perf_counter() - started) * 1000
            except (RedisError, OSError, TimeoutError):
                continue
            self._recovering, recovered = True, True
            try:
                for hook in self.on_recover:  # a Redis that lost its data is raised to what we know first...
                    await hook()
                async with asyncio.timeout(self.timeout_s * 2):  # ...then what was settled meanwhile is added
                    await self._flush_backlog()
            except (StateUnavailable, RedisError, OSError, TimeoutError):
                recovered = False
            finally:
                self._recovering = False
            self.available = recovered
            if self.available:
                log.warning("shared state on %s is back", self.url)
                return

    async def _flush_backlog(self) -> None:
        while self.backlog:
            keys, args = self.backlog[0]
            await self._settle(keys=keys, args=args)  # a direct call: the probe runs before `available`
            self.backlog.pop(0)

    def _eval(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Run `script` in the next pipeline (sent once the current turn of the event loop ends)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            self.spawn(self._send(batch))

    async def _send(self, batch: list[tuple[AsyncScript, Sequence[str], Sequence[Any], asyncio.Future[Any]]]
                    ) -> None:
        try:
            async with asyncio.timeout(self.timeout_s * 2):  # the socket timeouts should fire first
                pipe = self.client.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                self.round_trips += 1
                results = await pipe.execute(raise_on_error=False)
                for (script, keys, args, future), result in zip(batch, results, strict=True):
                    if isinstance(result, NoScriptError):  # a Redis that restarted: load it, run it again
                        try:
                            result = await script(keys=keys, args=args)
                        except Exception as exc:  # noqa: BLE001 (handed to the caller)
                            result = exc
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except Exception as exc:  # noqa: BLE001 (handed to every caller in the batch)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `coro` in the background (a settle from a sync caller), kept until done; returns its task."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- budgets ---------------------------------------------------------------------------------

    def _account_keys(self, name: str) -> list[str]:
        base = f"{self.prefix}budget:{name}"
        return [base, base + ":r", base + ":h"]

    def prepare_reserve(self, names: Sequence[str], limits: Sequence[tuple[int, int, int]], micros: int,
                        tokens: int, now: float, ttl_s: float | None = None) -> Reserve:
        """The call holding `micros`/`tokens` in every account (`limits`: limit micros, limit tokens, -1 for
        none, and how long the account's keys live, in seconds, 0: forever) unless one cannot pay; a
        reservation not settled expires after `ttl_s` (default `[state] reservation_ttl_s`)."""
        rid = os.urandom(8).hex()
        keys = [k for name in names for k in self._account_keys(name)]
        args: list[Any] = [repr(now), repr(now + (ttl_s or self.reservation_ttl_s)), rid, micros, tokens]
        for limit in limits:
            args.extend(limit)
        return Reserve(keys, args, rid, len(names))

    async def reserve(self, call: Reserve) -> Reserved:
        """Send a prepared reservation. Returns (the 1-based index of the account that refused, 0 when
        reserved; each account's totals; the reservation's id)."""
        return call.parse(await self._run(self._reserve, keys=call.keys, args=call.args))

    async def settle(self, rid: str, held: Sequence[str], live: Sequence[tuple[str, int]], micros: int,
                     tokens: int) -> list[Totals] | None:
        """Drop reservation `rid` (from the accounts `held` it was made in) and add the real cost to the
        current periods' accounts (`live`: name, keys' lifetime in seconds). Never lost: while Redis is away, the
        settle waits in the backlog (and None is returned)."""
        keys: list[str] = []
        for name, (now_name, _) in zip(held, live, strict=True):
            keys += [*self._account_keys(name), self._account_keys(now_name)[0]]
        args: list[Any] = [rid, micros, tokens, *(keep for _, keep in live)]
        try:
            out = await self._run(self._settle, keys=keys, args=args)
        except StateUnavailable:
            if len(self.backlog) < MAX_BACKLOG:
                self.backlog.append((keys, args))
            else:
                log.error("shared state backlog full: a settle of %d micro-dollars is lost", micros)
            return None
        return [tuple(int(v) for v in out[4 * i:4 * i + 4]) for i in range(len(live))]  # type: ignore[misc]

    async def seed(self, name: str, micros: int, tokens: int, keep: int) -> Totals:
        """Offer what this gateway knows was settled in an account (from its ledger at start, from what
        Redis last said when it returns): Redis keeps the larger of that and its own counter. Settles
        still in the backlog are left out (they are added when it is flushed)."""
        key = self._account_keys(name)[0]
        for keys, args in self.backlog:
            if key in keys[3::4]:
                micros, tokens = micros - int(args[1]), tokens - int(args[2])
        out = await self._run(self._seed, keys=[key], args=[max(micros, 0), max(tokens, 0), keep])
        return tuple(int(v) for v in out)  # type: ignore[return-value]

    # --- rate limits -----------------------------------------------------------------------------

    def _scope_keys(self, name: str) -> list[str]:
        base = f"{self.prefix}rate:{name}"
        return [base, base + ":c"]

    def _admission(self, scopes: Sequence[tuple[str, int, int, int]], tokens: int, now: float,
                   hold: str | None, give_back: Sequence[float]) -> tuple[list[str], list[Any], str]:
        pid = os.urandom(8).hex()
        keys = [k for name, *_ in scopes for k in self._scope_keys(name)]
        keys.append(f"{self.prefix}hold:{hold}" if hold is not None else f"{self.prefix}hold:-")
        args: list[Any] = [repr(now), repr(now + self.reservation_ttl_s), pid, tokens]
        for i, (_, rpm, tpm, concurrent) in enumerate(scopes):
            args += [rpm, tpm, concurrent, repr(give_back[i]) if give_back else 0]
        return keys, args, pid

    @staticmethod
    def _admitted(out: Sequence[Any], pid: str, scopes: int) -> Admitted:
        per = []
        for i in range(scopes):
            wait = float(out[2 + 3 * i])
            per.append((None if wait < 0 else wait, float(out[3 + 3 * i]), float(out[4 + 3 * i])))
        return (pid if out[0] == "1" else None), float(out[1]), per

    async def admit(self, scopes: Sequence[tuple[str, int, int, int]], tokens: int, now: float,
                    hold: str | None, give_back: Sequence[float] = ()) -> Admitted:
        """Take one request and `tokens` from every scope (name, rpm, tpm, concurrent; 0: none) if all
        have room (after adding `give_back`, per scope: earlier requests' corrections) and the governor's
        hold (`hold`, its key) has passed. Returns (the permit's id, None when not admitted; the hold's
        seconds left; per scope (wait in seconds, None: only a finishing request makes room; requests
        level; tokens level))."""
        keys, args, pid = self._admission(scopes, tokens, now, hold, give_back)
        return self._admitted(await self._run(self._admit, keys=keys, args=args), pid, len(scopes))

    async def reserve_and_admit(self, call: Reserve, scopes: Sequence[tuple[str, int, int, int]], tokens: int,
                                now: float, hold: str | None, give_back: Sequence[float] = ()
                                ) -> tuple[Reserved, Admitted | None]:
        """`reserve(call)` then, only if it reserved, `admit(...)`: one script, one round trip. The
        admission's answer is None when the reservation was refused (then nothing was admitted)."""
        keys, args, pid = self._admission(scopes, tokens, now, hold, give_back)
        out = await self._run(self._reserve_admit, keys=[*call.keys, *keys],
                               args=[len(call.keys), len(call.args), *call.args, *args])
        reserved = call.parse(out[0])
        return reserved, (self._admitted(out[1], pid, len(scopes)) if not reserved[0] else None)

    async def release(self, pid: str, scopes: Sequence[tuple[str, int]], give_back: int) -> None:
        """Free permit `pid` in every scope (name, tpm) and give back tokens taken in excess (negative:
        take more). A release that fails is dropped: the slot frees itself when the permit expires."""
        keys = [k for name, _ in scopes for k in self._scope_keys(name)]
        with contextlib.suppress(StateUnavailable):
            await self._run(self._release, keys=keys, args=[pid, give_back, *(tpm for _, tpm in scopes)])

    def hold(self, key: str, until: float, seconds: float) -> None:
        """Share a governor's hold (an upstream window at zero) with every process, in the background."""
        async def go() -> None:
            with contextlib.suppress(StateUnavailable):
                await self._run(self._hold, keys=[f"{self.prefix}hold:{key}"],
                                 args=[repr(until), repr(seconds)])

        if self.available:
            self.spawn(go())
