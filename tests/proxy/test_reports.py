"""The ledger's read side: spend queries (exact integer sums), time windows, info and prune."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from proxy.db.prune import prune
from proxy.db.reports import (
    LedgerError,
    SpendRow,
    format_usd,
    ledger_info,
    ledger_time,
    open_readonly,
    parse_time,
    spend_by,
    spend_total,
)
from proxy.db.schema import COLUMNS, SCHEMA_VERSION, connect
from proxy.db.writer import LedgerWriter

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

_FIELDS = ("id", "started_at", "key_name", "method", "endpoint", "model_requested", "model_served", "status",
           "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "usage_source", "cost_microusd")
_CHAT, _NO_USAGE = "/v1/chat/completions", (None,) * 6

# id, started_at, key, method, endpoint, model requested, model served, status,
# prompt, completion, cached, reasoning, usage_source, cost
SAMPLE: list[tuple[Any, ...]] = [
    ("r1", "2026-11-20T09:00:00.000Z", "ci", "POST", _CHAT, "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 200,
     1200, 300, 100, 0, "reported", 450),
    ("r2", "2026-11-21T10:00:00.000Z", "ci", "POST", _CHAT, "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 200,
     800, 200, 0, 0, "reported", 300),
    ("r3", "2026-11-21T23:59:59.999Z", "alice", "POST", "/v1/responses", "o4-mini", "o4-mini", 200,
     500, 900, 0, 600, "reported", 4510),
    ("r4", "2026-11-22T00:00:00.000Z", "alice", "POST", _CHAT, "my-llama", None, 200,
     100, 50, 0, 0, "reported", None),
    ("r5", "2026-11-22T13:00:00.000Z", "bob", "POST", "/v1/embeddings", "text-embedding-3-small",
     "text-embedding-3-small", 200, 2000, 0, 0, 0, "estimated", 40),
    ("r6", "2026-11-23T08:00:00.000Z", "bob", "POST", _CHAT, "gpt-4o-mini", None, 429, *_NO_USAGE),
    ("r7", "2026-11-23T09:00:00.000Z", "ci", "POST", _CHAT, "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 200,
     3000, 1000, 0, 0, "estimated", 1_234_567),
    ("r8", "2026-11-23T09:30:00.000Z", None, "GET", "/v1/models", None, None, 200, *_NO_USAGE),
    ("r9", "2026-11-23T10:00:00.000Z", "alice", "POST", _CHAT, "gpt-4o-mini", None, 0, *_NO_USAGE),
]

# group: requests, errors, prompt, completion, cached, reasoning, cost_microusd, unpriced, estimated
TOTAL = (9, 2, 7600, 2450, 100, 600, 1_239_867, 1, 2)
EXPECTED: dict[str, dict[str | None, tuple[int | None, ...]]] = {
    "model": {
        "gpt-4o-mini-2024-07-18": (3, 0, 5000, 1500, 100, 0, 1_235_317, 0, 1),
        "o4-mini": (1, 0, 500, 900, 0, 600, 4510, 0, 0),
        "text-embedding-3-small": (1, 0, 2000, 0, 0, 0, 40, 0, 1),
        "gpt-4o-mini": (2, 2, 0, 0, 0, 0, 0, 0, 0),
        "my-llama": (1, 0, 100, 50, 0, 0, None, 1, 0),
        None: (1, 0, 0, 0, 0, 0, 0, 0, 0),
    },
    "day": {
        "2026-11-20": (1, 0, 1200, 300, 100, 0, 450, 0, 0),
        "2026-11-21": (2, 0, 1300, 1100, 0, 600, 4810, 0, 0),
        "2026-11-22": (2, 0, 2100, 50, 0, 0, 40, 1, 1),
        "2026-11-23": (4, 2, 3000, 1000, 0, 0, 1_234_567, 0, 1),
    },
    "key": {
        "ci": (3, 0, 5000, 1500, 100, 0, 1_235_317, 0, 1),
        "alice": (3, 1, 600, 950, 0, 600, 4510, 1, 0),
        "bob": (2, 1, 2000, 0, 0, 0, 40, 0, 1),
        None: (1, 0, 0, 0, 0, 0, 0, 0, 0),
    },
    "endpoint": {
        _CHAT: (6, 2, 5100, 1550, 100, 0, 1_235_317, 1, 1),
        "/v1/responses": (1, 0, 500, 900, 0, 600, 4510, 0, 0),
        "/v1/embeddings": (1, 0, 2000, 0, 0, 0, 40, 0, 1),
        "/v1/models": (1, 0, 0, 0, 0, 0, 0, 0, 0),
    },
}
ORDER = {
    "model": ["gpt-4o-mini-2024-07-18", "o4-mini", "text-embedding-3-small", "gpt-4o-mini", "my-llama", None],
    "day": ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23"],
    "key": ["ci", "alice", "bob", None],
    "endpoint": [_CHAT, "/v1/responses", "/v1/embeddings", "/v1/models"],
}


def build_ledger(path: Path, rows: list[tuple[Any, ...]] = SAMPLE) -> Path:
    """A migrated ledger at `path` holding `rows` (in `_FIELDS` order); the file is closed afterwards."""
    conn = connect(str(path))
    with conn:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO requests ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})",
                         rows)
    conn.close()
    return path


def numbers(row: SpendRow) -> tuple[int | None, ...]:
    """Everything in a row but its group."""
    return (row.requests, row.errors, row.prompt_tokens, row.completion_tokens, row.cached_tokens,
            row.reasoning_tokens, row.cost_microusd, row.unpriced_requests, row.estimated_requests)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return build_ledger(tmp_path / "ledger.db")


@pytest.fixture
def conn(ledger: Path) -> Iterator[sqlite3.Connection]:
    connection = open_readonly(ledger)
    yield connection
    connection.close()


def test_total_is_an_exact_integer_sum(conn: sqlite3.Connection) -> None:
    total = spend_total(conn)
    assert total.group is None
    assert numbers(total) == TOTAL
    assert isinstance(total.cost_microusd, int)
    assert total.cost_usd == "1.239867"


@pytest.mark.parametrize("by", ["model", "day", "key", "endpoint"])
def test_breakdowns(conn: sqlite3.Connection, by: str) -> None:
    rows = spend_by(conn, by)  # type: ignore[arg-type]
    assert [row.group for row in rows] == ORDER[by]
    assert {row.group: numbers(row) for row in rows} == EXPECTED[by]
    assert sum(row.requests for row in rows) == TOTAL[0]
    assert sum(row.cost_microusd or 0 for row in rows) == TOTAL[6]


def test_unknown_cost_is_none_not_zero(conn: sqlite3.Connection) -> None:
    llama = next(row for row in spend_by(conn, "model") if row.group == "my-llama")
    assert llama.cost_microusd is None and llama.cost_usd is None
    assert llama.as_dict()["cost_usd"] is None
    free = next(row for row in spend_by(conn, "endpoint") if row.group == "/v1/models")
    assert free.cost_microusd == 0 and free.unpriced_requests == 0


def test_empty_window_totals_zero(conn: sqlite3.Connection) -> None:
    since = datetime(2030, 1, 1, tzinfo=UTC)
    assert numbers(spend_total(conn, since)) == (0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert spend_by(conn, "day", since) == []


def test_window_bounds(conn: sqlite3.Connection) -> None:
    since = parse_time("2026-11-22")
    until = parse_time("2026-11-21", end_of_day=True)
    assert spend_total(conn, since).requests == 6
    assert spend_total(conn, until=until).requests == 3  # r3 at 23:59:59.999 in, r4 at midnight out
    assert [row.group for row in spend_by(conn, "day", since, parse_time("2026-11-22", end_of_day=True))] \
        == ["2026-11-22"]


@pytest.mark.parametrize(("span", "requests"), [("24h", 5), ("2h", 1), ("90m", 0), ("3d", 8), ("1w", 9)])
def test_relative_windows_follow_the_injected_clock(conn: sqlite3.Connection, span: str, requests: int) -> None:
    assert spend_total(conn, parse_time(span, NOW)).requests == requests


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-23", datetime(2026, 11, 23, tzinfo=UTC)),
    ("2026-11-23T09:15:19.900Z", datetime(2026, 11, 23, 9, 15, 19, 900_000, tzinfo=UTC)),
    ("2026-11-23T09:15", datetime(2026, 11, 23, 9, 15, tzinfo=UTC)),
    ("2026-11-23 09:15:00+02:00", datetime(2026, 11, 23, 7, 15, tzinfo=UTC)),
    ("7d", NOW - timedelta(days=7)),
    (" 24h ", NOW - timedelta(hours=24)),
    ("30m", NOW - timedelta(minutes=30)),
    ("45s", NOW - timedelta(seconds=45)),
    ("2w", NOW - timedelta(weeks=2)),
])
def test_parse_time(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected
    assert parse_time(text, NOW).tzinfo == UTC


def test_parse_time_end_of_day_and_offsets() -> None:
    assert parse_time("2026-11-30", end_of_day=True) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("2026-11-30T10:00", end_of_day=True) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    plus_one = datetime(2026, 11, 23, 13, tzinfo=timezone(timedelta(hours=1)))
    assert parse_time("7d", plus_one) == datetime(2026, 11, 16, 12, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "7", "d7", "-7d", "2026-13-01", "2026-11-31", "7 days", ""])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a date"):
        parse_time(text, NOW)


def test_ledger_time_matches_the_writer_format() -> None:
    assert ledger_time(datetime(2026, 11, 23, 9, 15, 19, 900_999, tzinfo=UTC)) == "2026-11-23T09:15:19.900Z"
    assert ledger_time(datetime(2026, 11, 23, 10, 0, tzinfo=timezone(timedelta(hours=1)))) \
        == "2026-11-23T09:00:00.000Z"


@pytest.mark.parametrize(("micros", "text"), [
    (0, "0.000000"), (1, "0.000001"), (999_999, "0.999999"), (1_000_000, "1.000000"),
    (1_234_567, "1.234567"), (10**18 + 1, "1000000000000.000001"), (-5, "-0.000005"), (None, None),
])
def test_format_usd_is_exact(micros: int | None, text: str | None) -> None:
    assert format_usd(micros) == text


def test_open_readonly_never_creates_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(LedgerError, match="no ledger at"):
        open_readonly(missing)
    assert not missing.exists()
    with pytest.raises(LedgerError, match="is a directory"):
        open_readonly(tmp_path)


def test_open_readonly_rejects_other_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("not a database, just text\n" * 200)
    with pytest.raises(LedgerError, match="not an oaigate ledger"):
        open_readonly(text)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(LedgerError, match="not an oaigate ledger"):
        open_readonly(other)


def test_connection_is_read_only(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM requests")


def test_reads_a_ledger_while_a_writer_holds_a_transaction(ledger: Path) -> None:
    writer = connect(str(ledger))
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO requests (id, started_at, endpoint, status, cost_microusd) "
                   "VALUES ('x', '2026-11-23T11:00:00.000Z', '/v1/chat/completions', 200, 7)")
    try:
        reader = open_readonly(ledger)
        assert spend_total(reader).requests == TOTAL[0]
        reader.close()
    finally:
        writer.execute("COMMIT")
        writer.close()
    reader = open_readonly(ledger)
    assert spend_total(reader).cost_microusd == TOTAL[6] + 7
    reader.close()


def test_reads_rows_from_the_real_writer(tmp_path: Path) -> None:
    path = tmp_path / "written.db"
    writer = LedgerWriter(str(path))
    writer.start()
    for row in SAMPLE:
        writer.submit(dict(zip(_FIELDS, row, strict=True)))
    writer.close()
    assert writer.written == len(SAMPLE)
    conn = open_readonly(path)
    assert numbers(spend_total(conn)) == TOTAL
    assert {row.group: numbers(row) for row in spend_by(conn, "model")} == EXPECTED["model"]
    conn.close()
    assert set(_FIELDS) <= set(COLUMNS)


def test_ledger_info(conn: sqlite3.Connection, ledger: Path) -> None:
    info = ledger_info(conn, ledger)
    assert (info.path, info.schema_version, info.rows) == (str(ledger), SCHEMA_VERSION, len(SAMPLE))
    assert (info.first_started_at, info.last_started_at) == ("2026-11-20T09:00:00.000Z", "2026-11-23T10:00:00.000Z")
    assert info.size_bytes >= ledger.stat().st_size > 0


def _ids(path: Path) -> list[str]:
    conn = open_readonly(path)
    ids = [row[0] for row in conn.execute("SELECT id FROM requests ORDER BY started_at")]
    conn.close()
    return ids


@pytest.mark.parametrize("batch", [1, 2, 5_000])
def test_prune_deletes_only_older_rows(ledger: Path, batch: int) -> None:
    result = prune(ledger, parse_time("2026-11-22"), batch=batch)
    assert (result.before, result.deleted, result.remaining) == ("2026-11-22T00:00:00.000Z", 3, 6)
    assert not result.vacuumed and not result.dry_run
    assert _ids(ledger) == ["r4", "r5", "r6", "r7", "r8", "r9"]
    assert prune(ledger, parse_time("2026-11-22"), batch=batch).deleted == 0


def test_prune_dry_run_changes_nothing(ledger: Path) -> None:
    result = prune(ledger, parse_time("1d", NOW), dry_run=True)
    assert (result.deleted, result.remaining, result.dry_run) == (4, 5, True)
    assert len(_ids(ledger)) == len(SAMPLE)


def test_prune_with_vacuum_shrinks_the_file(tmp_path: Path) -> None:
    big = [(f"b{i}", f"2026-10-01T00:00:{i % 60:02d}.000Z", "ci", "POST", _CHAT, "m", "m", 200,
            1, 1, 0, 0, "reported", 1) for i in range(3000)]
    path = build_ledger(tmp_path / "big.db", SAMPLE + big)
    result = prune(path, parse_time("2026-11-01"), vacuum=True)
    assert (result.deleted, result.remaining, result.vacuumed) == (3000, len(SAMPLE), True)
    assert result.size_after < result.size_before
    assert _ids(path) == [row[0] for row in SAMPLE]


def test_prune_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        prune(tmp_path / "nope.db", NOW)
    assert not (tmp_path / "nope.db").exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(LedgerError, match="not an oaigate ledger"):
        prune(other, NOW)


def test_datasette_metadata_queries_run_on_a_real_ledger(tmp_path: Path) -> None:
    import sqlite3

    import yaml
    from click.testing import CliRunner

    from proxy.cli import cli
    from proxy.db.schema import COLUMNS, connect

    result = CliRunner().invoke(cli, ["ledger", "metadata"])
    assert result.exit_code == 0, result.output
    metadata = yaml.safe_load(result.output)
    queries = metadata["databases"]["oaigate"]["queries"]
    assert len(queries) >= 5
    db = tmp_path / "oaigate.db"
    conn = connect(str(db))
    row = dict.fromkeys(COLUMNS) | {"id": "gw_1", "started_at": "2026-01-01T00:00:00.000Z", "endpoint": "/v1/x",
                                    "status": 200, "cost_microusd": 5, "prompt_tokens": 1, "simulated": 0}
    conn.execute(f"INSERT INTO requests ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    conn.close()
    readonly = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    for name, query in queries.items():
        assert query["title"], name
        readonly.execute(query["sql"]).fetchall()  # every canned query runs on this schema
    (top,) = readonly.execute(queries["costliest_requests"]["sql"]).fetchall()
    assert top[0] == "gw_1"
