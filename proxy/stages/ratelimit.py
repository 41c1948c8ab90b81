"""ratelimit: requests per minute, tokens per minute and requests in flight, per key, per model and
global, with token buckets that refill continuously (no fixed windows).

Over a limit, a request either waits in line (`on_limit = "queue"`: FIFO per scope, at most
`max_wait_s`) or is refused at once with a 429 `rate_limit_exceeded` carrying `retry-after-ms`.
Tokens are estimated at admission (prompt + completion cap) and corrected after the response.
Every response carries OpenAI's `x-ratelimit-*` headers for the tightest scope. The adaptive
governor reads the upstream's own `x-ratelimit-remaining-*` / `reset-*` and 429s and holds
admission back until the upstream's window resets, so a burst produces few upstream 429s.

With `[state] url` the buckets, the requests in flight and the governor's holds live in Redis
(`proxy.state`), shared by every gateway process: one atomic round trip admits a request against
every scope; the local buckets then mirror what Redis said (for the headers, and for enforcement by
this process alone while Redis is away, with `on_unavailable = "local"`). The budget stage's shared
reservation (`proxy.state.ALONG`) goes out in the same script as the first try, so a request with both
is admitted in one round trip; a refused budget takes no slot. A permit with a concurrency
slot is released in one more round trip; the token corrections of the others ride along with this
process's next admission (until then the shared bucket is stricter, never looser).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ..clock import Clock
from ..config import Config
from ..errors import RateLimited
from ..exchange import Exchange, Slot
from ..state import ALONG, Along, StateUnavailable
from . import Stage
from .retry import MAX_HINT_S, hinted_wait, parse_duration
from .scopes import Selector

if TYPE_CHECKING:
    from ..state.redis import RedisState

SHARED_POLL_S = 0.05  # how often a request waiting for a slot held by another process asks again


@dataclass(frozen=True, slots=True)
class RateRule(Selector):
    """One configured rate limit: who and what it covers, and its limits."""

    rpm: int | None
    tpm: int | None
    concurrent: int | None


def rules_from_config(config: Config) -> list[RateRule]:
    """`[limits]` (global), each `[[keys]]` and each `[[rate_limits]]`, as rules."""
    def has_any(fields: object) -> bool:
        return any(getattr(fields, n) is not None for n in ("rpm", "tpm", "concurrent"))

    rules = []
    if has_any(config.limits):
        rules.append(RateRule(None, None, config.limits.rpm, config.limits.tpm, config.limits.concurrent))
    rules += [RateRule(k.name, None, k.rpm, k.tpm, k.concurrent) for k in config.keys if has_any(k)]
    rules += [RateRule(r.key, r.model, r.rpm, r.tpm, r.concurrent) for r in config.rate_limits if has_any(r)]
    return rules


class Bucket:
    """A token bucket: holds up to `capacity`, refills `capacity` per minute, continuously."""

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity, self.rate = capacity, capacity / 60.0
        self.level, self.updated = float(capacity), now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` fits (an amount above capacity waits for a full bucket)."""
        self.refill(now)
        missing = min(amount, self.capacity) - self.level
        return max(missing / self.rate, 0.0)

    def take(self, amount: float) -> None:
        self.level -= amount

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return max(self.capacity - self.level, 0.0) / self.rate


@dataclass(eq=False)
class Scope:
    """The live state of one rule for one scope: its buckets, its in-flight count, its line."""

    rule: RateRule
    name: str
    requests: Bucket | None
    tokens: Bucket | None
    in_flight: int = 0
    line: asyncio.Lock = field(default_factory=asyncio.Lock)

    def wait(self, tokens: int, now: float) -> float | None:
        """Seconds until this request fits; None when only a finishing request can make room."""
        if self.rule.concurrent is not None and self.in_flight >= self.rule.concurrent:
            return None
        waits = [0.0]
        if self.requests is not None:
            waits.append(self.requests.wait(1, now))
        if self.tokens is not None:
            waits.append(self.tokens.wait(tokens, now))
        return max(waits)


@dataclass(slots=True)
class Permit:
    scopes: list[Scope]
    tokens: int
    governor: UpstreamGovernor | None = None
    key: object = None  # the governor's key (model, and client key when passed upstream)
    released: bool = False
    shared_id: str | None = None  # the permit's id in the shared state, when admitted there
    taken: int = 0  # tokens taken at admission in the shared state


class UpstreamGovernor:
    """Admission paced by what an upstream says of its own limits, per model (and per client key when
    the client's key is passed upstream): the scope of a provider's rate limit.

    Two kinds of evidence, read from each answer's headers as they arrive:
    - a window at zero (`x-ratelimit-remaining-requests` or `-tokens` <= 0, on any status) holds
      admission for that model until its reset (`x-ratelimit-reset-*`, else a 429's `retry-after`),
      never longer, hard: a limiter in reject mode refuses meanwhile;
    - a remaining count is counted down as requests are admitted; at zero, admission waits (soft) for
      the next answer's fresh count. Each time its reset passes with no fresh count, the window holds
      `x-ratelimit-limit-requests` again, less the requests still unanswered; an answer without a
      count drops it (the upstream only sends counts sometimes, e.g. on its 429s: nothing is known).
    A 429 that does not say a window is at zero (no count, or requests left) is about that request:
    it is retried with its own backoff and holds no one else. An upstream that sends no counts is
    never paced. Only a fresh gateway, before its first answer, sends one request at a time (for at
    most `PROBE_S`).
    """

    COUNT_TTL_S = 1.0  # a remaining count with no reset is trusted this long
    PROBE_S = 1.0
    MAX_KEYS = 1024

    def __init__(self, *, per_client: bool = False) -> None:
        self.per_client = per_client
        self.informative: bool | None = None  # None until the first answer says whether it has headers
        self.in_flight = 0
        self.probe_until = 0.0
        self._states: dict[object, _Evidence] = {}
        self.changed = asyncio.Event()  # set (and replaced) whenever an answer is observed
        self.shared: RedisState | None = None  # with `[state] url`: holds are shared with every process
        self.shared_name = ""  # the upstream's name there (a digest: no URL or key in Redis)
        self.wall: Clock | None = None

    def hold_key(self, key: object) -> str:
        """The shared name of the hold for `key` (digested: a client's key never reaches Redis)."""
        return f"{self.shared_name}:{hashlib.sha256(repr(key).encode()).hexdigest()[:24]}"

    def key(self, ex: Exchange) -> object:
        """What a provider's limit is kept per: the model, and the client's own key when it is the one
        sent upstream."""
        return (ex.client_token, ex.model) if self.per_client else ex.model

    def _state(self, key: object, now: float) -> _Evidence:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self.MAX_KEYS:
                self._states = {k: s for k, s in self._states.items() if s.in_flight or s.live(now)}
            state = self._states[key] = _Evidence()
        return state

    def observe(self, status: int, headers: Mapping[str, str], now: float, key: object = None) -> None:
        requests = _count(headers.get("x-ratelimit-remaining-requests"))
        tokens = _count(headers.get("x-ratelimit-remaining-tokens"))
        if requests is not None or tokens is not None:
            self.informative = True
        elif self.informative is None:
            self.informative = False
        state = self._states.get(key) if requests is None and tokens is None else self._state(key, now)
        if state is not None:
            hint = hinted_wait(status, headers) if status == 429 else None
            for left, reset in ((requests, "x-ratelimit-reset-requests"), (tokens, "x-ratelimit-reset-tokens")):
                if left is not None and left <= 0:  # a window at zero: hold until it resets
                    wait = parse_duration(headers.get(reset, "")) or hint or self.COUNT_TTL_S
                    state.blocked_until = max(state.blocked_until, now + min(wait, MAX_HINT_S))
                    if self.shared is not None and self.wall is not None:
                        self.shared.hold(self.hold_key(key), self.wall.wall() + state.blocked_until - now,
                                         state.blocked_until - now)
            if requests is not None:
                # the other requests in flight may not be counted upstream yet: assume they will be
                state.remaining = requests - max(state.in_flight - 1, 0)
                ttl = parse_duration(headers.get("x-ratelimit-reset-requests", "")) or self.COUNT_TTL_S
                state.window = min(ttl, MAX_HINT_S)
                state.remaining_until = now + state.window
                state.limit = _count(headers.get("x-ratelimit-limit-requests"))
            else:  # this answer carries no count: the last one no longer describes the upstream
                state.remaining = None
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def wait(self, now: float, key: object = None) -> float | None:
        """Seconds admission is held for `key`; 0.0: not held; None: held until an answer arrives or
        `expires_in` passes (a soft hold, which a limiter in reject mode ignores)."""
        if self.informative is None and self.in_flight and now < self.probe_until:
            return None
        state = self._states.get(key)
        if state is None:
            return 0.0
        if now < state.blocked_until:
            return state.blocked_until - now
        left = state.count(now) if state.remaining is not None else None
        return None if left is not None and left <= 0 else 0.0

    def expires_in(self, now: float, key: object = None) -> float:
        """How long a soft hold lasts at most."""
        if self.informative is None and self.in_flight and now < self.probe_until:
            return self.probe_until - now
        state = self._states.get(key)
        if state is None or state.remaining is None:
            return 0.0
        state.count(now)
        return max(state.remaining_until - now, 0.0)

    def admitted(self, now: float, key: object = None) -> None:
        if self.informative is None and not self.in_flight:
            self.probe_until = now + self.PROBE_S
        self.in_flight += 1
        state = self._state(key, now) if self.informative else self._states.get(key)
        if state is not None:
            # the window as of now first: a window refilled by `count` must not count this request twice
            # (once as in flight, once taken from what is left)
            left = state.count(now)
            state.in_flight += 1
            if left is not None:
                state.remaining = left - 1

    def finished(self, key: object = None) -> None:
        self.in_flight -= 1
        state = self._states.get(key)
        if state is not None and state.in_flight > 0:
            state.in_flight -= 1


@dataclass(slots=True)
class _Evidence:
    """What one upstream said about one model (and key): a window at zero until `blocked_until`, a
    remaining count until the window's next reset, `remaining_until`."""

    blocked_until: float = 0.0
    remaining: int | None = None
    remaining_until: float = 0.0
    limit: int | None = None  # x-ratelimit-limit-requests: what the window holds once it resets
    window: float = 0.0  # how long the last count was valid
    in_flight: int = 0

    def live(self, now: float) -> bool:
        return now < self.blocked_until or (self.remaining is not None and now < self.remaining_until)

    def count(self, now: float) -> int | None:
        """The remaining count now. Each time a window's reset passes with no fresh count, the window
        holds `limit` again, less the requests still in flight (not answered yet: they will be counted);
        with no known limit, nothing is known any more."""
        if self.remaining is not None and now >= self.remaining_until:
            if self.limit is None or self.limit <= 0 or self.window <= 0:
                self.remaining = None
            else:
                self.remaining = self.limit - self.in_flight
                self.remaining_until += ((now - self.remaining_until) // self.window + 1) * self.window
        return self.remaining


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


class _TryAgain(Exception):
    """A first shared try found no room: wait in line."""


class RateLimiter:
    """Admission against every matching scope; FIFO per scope; all scopes taken at once.

    `governor` paces admission to the upstream; `acquire` may name another (one per upstream when
    requests are routed to several)."""

    def __init__(self, rules: list[RateRule], clock: Clock, *, on_limit: str = "queue", max_wait_s: float = 30.0,
                 governor: UpstreamGovernor | None = None) -> None:
        self.rules, self.clock, self.on_limit, self.max_wait_s = rules, clock, on_limit, max_wait_s
        self.governor = governor
        self.shared: RedisState | None = None  # set by the app with `[state] url`
        self._give_back: dict[str, float] = {}  # shared tokens to correct with the next admission, per scope
        self._scopes: dict[tuple[int, str], Scope] = {}
        self._released = asyncio.Event()

    def scopes(self, principal: str | None, model: str | None) -> list[Scope]:
        found = []
        for index, rule in enumerate(self.rules):
            if not rule.matches(principal, model):
                continue
            name = rule.scope(principal)
            scope = self._scopes.get((index, name))
            if scope is None:
                now = self.clock.monotonic()
                scope = Scope(rule, name, Bucket(rule.rpm, now) if rule.rpm else None,
                              Bucket(rule.tpm, now) if rule.tpm else None)
                self._scopes[(index, name)] = scope
            found.append(scope)
        return found

    async def acquire(self, principal: str | None, model: str | None, tokens: int,
                      governor: UpstreamGovernor | None = None, *, key: object = None,
                      max_wait_s: float | None = None, along: Along | None = None) -> Permit:
        """Wait (or refuse) until the request fits every scope and the upstream's governor (this
        limiter's own unless one is given; `key` is what the governor keeps evidence per, by default
        the model), then take from all of them. `max_wait_s` shortens the line's `max_wait_s` (the
        request's own deadline). `along`: a budget reservation decided first, with the first shared
        try when there is one (one round trip), else alone."""
        if governor is None:
            governor = self.governor
        if key is None:
            key = model
        scopes = self.scopes(principal, model)
        now = self.clock.monotonic()
        shared_now = self.shared is not None and scopes and not any(s.line.locked() for s in scopes)
        if along is not None and not shared_now:
            await along.send()
        if not scopes and governor is not None and governor.wait(now, key) == 0.0:
            governor.admitted(now, key)  # the common case, nothing to wait for: no lines, no loop
            return Permit([], tokens, governor, key)
        longest_wait = self.max_wait_s if self.on_limit == "queue" else 0.0
        if max_wait_s is not None:
            longest_wait = max(min(longest_wait, max_wait_s), 0.0)
        deadline = now + longest_wait
        if shared_now:
            assert self.shared is not None
            try:  # no one of this process waiting: try at once, concurrently (Redis decides atomically)
                return await self._acquire_shared(self.shared, scopes, tokens, governor, key, deadline, once=True,
                                                  along=along)
            except StateUnavailable:
                if not self.shared.local:
                    raise
            except _TryAgain:
                pass
        if along is not None:
            await along.send()  # (unless it went with the first try)
        held: list[Scope] = []
        try:
            for scope in scopes:  # a fixed order: no two requests wait on each other's lines
                await scope.line.acquire()
                held.append(scope)
            if self.shared is not None and scopes:
                try:
                    return await self._acquire_shared(self.shared, scopes, tokens, governor, key, deadline)
                except StateUnavailable:
                    if not self.shared.local:
                        raise
            while True:
                now = self.clock.monotonic()
                waits = [s.wait(tokens, now) for s in scopes]
                soft = 0.0  # how long a soft hold of the governor lasts at most
                if governor is not None:
                    held_back = governor.wait(now, key)
                    if held_back is None:
                        soft = governor.expires_in(now, key)
                    waits.append(0.0 if held_back is None and self.on_limit == "reject" else held_back)
                known = [w for w in waits if w is not None]
                longest = max(known, default=0.0)
                if longest == 0.0 and None not in waits:
                    for scope in scopes:
                        if scope.requests is not None:
                            scope.requests.take(1)
                        if scope.tokens is not None:
                            scope.tokens.take(tokens)
                        scope.in_flight += 1
                    if governor is not None:
                        governor.admitted(now, key)
                    return Permit(scopes, tokens, governor, key)
                remaining = deadline - now
                if remaining <= 0 or longest > remaining:
                    raise self._refusal(scopes, waits, tokens)
                sleep = longest if longest > 0 else remaining
                if soft > 0:
                    sleep = min(sleep, soft)
                await self._wait_for_room(sleep, remaining, governor)
        finally:
            for scope in held:
                scope.line.release()

    async def _acquire_shared(self, shared: RedisState, scopes: list[Scope], tokens: int,
                              governor: UpstreamGovernor | None, key: object, deadline: float,
                              once: bool = False, along: Along | None = None) -> Permit:
        """`acquire`'s loop with the buckets and slots in the shared state: one round trip per try.
        `once`: a first try outside the lines; `_TryAgain` when it must wait (then in line). `along`:
        a budget reservation, sent with the first try (decided first: its refusal raises) or alone."""
        refs = [(_shared_name(s), s.rule.rpm or 0, s.rule.tpm or 0, s.rule.concurrent or 0) for s in scopes]
        hold = governor.hold_key(key) if governor is not None and governor.shared is not None else None
        while True:
            now = self.clock.monotonic()
            soft = 0.0
            held_back = governor.wait(now, key) if governor is not None else 0.0
            if held_back is None and governor is not None:
                soft = governor.expires_in(now, key)
                held_back = 0.0 if self.on_limit == "reject" else None
            waits: list[float | None]
            if held_back == 0.0:
                back = [self._give_back.pop(name, 0.0) for name, *_ in refs]
                if along is not None and not along.sent:
                    try:
                        reserved, admitted = await shared.reserve_and_admit(
                            along.call, refs, tokens, self.clock.wall(), hold, back)
                    except StateUnavailable:
                        along.unavailable()  # the budget's say first: 503, or reserved locally
                        raise
                    along.resolve(reserved)  # a refused budget raises here (nothing was admitted)
                    assert admitted is not None
                    pid, hold_s, per = admitted
                else:
                    pid, hold_s, per = await shared.admit(refs, tokens, self.clock.wall(), hold, back)
                now = self.clock.monotonic()
                for scope, (_, requests, tokens_left) in zip(scopes, per, strict=True):
                    for bucket, level in ((scope.requests, requests), (scope.tokens, tokens_left)):
                        if bucket is not None:
                            bucket.level, bucket.updated = level, now
                if pid is not None:
                    for scope in scopes:
                        scope.in_flight += 1
                    if governor is not None:
                        governor.admitted(now, key)
                    return Permit(scopes, tokens, governor, key, shared_id=pid, taken=tokens)
                waits = [*(w for w, _, _ in per), hold_s if hold_s > 0 else 0.0]
            else:
                if along is not None:
                    await along.send()
                waits = [*(0.0 for _ in scopes), held_back]
            known = [w for w in waits if w is not None]
            longest = max(known, default=0.0)
            remaining = deadline - now
            if remaining <= 0 or longest > remaining:
                raise self._refusal(scopes, waits, tokens)
            if once:
                raise _TryAgain
            sleep = longest if longest > 0 else min(remaining, SHARED_POLL_S)  # a slot another process holds
            if soft > 0:
                sleep = min(sleep, soft)
            await self._wait_for_room(sleep, remaining, governor)

    async def _wait_for_room(self, seconds: float, remaining: float,
                             governor: UpstreamGovernor | None = None) -> None:
        """Sleep until a bucket has refilled enough, a request in flight finishes or (with a governor)
        an upstream answer arrives."""
        waiters = {asyncio.ensure_future(self.clock.sleep(min(seconds, remaining))),
                   asyncio.ensure_future(self._released.wait())}
        if governor is not None:
            waiters.add(asyncio.ensure_future(governor.changed.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def correct(self, permit: Permit, actual_tokens: int) -> None:
        """Give back (or take more of) the tokens once the real count is known."""
        for scope in permit.scopes:
            if scope.tokens is not None:
                scope.tokens.take(actual_tokens - permit.tokens)
        permit.tokens = actual_tokens

    def release(self, permit: Permit) -> None:
        if permit.released:
            return
        permit.released = True
        for scope in permit.scopes:
            scope.in_flight -= 1
        if permit.shared_id is not None and self.shared is not None:
            back = permit.taken - permit.tokens
            if any(s.rule.concurrent for s in permit.scopes):  # a slot to free: one round trip
                names = [(_shared_name(s), s.rule.tpm or 0) for s in permit.scopes]
                self.shared.spawn(self.shared.release(permit.shared_id, names, back))
            elif back:  # only tokens to correct: they ride along with this process's next admission
                for scope in permit.scopes:
                    if scope.rule.tpm:
                        name = _shared_name(scope)
                        self._give_back[name] = self._give_back.get(name, 0.0) + back
        if permit.governor is not None:
            permit.governor.finished(permit.key)
        self._released.set()
        self._released = asyncio.Event()

    def _refusal(self, scopes: list[Scope], waits: list[float | None], tokens: int) -> RateLimited:
        known = [w for w in waits if w is not None]
        retry = max(known, default=1.0) or 1.0
        blocking = [s for s, w in zip(scopes, waits, strict=False) if w is None or w > 0]
        if blocking:
            scope = blocking[0]
            if waits[scopes.index(scope)] is None:
                what = f"requests in flight: limit {scope.rule.concurrent}"
            elif scope.requests is not None and scope.requests.wait(1, self.clock.monotonic()) > 0:
                what = f"requests per minute: limit {scope.rule.rpm}"
            else:
                what = f"tokens per minute: limit {scope.rule.tpm}, this request needs {tokens}"
            message = f"Rate limit reached for {scope.name} ({what})."
        else:
            message = "The upstream is at its rate limit; the gateway is holding requests back."
        millis = math.ceil(retry * 1000)
        return RateLimited(f"{message} Please try again in {millis}ms.", headers={
            "retry-after-ms": str(millis), "retry-after": str(math.ceil(retry))})

    def status(self, principal: str | None = None, own_only: bool = False) -> list[dict[str, object]]:
        """Each rule's current use (read only, for `/oaigate/limits`): with `principal`, the rules that
        apply to it (with `own_only`, only those naming it: its key or `key = "*"`), else every rule, a
        per-caller (`key = "*"`) one for each caller it has seen."""
        now = self.clock.monotonic()
        out: list[dict[str, object]] = []
        for index, rule in enumerate(self.rules):
            if principal is not None and (rule.key not in (("*", principal) if own_only else (None, "*", principal))):
                continue
            if principal is not None or rule.key != "*":
                names = [rule.scope(principal)]
            else:
                names = sorted(name for (i, name) in self._scopes if i == index)
            for name in names:
                scope = self._scopes.get((index, name))
                entry: dict[str, object] = {"scope": name, "model": rule.model, "rpm": rule.rpm, "tpm": rule.tpm,
                                            "concurrent": rule.concurrent,
                                            "in_flight": scope.in_flight if scope is not None else 0}
                for kind, bucket in (("requests", scope and scope.requests), ("tokens", scope and scope.tokens)):
                    used = 0
                    if bucket:
                        level = min(bucket.capacity, bucket.level + (now - bucket.updated) * bucket.rate)
                        used = max(math.ceil(bucket.capacity - level), 0)
                    entry[f"{kind}_used"] = used  # what the last minute took and has not yet refilled
                out.append(entry)
        return out

    def headers(self, principal: str | None, model: str | None) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the tightest matching scope of each kind."""
        now = self.clock.monotonic()
        out: dict[str, str] = {}
        scopes = self.scopes(principal, model)
        for kind in ("requests", "tokens"):
            buckets = [getattr(s, kind) for s in scopes if getattr(s, kind) is not None]
            if not buckets:
                continue
            for bucket in buckets:
                bucket.refill(now)
            tightest = min(buckets, key=lambda b: b.level / b.capacity)
            out[f"x-ratelimit-limit-{kind}"] = str(tightest.capacity)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(int(tightest.level), 0))
            out[f"x-ratelimit-reset-{kind}"] = format_duration(tightest.reset_in())
        return out


def _shared_name(scope: Scope) -> str:
    """A scope's name in the shared state (its limits in it: two rules never share a bucket)."""
    return f"{scope.name}|{scope.rule.rpm or 0}|{scope.rule.tpm or 0}|{scope.rule.concurrent or 0}"


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    seconds = math.ceil(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_PERMIT = Slot[Permit]("ratelimit")  # held from `request` to `finish`


class RateLimit(Stage):
    """Admits before forwarding; corrects tokens and frees the slot after."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def request(self, ex: Exchange) -> None:
        tokens = ex.estimate.total if ex.estimate is not None else 0
        along = ex.state.pop(ALONG)  # the budget stage's shared reservation, sent with the admission
        if self.limiter.rules or self.limiter.governor is not None:
            # the routed upstream's (`resources` gives every target an UpstreamGovernor or None)
            governor = cast("UpstreamGovernor | None", ex.target.governor if ex.target is not None else None)
            paced_by = governor or self.limiter.governor
            key = paced_by.key(ex) if paced_by is not None else None
            left = ex.deadline - time.monotonic()  # queueing counts against the request's deadline
            permit = await self.limiter.acquire(ex.principal, ex.model, tokens, governor, key=key, max_wait_s=left,
                                                along=along)
            ex.state.set(_PERMIT, permit)
        elif along is not None:
            await along.send()
        if self.limiter.rules:
            ex.response_headers.update(self.limiter.headers(ex.principal, ex.model))

    async def move(self, ex: Exchange) -> None:
        """A request moving to another model (a fallback): its slot is freed and one taken for the new
        model, as for a new request (it may queue, or be refused)."""
        permit = ex.state.pop(_PERMIT)
        if permit is not None:
            self.limiter.correct(permit, 0)
            self.limiter.release(permit)
        await self.request(ex)

    async def finish(self, ex: Exchange) -> None:
        permit = ex.state.pop(_PERMIT)
        if permit is None:
            return
        if ex.usage is not None:
            self.limiter.correct(permit, ex.usage.total)
        elif ex.status is None or ex.status >= 400:
            self.limiter.correct(permit, 0)
        self.limiter.release(permit)
