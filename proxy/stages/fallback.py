"""fallback: when a model fails after its retries, send the request to the next model configured.

    [[fallbacks]]
    model = "gpt-4o"                      # name or glob, matched after aliases
    to = ["gpt-4o-mini", "llama-3-70b"]   # tried in order; each may be routed to another upstream
    on = ["429", "5xx", "timeout", "connection"]   # (the default) + context_length_exceeded, content_filter

`forward` asks `Fallbacks` once an upstream's final answer (its retries spent) is a failure, before
any byte of it reached the client: the model in the body is rewritten, the request re-routed, and
admitted again for the new model (its own estimate, budget and rate limits: the reservation moves,
and a fallback a budget cannot pay for is refused like any request). The client sees the answer of the
model that answered, with `x-oaigate-fallback: MODEL`; a stream that has started is never switched.
A request over its model's context window (the pre-check) falls back the same way when `on` names
`context_length_exceeded`, before anything is admitted. The ledger keeps one row: `model_requested`
is the first model, `fallback_from` says a fallback happened, `models_tried` how many were tried.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from ..errors import UpstreamError, UpstreamTimeout
from ..exchange import Exchange
from ..wire.jsoncodec import JSONDecodeError, dumps, loads

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import FallbackConfig
    from ..upstream import Target

FALLBACK_HEADER = "x-oaigate-fallback"
KINDS = ("429", "5xx", "timeout", "connection", "context_length_exceeded", "content_filter")
DEFAULT_ON = ("429", "5xx", "timeout", "connection")
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
PEEK_BYTES = 64 * 1024  # a 400's body is read (to find its code) only up to this size


@dataclass(frozen=True, slots=True)
class FallbackRule:
    model: str
    to: tuple[str, ...]
    on: frozenset[str]


def failure_kind(status: int, code: str | None = None) -> str | None:
    """What kind of failure an upstream's final answer is, in `on`'s terms; None for one never fallen
    back (a 400 other than context_length_exceeded / content_filter, a 401, a 404...)."""
    if status == 429:
        return "429"
    if status >= 500:
        return "5xx"
    if status == 400 and code == "context_length_exceeded":
        return code
    if status == 400 and code in _FILTER_CODES:
        return "content_filter"
    return None


def error_kind(exc: UpstreamError) -> str | None:
    """A failure with no answer: a timeout, or no connection; None once the request's deadline passed."""
    if exc.code == "deadline_exceeded":
        return None
    return "timeout" if isinstance(exc, UpstreamTimeout) else "connection"


async def _error_code(response: aiohttp.ClientResponse) -> str | None:
    """The `error.code` of a JSON error answer of known length (read once: the relay reuses it)."""
    length = response.content_length
    if length is None or length > PEEK_BYTES or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        body = loads(await response.read())
    except (JSONDecodeError, aiohttp.ClientError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


class Fallbacks:
    """The configured rules, and the switch from one model to the next.

    `select(model)` routes a model to its upstream target; `admit(ex)` admits the request again for its
    new model (estimate, budget move, rate limits), raising a `GatewayError` to refuse it."""

    def __init__(self, rules: Sequence[FallbackRule], select: Callable[[str | None], Target],
                 admit: Callable[[Exchange], Awaitable[None]] | None = None) -> None:
        self.rules, self.select, self.admit = list(rules), select, admit
        self.switched = 0
        self._counter: Any = None

    def register(self, registry: CollectorRegistry) -> None:
        """`oaigate_fallbacks_total{to}` on /metrics: requests moved to each configured model."""
        from prometheus_client import Counter

        self._counter = Counter("oaigate_fallbacks", "Requests moved to a fallback model, by that model.", ["to"],
                                registry=registry)
        for model in dict.fromkeys(m for rule in self.rules for m in rule.to):
            self._counter.labels(model)

    def rule(self, ex: Exchange) -> FallbackRule | None:
        model = ex.fallback_from or ex.model
        if model is None or ex.json is None:
            return None
        return next((r for r in self.rules if fnmatch.fnmatchcase(model, r.model)), None)

    def next_model(self, ex: Exchange, kind: str | None) -> str | None:
        """The model to try next after a failure of `kind`, or None."""
        rule = self.rule(ex) if kind is not None else None
        if rule is None or kind not in rule.on:
            return None
        tried = {ex.fallback_from or ex.model, ex.model}
        for model in rule.to[ex.models_tried - 1:]:
            if model not in tried:
                return model
        return None

    def wants_code(self, ex: Exchange, status: int) -> bool:
        """Whether a 400 must be read to know if it is fallen back (its rule names a 400 kind)."""
        rule = self.rule(ex) if status == 400 else None
        return rule is not None and bool(rule.on & {"context_length_exceeded", "content_filter"})

    async def after_answer(self, ex: Exchange, response: aiohttp.ClientResponse) -> str | None:
        """The model to switch to after this final answer (an error status), or None to relay it."""
        if not self.rules:
            return None
        code = await _error_code(response) if self.wants_code(ex, response.status) else None
        return self.next_model(ex, failure_kind(response.status, code))

    def after_error(self, ex: Exchange, exc: UpstreamError) -> str | None:
        return self.next_model(ex, error_kind(exc)) if self.rules else None

    def rewrite(self, ex: Exchange, model: str) -> None:
        """The request, now for `model`: body, target upstream, the answer's header."""
        assert ex.json is not None
        ex.fallback_from = ex.fallback_from or ex.model
        ex.models_tried += 1
        ex.model = model
        ex.json = {**ex.json, "model": model}
        ex.body = dumps(ex.json)
        ex.target = self.select(model)
        ex.response_headers[FALLBACK_HEADER] = model
        self.switched += 1
        if self._counter is not None:
            self._counter.labels(model).inc()

    async def switch(self, ex: Exchange, model: str) -> None:
        """Move an admitted request to `model`, and admit it again (may raise: refused)."""
        self.rewrite(ex, model)
        if self.admit is not None:
            await self.admit(ex)


class _Admits(Protocol):
    async def request(self, ex: Exchange) -> None: ...


class _Moves(Protocol):
    async def move(self, ex: Exchange) -> None: ...


def readmission(estimator: _Admits, budget: _Moves, ratelimit: _Moves) -> Callable[[Exchange], Awaitable[None]]:
    """Admission again for a request's new model: estimated, its reservation and rate-limit slot moved."""
    async def admit(ex: Exchange) -> None:
        await estimator.request(ex)
        await budget.move(ex)
        await ratelimit.move(ex)

    return admit


def rules_from_config(entries: Sequence[FallbackConfig]) -> list[FallbackRule]:
    return [FallbackRule(e.model, tuple(e.to), frozenset(e.on)) for e in entries]


__all__ = ["DEFAULT_ON", "FALLBACK_HEADER", "KINDS", "FallbackRule", "Fallbacks", "error_kind", "failure_kind",
           "readmission", "rules_from_config"]
