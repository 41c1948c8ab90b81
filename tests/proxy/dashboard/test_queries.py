"""The dashboard's read side (`proxy/db/queries.py`): the same sums as `oaigate spend`, from SQL and from
the hourly rollup alike, and request pages that neither skip nor repeat a row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.db import queries
from proxy.db.queries import Filter, Rollup
from proxy.db.reports import open_readonly, spend_by, spend_total
from proxy.db.schema import connect

from .seed import insert, make_rows, seed

NOW = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    seed(tmp_path / "ledger.db", rows=400, days=5, now=NOW)
    conn = open_readonly(tmp_path / "ledger.db")
    yield conn
    conn.close()


WINDOWS = [(None, None), (NOW - timedelta(days=2), None), (NOW - timedelta(hours=30, minutes=17), NOW),
           (NOW - timedelta(days=3, minutes=1), NOW - timedelta(days=1, hours=2, seconds=5))]


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_totals_and_groups_are_those_of_oaigate_spend(ledger: sqlite3.Connection, since: datetime | None,
                                                      until: datetime | None) -> None:
    where = Filter(since, until)
    expected_total = spend_total(ledger, since, until)
    assert queries.total(ledger, where) == expected_total
    found = Rollup().cells(ledger, where, NOW)
    assert queries.total_of(found) == expected_total
    for by in ("model", "key", "endpoint"):
        expected = {row.group: row for row in spend_by(ledger, by, since, until)}  # type: ignore[arg-type]
        assert {g: row for g, _, row in queries.grouped(ledger, where, by)} == expected  # type: ignore[arg-type]
        assert {g: row for g, _, row in queries.grouped_of(found, by)} == expected  # type: ignore[arg-type]
    by_day = {f"{row.group}T00:00:00Z": row for row in spend_by(ledger, "day", since, until)}
    assert {g: SpendRowWithout(row) for g, _, row in queries.grouped_of(found, "day")} == \
        {g: SpendRowWithout(row) for g, row in by_day.items()}


def SpendRowWithout(row: queries.SpendRow) -> tuple[object, ...]:  # noqa: N802 - a row minus its group name
    return tuple(getattr(row, f) for f in row.__slots__ if f != "group")  # type: ignore[attr-defined]


def test_an_unpriced_model_costs_unknown_never_zero(ledger: sqlite3.Connection) -> None:
    rows = {g: row for g, _, row in queries.grouped(ledger, Filter(), "model")}
    assert rows["my-llama"].cost_microusd is None and rows["my-llama"].unpriced_requests > 0
    assert rows["my-llama"].cost_usd is None
    page, _ = queries.page(ledger, Filter(model="my-llama", status="2xx"), 5)
    assert page and all(row["cost_usd"] is None for row in page)
    failed, _ = queries.page(ledger, Filter(status="error"), 5)
    assert failed and all(row["cost_usd"] == "0.000000" for row in failed)  # nothing was billable


def test_simulated_rows_are_not_spend(ledger: sqlite3.Connection) -> None:
    total = queries.total(ledger, Filter())
    real = ledger.execute("SELECT SUM(cost_microusd) FROM requests WHERE NOT simulated").fetchone()[0]
    simulated = ledger.execute("SELECT SUM(replayed_cost_microusd) FROM requests WHERE simulated").fetchone()[0]
    assert simulated > 0 and total.cost_microusd == real and total.simulated_microusd == simulated


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.sampled_from([None, "model", "key", "endpoint"]), by=st.sampled_from(["hour", "day"]),
       start=st.integers(0, 5 * 24 * 60), length=st.integers(1, 5 * 24 * 60),
       key=st.sampled_from([None, "ci", "alice", "nobody"]), open_end=st.booleans(),
       max_cells=st.sampled_from([400_000, 300, 5]))
def test_the_rollup_answers_what_sql_answers(ledger: sqlite3.Connection, split: str | None, by: str, start: int,
                                              length: int, key: str | None, open_end: bool, max_cells: int) -> None:
    since = NOW - timedelta(days=5, minutes=-start)
    where = Filter(None if open_end else since, since + timedelta(minutes=length), key=key)
    rollup = Rollup(max_cells=max_cells)  # a small one keeps only the latest hours: the table answers the rest
    found = rollup.cells(ledger, where, NOW)
    expected = queries.grouped(ledger, where, by, split)  # type: ignore[arg-type]
    assert queries.grouped_of(found, by, split) == expected  # type: ignore[arg-type]
    assert queries.total_of(found) == queries.total(ledger, where)
    assert queries.spend_of(found, by, split) == (expected, queries.total(ledger, where))  # type: ignore[arg-type]


@pytest.mark.parametrize("max_cells", [400_000, 100])
def test_the_rollup_catches_up_with_new_replaced_and_pruned_rows(tmp_path: Path, max_cells: int) -> None:
    path = tmp_path / "ledger.db"
    seed(path, rows=200, days=3, now=NOW)
    writer = connect(str(path))
    reader = open_readonly(path)
    rollup = Rollup(max_cells=max_cells)
    later = NOW + timedelta(hours=3)  # the seeded hours are all closed now

    def check() -> None:
        assert queries.total_of(rollup.cells(reader, Filter(), later)) == queries.total(reader, Filter())
        assert queries.grouped_of(rollup.cells(reader, Filter(), later), "hour") == \
            queries.grouped(reader, Filter(), "hour")

    check()
    old = writer.execute("SELECT id, started_at FROM requests WHERE cost_microusd > 0 ORDER BY started_at").fetchone()
    # a background response settled hours later: its row is written again with its cost
    writer.execute("INSERT OR REPLACE INTO requests (id, started_at, endpoint, status, cost_microusd, simulated) "
                   "VALUES (?, ?, '/v1/responses', 200, 999999, 0)", old)
    check()
    # a long request that started in a closed hour, written late
    insert(writer, make_rows(3, 1, NOW - timedelta(hours=20), seed=99))
    check()
    writer.execute("DELETE FROM requests WHERE started_at < ?", [(NOW - timedelta(days=2)).strftime("%Y-%m-%d")])
    check()
    check()  # the clock moves on: the hours between are filled in
    later += timedelta(hours=5)
    insert(writer, make_rows(20, 0.2, later, seed=5))
    check()
    reader.close()
    writer.close()


def test_pages_cover_every_row_once_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    rows = make_rows(120, 1, NOW)
    for row in rows[:40]:  # many rows starting at the same millisecond: the cursor breaks ties by id
        row["started_at"] = "2026-11-23T10:00:00.000Z"
    conn = connect(str(path))
    insert(conn, rows)
    conn.close()
    reader = open_readonly(path)
    seen: list[dict[str, object]] = []
    cursor = None
    while True:
        page, cursor = queries.page(reader, Filter(), 7, cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == 120 and len({row["id"] for row in seen}) == 120
    order = [(row["started_at"], row["id"]) for row in seen]
    assert order == sorted(order, reverse=True)
    assert "request_body" not in seen[0] and "cost_usd" in seen[0]
    keyed, _ = queries.page(reader, Filter(key="alice", status="2xx"), 500)
    assert keyed and all(r["key_name"] == "alice" and 200 <= r["status"] < 300 for r in keyed)  # type: ignore[operator]
    reader.close()


def test_a_bad_cursor_is_refused() -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        queries.decode_cursor("nonsense")
