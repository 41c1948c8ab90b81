"""budget: spend caps per key, per model (name or glob), per key and model, and global.

Before forwarding, the worst case (see `estimate`) is priced and reserved in every budget that
applies, in one step with no await in between, so concurrent requests can never overspend by more
than what was reserved. After the response, the reservation is replaced by the real cost. A budget
whose spend cannot be known (no price for the model) refuses the request: enforcement never fails
open. Spend of the current period is rebuilt from the ledger at start.

With `[state] url` the accounts live in Redis (`proxy.state`), shared by every gateway process: `admit`
and `asettle` are then one atomic round trip each, and this book's own accounts mirror what Redis last
said (and enforce alone while Redis is away, with `on_unavailable = "local"`). In the pipeline the
stage's reservation is a `Claim` that the rate-limit stage sends with its own admission, in one script
(`proxy.state.ALONG`): a request with both a budget and a rate limit is admitted in one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..clock import Clock
from ..config import Config
from ..db.ledger import read_rows
from ..errors import BudgetExceeded, InvalidRequest
from ..exchange import Exchange, Slot
from ..state import ALONG, StateUnavailable
from ..wire.pricing import PriceTable
from ..wire.usage import Usage
from . import Stage
from .meter import METERED_PATHS, METERED_PREFIXES
from .scopes import Selector

if TYPE_CHECKING:
    from ..state.redis import RedisState, Reserve, Reserved, Totals

log = logging.getLogger("oaigate.budget")
MICROS = 1_000_000


# The rows a budget is charged for, the same rule the live path follows (see `meter.is_metered`): a
# creating POST, or the settlement of a batch or a background response. Rows an older gateway priced
# for a GET of a stored object are left out (a row with no method, written by hand, counts).
CHARGED_ROWS = ("(method IS NULL OR method IN ('BATCH', 'SETTLE') OR (method = 'POST' AND (endpoint IN ({}) "
                "OR endpoint LIKE '/v1/images/%' OR endpoint LIKE '/v1/audio/%')))").format(
                    ", ".join("?" * len(METERED_PATHS)))
CHARGED_PARAMS = tuple(sorted(METERED_PATHS))
assert METERED_PREFIXES == ("/v1/images/", "/v1/audio/")


@dataclass(frozen=True, slots=True)
class BudgetRule(Selector):
    """One configured budget: who and what it covers, and its limits."""

    limit_micros: int | None
    limit_tokens: int | None
    period: str


@dataclass(slots=True)
class Account:
    """A budget's running totals for one scope and period."""

    rule: BudgetRule
    index: int
    scope: str
    start: datetime
    end: datetime | None
    spent_micros: int = 0
    spent_tokens: int = 0
    reserved_micros: int = 0
    reserved_tokens: int = 0
    warned: bool = False

    def status(self) -> dict[str, Any]:
        def usd(micros: int | None) -> str | None:
            return None if micros is None else f"{micros / MICROS:.6f}"

        limit = self.rule.limit_micros
        return {
            "scope": self.scope, "period": self.rule.period,
            "limit_usd": usd(limit), "spent_usd": usd(self.spent_micros), "reserved_usd": usd(self.reserved_micros),
            "remaining_usd": usd(None if limit is None else max(limit - self.spent_micros - self.reserved_micros, 0)),
            "limit_tokens": self.rule.limit_tokens, "spent_tokens": self.spent_tokens,
            "reserved_tokens": self.reserved_tokens,
            "period_start": _iso(self.start), "resets_at": _iso(self.end) if self.end else None,
            "soft_threshold_crossed": self.warned,
        }


@dataclass(slots=True)
class Reservation:
    holds: list[tuple[Account, int, int]] = field(default_factory=list)
    shared_id: str | None = None  # the reservation's id in the shared state, when it was made there


@dataclass(eq=False)
class Claim:
    """A reservation prepared for the shared state (`BudgetBook.claim`), not sent yet: `send` sends it
    alone; the rate-limit stage sends it with its admission (`proxy.state.Along`). `reservation` holds
    the amounts once Redis has reserved them (or this book alone, Redis away, `on_unavailable = "local"`)."""

    book: BudgetBook
    shared: RedisState
    principal: str | None
    model: str | None
    micros: int | None
    tokens: int
    accounts: list[Account]
    call: Reserve
    reservation: Reservation = field(default_factory=Reservation)
    sent: bool = False

    async def send(self) -> None:
        if self.sent:
            return
        try:
            answer = await self.shared.reserve(self.call)
        except StateUnavailable:
            self.unavailable()
            return
        self.resolve(answer)

    def resolve(self, answer: Reserved) -> None:
        self.sent = True
        denied, totals, rid = answer
        for account, counted in zip(self.accounts, totals, strict=True):
            _mirror(account, counted)
        micros = self.micros or 0
        if denied:
            account = self.accounts[denied - 1]
            if account.rule.limit_micros is not None and (
                    account.spent_micros + account.reserved_micros + micros > account.rule.limit_micros):
                raise self.book._exceeded(account, usd(micros))
            raise self.book._exceeded(account, f"{self.tokens} tokens")
        self.reservation.holds[:] = [(a, micros, self.tokens) for a in self.accounts]
        self.reservation.shared_id = rid

    def unavailable(self) -> None:
        self.sent = True
        if not self.shared.local:
            raise StateUnavailable()
        self.reservation.holds[:] = self.book.reserve(self.principal, self.model, self.micros, self.tokens).holds


def usd(micros: int) -> str:
    """`$5.00`, `$0.0005`, `$0.000403`: as many decimals as the amount needs, at least two."""
    whole, frac = f"{micros / MICROS:.6f}".split(".")
    return f"${whole}.{frac.rstrip('0').ljust(2, '0')}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The period containing `now` (aware, in the budget's timezone): [start, end). Arithmetic on
    aware datetimes is wall-clock arithmetic, so periods start at local midnight across DST changes."""
    if period == "total":
        return datetime(1970, 1, 1, tzinfo=UTC), None
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return midnight, midnight + timedelta(days=1)
    if period == "week":
        start = midnight - timedelta(days=now.weekday())
        return start, start + timedelta(days=7)
    start = midnight.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def rules_from_config(config: Config) -> list[BudgetRule]:
    """`[limits]` (global), each `[[keys]]` and each `[[budgets]]` with a limit, as rules."""
    def micros(usd: float | None) -> int | None:
        return None if usd is None else round(usd * MICROS)

    rules = []
    limits = config.limits
    if limits.budget_usd is not None or limits.budget_tokens is not None:
        rules.append(BudgetRule(None, None, micros(limits.budget_usd), limits.budget_tokens, limits.budget_period))
    for key in config.keys:
        if key.budget_usd is not None or key.budget_tokens is not None:
            rules.append(BudgetRule(key.name, None, micros(key.budget_usd), key.budget_tokens, key.budget_period))
    for budget in config.budgets:
        rules.append(BudgetRule(budget.key, budget.model, micros(budget.budget_usd), budget.budget_tokens,
                                budget.budget_period))
    return rules


class BudgetBook:
    """All accounts, created on first use and rolled over at period boundaries."""

    def __init__(self, rules: list[BudgetRule], clock: Clock, timezone: str = "UTC",
                 soft_threshold: float = 0.8) -> None:
        self.rules, self.clock, self.tz, self.soft_threshold = rules, clock, ZoneInfo(timezone), soft_threshold
        self._accounts: dict[tuple[int, str], Account] = {}
        self.shared: RedisState | None = None  # set by the app with `[state] url`

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), self.tz)

    def accounts(self, principal: str | None, model: str | None) -> list[Account]:
        """The accounts that apply to a request, in the current period."""
        return [self._live(index, rule.scope(principal)) for index, rule in enumerate(self.rules)
                if rule.matches(principal, model)]

    def headroom(self, principal: str | None, model: str | None) -> tuple[int | None, int | None] | None:
        """What the budgets that apply could still pay for: (micro-dollars, tokens), the least left in any
        of them (None where none limits it); None when no budget applies at all."""
        accounts = self.accounts(principal, model)
        if not accounts:
            return None
        micros = [a.rule.limit_micros - a.spent_micros - a.reserved_micros for a in accounts
                  if a.rule.limit_micros is not None]
        tokens = [a.rule.limit_tokens - a.spent_tokens - a.reserved_tokens for a in accounts
                  if a.rule.limit_tokens is not None]
        return (max(min(micros), 0) if micros else None, max(min(tokens), 0) if tokens else None)

    def _live(self, index: int, scope: str) -> Account:
        """The account of rule `index` for `scope` in the current period (rolled over if it ended)."""
        account = self._accounts.get((index, scope))
        now = self._now()
        if account is None or (account.end is not None and now >= account.end):
            start, end = period_bounds(self.rules[index].period, now)
            reserved = (account.reserved_micros, account.reserved_tokens) if account else (0, 0)
            account = Account(self.rules[index], index, scope, start, end, reserved_micros=reserved[0],
                              reserved_tokens=reserved[1])
            self._accounts[(index, scope)] = account
        return account

    def _priced(self, accounts: list[Account], model: str | None, micros: int | None) -> None:
        for account in accounts:
            if account.rule.limit_micros is not None and micros is None:
                raise InvalidRequest(
                    f"No price is known for model '{model}', so the budget '{account.scope}' cannot be "
                    f"enforced. Add a [prices.\"{model}\"] table to the gateway's config.toml.",
                    param="model", code="unknown_model_price")

    def claim(self, principal: str | None, model: str | None, micros: int | None, tokens: int,
              ttl_s: float | None = None) -> Claim | None:
        """`admit`'s reservation in the shared state, prepared but not sent (`Claim.send`, or along with a
        rate-limit admission). None when there is nothing to reserve there (no shared state, or no budget
        applies): `reserve` then. An unpriced model on a budget raises at once, as `reserve` does."""
        if self.shared is None or not self.rules:
            return None
        accounts = self.accounts(principal, model)
        if not accounts:
            return None
        self._priced(accounts, model, micros)
        now = self.clock.wall()
        limits = [(-1 if a.rule.limit_micros is None else a.rule.limit_micros,
                   -1 if a.rule.limit_tokens is None else a.rule.limit_tokens, _keep(a, now)) for a in accounts]
        call = self.shared.prepare_reserve([_name(a) for a in accounts], limits, micros or 0, tokens, now, ttl_s)
        return Claim(self, self.shared, principal, model, micros, tokens, accounts, call)

    async def admit(self, principal: str | None, model: str | None, micros: int | None, tokens: int,
                    ttl_s: float | None = None) -> Reservation:
        """`reserve`, in the shared state when there is one (one atomic round trip; a reservation of a
        process that dies expires after `ttl_s`, by default `[state] reservation_ttl_s`). Redis away:
        `StateUnavailable` (503), or this book alone with `on_unavailable = "local"`."""
        claim = self.claim(principal, model, micros, tokens, ttl_s)
        if claim is None:
            return self.reserve(principal, model, micros, tokens)
        await claim.send()
        return claim.reservation

    async def asettle(self, reservation: Reservation, micros: int, tokens: int) -> None:
        """`settle`, in the shared state when there is one: a reservation made there is replaced by the
        real cost in one round trip; spend settled by this book alone (Redis was away) is added to it.
        Never lost: while Redis is away, the shared state keeps it until Redis is back."""
        shared, holds, rid = self.shared, list(reservation.holds), reservation.shared_id
        if shared is None or not holds:
            self._settle_local(reservation, micros, tokens)
            return
        live = [self._live(account.index, account.scope) for account, _, _ in holds]
        now = self.clock.wall()
        totals = await shared.settle(rid or "", [_name(a) for a, _, _ in holds],
                                     [(_name(a), _keep(a, now)) for a in live], micros, tokens)
        if totals is None or rid is None:
            self._settle_local(reservation, micros, tokens)  # the mirror, until Redis says more
        else:
            reservation.holds.clear()
            for account, counted in zip(live, totals, strict=True):
                _mirror(account, counted)
                self._check_soft(account)

    async def seed_shared(self) -> None:
        """Offer this book's spend (from the ledger at start; what Redis last said when it comes back) to
        the shared state, which keeps the larger of it and its own counter; then mirror what it holds."""
        if self.shared is None:
            return
        for account in list(self._accounts.values()):
            live = self._live(account.index, account.scope)
            _mirror(live, await self.shared.seed(_name(live), live.spent_micros, live.spent_tokens,
                                                      _keep(live, self.clock.wall())))

    def reserve(self, principal: str | None, model: str | None, micros: int | None, tokens: int) -> Reservation:
        """Check every applicable budget, then hold the amounts in all of them: all or nothing, with no
        await in between, so no other request can slip into the gap."""
        accounts = self.accounts(principal, model)
        self._priced(accounts, model, micros)
        for account in accounts:
            rule = account.rule
            if rule.limit_micros is not None:
                assert micros is not None
                if account.spent_micros + account.reserved_micros + micros > rule.limit_micros:
                    raise self._exceeded(account, usd(micros))
            if (rule.limit_tokens is not None
                    and account.spent_tokens + account.reserved_tokens + tokens > rule.limit_tokens):
                raise self._exceeded(account, f"{tokens} tokens")
        reservation = Reservation([(a, micros or 0, tokens) for a in accounts])
        for account, m, t in reservation.holds:
            account.reserved_micros += m
            account.reserved_tokens += t
        return reservation

    def reserve_unchecked(self, principal: str | None, model: str | None, micros: int = 0,
                          tokens: int = 0) -> Reservation:
        """Hold amounts already committed (a batch running across a restart), whatever the budgets say."""
        reservation = Reservation([(a, micros, tokens) for a in self.accounts(principal, model)])
        for account, m, t in reservation.holds:
            account.reserved_micros += m
            account.reserved_tokens += t
        return reservation

    def settle(self, reservation: Reservation, micros: int, tokens: int) -> asyncio.Future[Any] | None:
        """Replace the held amounts by what the request really cost: at once here, or in the shared
        state in the background (then its task is returned, for an answer that waits for it)."""
        if self.shared is not None and reservation.holds:
            return self.shared.spawn(self.asettle(reservation, micros, tokens))
        self._settle_local(reservation, micros, tokens)
        return None

    def _settle_local(self, reservation: Reservation, micros: int, tokens: int) -> None:
        for account, m, t in reservation.holds:
            live = self._live(account.index, account.scope)
            live.reserved_micros -= m
            live.reserved_tokens -= t
            live.spent_micros += micros
            live.spent_tokens += tokens
            self._check_soft(live)
        reservation.holds.clear()

    def _check_soft(self, account: Account) -> None:
        limit = account.rule.limit_micros
        if account.warned or not limit:
            return
        if account.spent_micros >= self.soft_threshold * limit:
            account.warned = True
            log.warning("budget %s (%s) is at %.0f%% of its %s limit", account.scope, account.rule.period,
                        100 * account.spent_micros / limit, usd(limit))

    def _exceeded(self, account: Account, needed: str) -> BudgetExceeded:
        limit = account.rule.limit_micros
        resets = f" It resets at {_iso(account.end)}." if account.end else " It never resets (period 'total')."
        if limit is not None:
            what = (f"limit {usd(limit)}, spent {usd(account.spent_micros)}, "
                    f"reserved by requests in flight {usd(account.reserved_micros)}")
        else:
            what = (f"limit {account.rule.limit_tokens} tokens, spent {account.spent_tokens}, "
                    f"reserved {account.reserved_tokens}")
        return BudgetExceeded(
            f"Budget exceeded for {account.scope} ({account.rule.period}): {what}; this request may need up to "
            f"{needed}.{resets}",
            headers={"x-should-retry": "false"},
            scope=account.scope, period=account.rule.period,
            limit_usd=None if limit is None else round(limit / MICROS, 6),
            spent_usd=round(account.spent_micros / MICROS, 6),
            limit_tokens=account.rule.limit_tokens, spent_tokens=account.spent_tokens,
            reset_at=_iso(account.end) if account.end else None,
        )

    def load_ledger(self, path: str, aliases: Mapping[str, str] | None = None) -> int:
        """Add the current periods' spend from the ledger (once at start, off the event loop).

        `model_requested` is what the client sent; `aliases` (resolved) turns an alias back into the
        model its budget was charged to."""
        if not self.rules:
            return 0
        earliest = min(period_bounds(r.period, self._now())[0] for r in self.rules)
        columns = {row[1] for row in read_rows(path, "PRAGMA table_info(requests)")}
        # a fallback's row was charged to the model that answered, not the one requested
        model = ("CASE WHEN fallback_from IS NULL THEN COALESCE(model_requested, model_served) "
                 "ELSE COALESCE(model_served, model_requested) END" if "fallback_from" in columns
                 else "COALESCE(model_requested, model_served)")
        rows = read_rows(
            path,
            f"SELECT key_name, {model}, started_at, cost_microusd, "
            "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) FROM requests "
            f"WHERE started_at >= ? AND {CHARGED_ROWS} ORDER BY started_at, id",  # callers in first-seen order
            (_iso(earliest), *CHARGED_PARAMS),
        )
        for key_name, model, started_at, cost, tokens in rows:
            if aliases and model in aliases:
                model = aliases[model]
            started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
            for account in self.accounts(key_name, model):
                if started >= account.start:
                    account.spent_micros += cost or 0
                    account.spent_tokens += tokens or 0
        return len(rows)

    def status(self, principal: str | None = None, own_only: bool = False) -> list[dict[str, Any]]:
        """The caller's budgets (every rule that can apply to `principal`; with `own_only`, only those
        naming it: its key, or `key = "*"`); without one, every budget: each fixed scope, and each caller
        a per-caller (`key = "*"`) budget has seen."""
        if principal is None:
            for index, rule in enumerate(self.rules):
                if rule.key != "*":
                    self._live(index, rule.scope(rule.key))
            return [self._live(i, scope).status() for (i, scope) in list(self._accounts)]
        return [self._live(index, rule.scope(principal)).status() for index, rule in enumerate(self.rules)
                if rule.key in (("*", principal) if own_only else (None, "*", principal))]


_HELD = Slot[Reservation]("budget")  # the worst case reserved, until settled


def _name(account: Account) -> str:
    """An account's name in the shared state: period, scope and the period's start."""
    return f"{account.rule.period}|{account.scope}|{int(account.start.timestamp())}"


def _keep(account: Account, now: float) -> int:
    """How long an account's shared keys live, in seconds (a day past its period's end); 0: forever."""
    return 0 if account.end is None else max(int(account.end.timestamp() + 86400 - now), 1)


def _mirror(account: Account, totals: Totals) -> None:
    account.spent_micros, account.spent_tokens, account.reserved_micros, account.reserved_tokens = totals


class Budget(Stage):
    """Reserves before forwarding, settles after."""

    def __init__(self, book: BudgetBook, prices: PriceTable, pending: Any = None, models: Any = None,
                 along: bool = False) -> None:
        self.book, self.prices = book, prices
        # a `RateLimit` stage follows and sends a shared reservation with its admission (one round trip)
        self.along = along
        self.pending = pending  # `pending.PendingResponses`: holds a background response's reservation
        self.models = models  # `models.UpstreamModels`: tells an unpriced model from one never served

    def budgeted(self, ex: Exchange) -> tuple[bool, int | None]:
        """Whether a budget applies to `ex`, and the most prompt tokens it could still pay for."""
        from .estimate import prompt_bound

        headroom = self.book.headroom(ex.principal, ex.model) if self.book.rules else None
        if headroom is None:
            return False, None
        return True, prompt_bound(self.prices, ex.model, headroom)

    async def request(self, ex: Exchange) -> None:
        if ex.estimate is None or not self.book.rules:
            return
        worst = Usage(ex.estimate.prompt, ex.estimate.completion)
        micros = self.prices.cost_micros(ex.model, worst)
        try:
            claim = self.book.claim(ex.principal, ex.model, micros, worst.total) if self.along else None
            if claim is not None:  # reserved in the shared state by the rate-limit stage's admission
                ex.state.set(_HELD, claim.reservation)
                ex.state.set(ALONG, claim)
            else:
                ex.state.set(_HELD, await self.book.admit(ex.principal, ex.model, micros, worst.total))
        except InvalidRequest as exc:
            if exc.code == "unknown_model_price" and ex.model and ex.target is not None and self.models:
                from .models import model_not_found

                if await self.models.serves(ex, ex.target.upstream, ex.model) is False:
                    raise model_not_found(ex.model) from None
            raise

    async def move(self, ex: Exchange) -> None:
        """A request moving to another model (a fallback): its reservation is given back and taken again
        for the new model, refused (raises) when the budgets cannot pay for it."""
        reservation = ex.state.pop(_HELD)
        if reservation is not None:
            self.book.settle(reservation, 0, 0)
        await self.request(ex)

    async def finish(self, ex: Exchange) -> None:
        reservation = ex.state.pop(_HELD)
        if ex.settle_later and self.pending is not None:
            self.pending.hold(ex, reservation)  # charged when it ends
            return
        if reservation is None:
            return
        tokens = ex.usage.total if ex.usage is not None else 0
        # shared: in the background, pipelined with the other finish hooks' calls (one round trip); the
        # answer waits for it as for its ledger row, so a client that has its answer sees its spend
        settling = self.book.settle(reservation, ex.cost_micros or 0, tokens)
        if settling is not None:
            ex.answer_waits_for.append(settling)
