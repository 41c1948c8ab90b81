"""Budgets: scopes, periods with a controlled clock, the all-or-nothing reservation, restarts."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clock import ManualClock
from proxy.config import Config
from proxy.db.schema import connect
from proxy.errors import InvalidRequest
from proxy.stages.budget import BudgetBook, BudgetExceeded, BudgetRule, period_bounds, rules_from_config

DAY = 86_400
MONDAY_NOON = 1_767_614_400.0  # 2026-01-05T12:00:00Z, a Monday


def book(*rules: BudgetRule, clock: ManualClock | None = None, timezone: str = "UTC") -> BudgetBook:
    return BudgetBook(list(rules), clock or ManualClock(MONDAY_NOON), timezone)


def test_scopes_key_model_key_and_model_global() -> None:
    b = book(BudgetRule(None, None, 100, None, "day"), BudgetRule("ci", None, 50, None, "day"),
             BudgetRule(None, "gpt-4o*", 30, None, "day"), BudgetRule("ci", "gpt-4o", 20, None, "day"),
             BudgetRule("*", None, 40, None, "day"))
    names = [a.scope for a in b.accounts("ci", "gpt-4o")]
    assert names == ["global", "key:ci", "model:gpt-4o*", "key:ci model:gpt-4o", "key:ci"]
    assert [a.scope for a in b.accounts("dev", "gpt-3.5-turbo")] == ["global", "key:dev"]
    b.reserve("ci", "gpt-4o", 20, 0)
    with pytest.raises(BudgetExceeded) as caught:
        b.reserve("ci", "gpt-4o", 1, 0)
    assert caught.value.extra["scope"] == "key:ci model:gpt-4o"
    b.reserve("ci", "gpt-4o-mini", 10, 0)  # the glob scope now holds 30
    with pytest.raises(BudgetExceeded, match="model:gpt-4o\\*"):
        b.reserve("dev", "gpt-4o-mini", 1, 0)


def test_rejection_is_all_or_nothing_and_says_everything() -> None:
    b = book(BudgetRule(None, None, 1_000_000, None, "day"), BudgetRule("ci", None, 5_000_000, None, "day"))
    b.reserve("ci", "m", 900_000, 0)
    with pytest.raises(BudgetExceeded) as caught:
        b.reserve("ci", "m", 200_000, 0)
    error = caught.value
    assert error.status == 429 and error.type == "insufficient_quota" and error.code == "budget_exceeded"
    assert error.headers == {"x-should-retry": "false"}
    assert error.extra == {"scope": "global", "period": "day", "limit_usd": 1.0, "spent_usd": 0.0,
                           "limit_tokens": None, "spent_tokens": 0, "reset_at": "2026-01-06T00:00:00Z"}
    assert "limit $1.00" in error.message and "resets at 2026-01-06T00:00:00Z" in error.message
    assert [a.reserved_micros for a in b.accounts("ci", "m")] == [900_000, 900_000]  # nothing half-held


def test_settle_replaces_the_reservation_by_the_real_cost() -> None:
    b = book(BudgetRule("ci", None, 1_000, 100, "day"))
    held = b.reserve("ci", "m", 800, 90)
    b.settle(held, 300, 40)
    (account,) = b.accounts("ci", "m")
    assert (account.spent_micros, account.reserved_micros, account.spent_tokens, account.reserved_tokens) == \
        (300, 0, 40, 0)
    with pytest.raises(BudgetExceeded, match="61 tokens"):
        b.reserve("ci", "m", 1, 61)


@pytest.mark.parametrize(("period", "start", "end"), [
    ("day", "2026-01-05T00:00:00+00:00", "2026-01-06T00:00:00+00:00"),
    ("week", "2026-01-05T00:00:00+00:00", "2026-01-12T00:00:00+00:00"),
    ("month", "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"),
])
def test_periods_reset_at_utc_boundaries(period: str, start: str, end: str) -> None:
    clock = ManualClock(MONDAY_NOON)
    b = book(BudgetRule(None, None, 10, None, period), clock=clock)
    (account,) = b.accounts("k", "m")
    assert (account.start.isoformat(), account.end.isoformat()) == (start, end)
    b.settle(b.reserve("k", "m", 10, 0), 10, 0)
    with pytest.raises(BudgetExceeded):
        b.reserve("k", "m", 1, 0)
    clock.advance(account.end.timestamp() - clock.wall() - 1)
    with pytest.raises(BudgetExceeded):
        b.reserve("k", "m", 1, 0)
    clock.advance(1)
    b.reserve("k", "m", 10, 0)


def test_total_never_resets_and_timezone_moves_midnight() -> None:
    clock = ManualClock(MONDAY_NOON)
    b = book(BudgetRule(None, None, 10, None, "total"), clock=clock)
    b.settle(b.reserve("k", "m", 10, 0), 10, 0)
    clock.advance(400 * DAY)
    with pytest.raises(BudgetExceeded, match="never resets"):
        b.reserve("k", "m", 1, 0)
    (account,) = book(BudgetRule(None, None, 1, None, "day"), timezone="America/New_York").accounts("k", "m")
    assert account.start.isoformat() == "2026-01-05T00:00:00-05:00"


def test_unknown_price_refuses_rather_than_failing_open() -> None:
    b = book(BudgetRule(None, None, 10, None, "day"))
    with pytest.raises(InvalidRequest, match="No price is known"):
        b.reserve("k", "mystery", None, 5)
    book(BudgetRule(None, None, None, 100, "day")).reserve("k", "mystery", None, 5)  # tokens need no price


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "settle"]), st.integers(1, 400), st.floats(0, 1)),
                max_size=200))
def test_random_schedules_never_overspend(steps: list[tuple[str, int, float]]) -> None:
    """Any interleaving of reservations and settlements whose real cost is at most its worst case."""
    limit = 5_000
    b = book(BudgetRule(None, None, limit, None, "day"), BudgetRule("ci", "m*", limit // 2, None, "day"))
    held = []
    for action, amount, share in steps:
        if action == "reserve":
            with contextlib.suppress(BudgetExceeded):
                held.append((b.reserve("ci", "model", amount, 0), amount))
        elif held:
            reservation, worst = held.pop(int(share * (len(held) - 1)))
            b.settle(reservation, int(worst * share), 0)
        for account in b.accounts("ci", "model"):
            assert account.spent_micros + account.reserved_micros <= account.rule.limit_micros


def test_spend_is_rebuilt_from_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = connect(str(path))
    rows = [("a", "2026-01-05T01:00:00.000Z", "ci", "gpt-4o", 700), ("b", "2026-01-04T23:59:59.999Z", "ci",
                                                                     "gpt-4o", 999),
            ("c", "2026-01-05T02:00:00.000Z", "dev", "gpt-4o", 50)]
    conn.executemany("INSERT INTO requests (id, started_at, key_name, model_requested, cost_microusd, method, "
                     "endpoint, status, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, 'POST', "
                     "'/v1/chat/completions', 200, 3, 4)", rows)
    # a GET of a stored object priced by an older gateway: not charged again
    conn.execute("INSERT INTO requests (id, started_at, key_name, model_requested, cost_microusd, method, endpoint, "
                 "status, prompt_tokens, completion_tokens) VALUES ('d', '2026-01-05T03:00:00.000Z', 'ci', 'gpt-4o', "
                 "5000, 'GET', '/v1/responses/resp_1', 200, 3, 4)")
    conn.close()
    b = book(BudgetRule("ci", None, 1_000, None, "day"), BudgetRule(None, None, 10_000, None, "total"))
    assert b.load_ledger(str(path)) == 3  # the rows charged
    by_scope = {s["scope"]: s for s in b.status("ci")}
    assert by_scope["key:ci"]["spent_usd"] == "0.000700"
    assert by_scope["global"]["spent_usd"] == "0.001749"
    assert by_scope["global"]["spent_tokens"] == 21
    with pytest.raises(BudgetExceeded):
        b.reserve("ci", "gpt-4o", 301, 0)
    assert book(BudgetRule(None, None, 1, None, "day")).load_ledger(str(tmp_path / "absent.db")) == 0


def test_rules_from_config() -> None:
    config = Config.model_validate({
        "limits": {"budget_usd": 10, "budget_period": "month"},
        "keys": [{"name": "ci", "key": "k", "budget_usd": 5}, {"name": "dev", "key": "d"}],
        "budgets": [{"model": "gpt-4o*", "budget_tokens": 1000, "budget_period": "week"}],
    })
    assert rules_from_config(config) == [
        BudgetRule(None, None, 10_000_000, None, "month"), BudgetRule("ci", None, 5_000_000, None, "day"),
        BudgetRule(None, "gpt-4o*", None, 1000, "week")]


def test_period_bounds_month_end() -> None:
    from datetime import UTC, datetime

    start, end = period_bounds("month", datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert (start.isoformat(), end.isoformat()) == ("2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00")


def test_headroom_is_the_least_left_in_any_budget_that_applies() -> None:
    b = book(BudgetRule("ci", None, 1_000, None, "day"), BudgetRule(None, "gpt-4o*", 600, 50, "day"))
    assert b.headroom("ci", "gpt-4o-mini") == (600, 50)
    b.reserve("ci", "gpt-4o-mini", 550, 10)
    assert b.headroom("ci", "gpt-4o-mini") == (50, 40)
    assert b.headroom("ci", "o3") == (450, None)
    assert b.headroom("dev", "o3") is None  # no budget applies
    held = b.reserve_unchecked("ci", "gpt-4o-mini", 5_000, 0)  # a batch running across a restart
    assert b.headroom("ci", "gpt-4o-mini") == (0, 40)
    b.settle(held, 0, 0)
    assert b.headroom("ci", "gpt-4o-mini") == (50, 40)


def test_answers_multiply_every_output_billed() -> None:
    from proxy.stages.estimate import answers

    assert answers("/v1/completions", {"prompt": ["a"] * 100, "n": 2, "best_of": 3}) == 300
    assert answers("/v1/completions", {"prompt": [[1, 2], [3]], "n": 2}) == 4
    assert answers("/v1/completions", {"prompt": [1, 2, 3]}) == 1  # one prompt as a token array
    assert answers("/v1/chat/completions", {"n": 4, "best_of": 9}) == 4


def test_batch_prices_and_context_windows() -> None:
    from decimal import Decimal

    from proxy.wire.pricing import PriceOverride, PriceTable
    from proxy.wire.usage import Usage

    table = PriceTable({"house": PriceOverride(Decimal(2), Decimal(8))})
    usage = Usage(1_000_000, 1_000_000)
    assert table.cost_micros("house", usage, batch=True) * 2 == table.cost_micros("house", usage) == 10_000_000
    assert table.cost_micros("gpt-4o-mini", usage, batch=True) * 2 == table.cost_micros("gpt-4o-mini", usage)
    assert table.context_window("gpt-4o-mini") == 128_000 and table.context_window("house") is None
