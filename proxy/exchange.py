"""One request's journey through the gateway: what came in, what went out, and what it cost."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from .body import StreamedBody
    from .upstream import Target
    from .wire.fixtures import Fixture

from .wire.jsoncodec import JSONDecodeError, loads
from .wire.usage import Usage


class _RandomHex:
    """20 random hex digits at a time, cut from one `os.urandom` read per 1,600 ids (a read per id
    was one getrandom system call per request); read afresh in a forked child, so two workers never
    share the rest of a read."""

    __slots__ = ("_text", "_at")
    SIZE = 20
    READ = 1600

    def __init__(self) -> None:
        self._text, self._at = "", 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._text, self._at = "", 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._text):
            self._text, at = os.urandom(self.READ * self.SIZE // 2).hex(), 0
        self._at = at + self.SIZE
        return self._text[at:at + self.SIZE]


_random_hex = _RandomHex()


def new_id() -> str:
    """A request id: `gw_` and 32 hex digits, the first 12 the time in milliseconds, the rest random.
    Time-ordered, so each ledger row lands at the end of the id index instead of on a random page."""
    return f"gw_{time.time_ns() // 1_000_000:012x}{_random_hex()}"


_JSON_START = frozenset((b"{", b" ", b"\n", b"\r", b"\t"))
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Estimate:
    """Worst-case tokens of one request (set by the estimate stage, read by budget and rate limit)."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class Slot(Generic[T]):
    """A typed key for one stage's per-request state on an exchange, as `web.AppKey` is for an app:

        _WATCH = Slot[_Watch]("owners")     # at module level, in the stage's module
        ex.state.set(_WATCH, watch)         # in `request`
        watch = ex.state.pop(_WATCH)        # in `finish`: a _Watch, or None
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Slot {self.name}>"


class StageState:
    """The stages' per-request state, keyed by `Slot`: it lives and dies with its exchange, so nothing
    leaks when a finish hook is skipped."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[Slot[Any], Any] = {}

    def get(self, slot: Slot[T]) -> T | None:
        return cast("T | None", self._values.get(slot))

    def set(self, slot: Slot[T], value: T) -> None:
        self._values[slot] = value

    def pop(self, slot: Slot[T]) -> T | None:
        return cast("T | None", self._values.pop(slot, None))

    def __contains__(self, slot: Slot[Any]) -> bool:
        return slot in self._values


@dataclass(slots=True, eq=False)
class Exchange:
    """Created per request by the app; each stage reads and fills its part."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: bytes  # the app creates the exchange with b"" and sets the body once the key is checked (`set_body`)
    id: str = field(default_factory=new_id)
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    # the one deadline (time.monotonic()) for queueing, retries, waits and the answer: see stages/deadline
    deadline: float = math.inf
    # request, as the gateway understands it
    json: dict[str, Any] | None = None
    model: str | None = None
    stream: bool = False
    # a large upload relayed to the upstream as it arrives instead of read whole (`body` stays b"")
    body_stream: StreamedBody | None = None
    body_decoded: bool = False  # the client's Content-Encoding was undone: the upstream gets plain bytes
    # route: `model` becomes the real model when the client named an alias (kept in `model_alias`)
    model_alias: str | None = None
    target: Target | None = None
    # authenticate
    principal: str | None = None
    admin: bool = False  # a `[[keys]]` entry with `admin = true`
    client_token: str | None = None
    # estimate (worst-case tokens, for budgets and rate limits); headers stages add to the answer
    estimate: Estimate | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # fixtures: a recorded answer to replay instead of forwarding
    replay: Fixture | None = None
    # forward
    upstream: str | None = None
    upstream_headers: Mapping[str, str] | None = None
    upstream_body: bytes | None = None
    strip_stream_usage: bool = False
    attempts: int = 0
    upstream_wait_s: float = 0.0
    ttfb_s: float | None = None
    status: int | None = None
    upstream_request_id: str | None = None
    response_body: bytes | None = None
    response_json: Any = None
    # meter
    model_served: str | None = None
    usage: Usage | None = None
    usage_source: str | None = None
    cost_micros: int | None = None
    replayed_cost_micros: int | None = None  # a fixture hit: what it would have cost live
    object_id: str | None = None  # the object a creating request made (`id` of its answer): see `meter`
    settle_later: bool = False  # a background response still running: its cost comes later (`pending`)
    stream_ended: bool = False  # the stream's last event (`[DONE]`, `response.completed`...) was relayed
    finish_reason: str | None = None  # the first choice's, or a Responses answer's status / incomplete reason
    # fallback: the model first tried when another one answered, and how many models were tried
    fallback_from: str | None = None
    models_tried: int = 1
    # cache: hit | miss | bypass (None: no cache configured); a hit's answer, and what it would have cost
    cache: str | None = None
    cached: Any = None
    saved_micros: int | None = None
    # outcome
    fixture: str | None = None
    error_type: str | None = None
    finished: float | None = None
    ledger_ticket: int | None = None  # the row's place in the writer's queue (`LedgerWriter.wait_written`)
    # what else a complete answer waits for before its last bytes go out (a shared budget's settle)
    answer_waits_for: list[asyncio.Future[Any]] = field(default_factory=list)
    overhead_s: float = 0.0
    # each stage's own per-request state (see `Slot`)
    state: StageState = field(default_factory=StageState)

    def __post_init__(self) -> None:
        if self.body:
            self.set_body(self.body)

    def set_body(self, body: bytes) -> None:
        """The request body, read: parsed as JSON (`json`, `model`, `stream`) when it is JSON, whatever its
        Content-Type claims (an upstream may parse it anyway; a multipart body starts with `--`)."""
        self.body = body
        if self.body[:1] in _JSON_START:
            try:
                parsed = loads(self.body)
            except JSONDecodeError:
                return
            if isinstance(parsed, dict):
                self.json = parsed
                model = parsed.get("model")
                self.model = model if isinstance(model, str) else None
                self.stream = parsed.get("stream") is True

    def elapsed_ms(self) -> float:
        end = self.finished if self.finished is not None else time.perf_counter()
        return (end - self.started) * 1000
