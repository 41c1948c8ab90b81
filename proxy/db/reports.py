"""Read-only queries over a ledger file: spend totals and breakdowns, and a summary of the file.

Everything here opens the ledger read-only and never creates, migrates or locks it for writing, so
it works on a live gateway's ledger and on a copy taken to another machine. Money stays integer
micro-dollars; `format_usd` is the only place it becomes text.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

GroupBy = Literal["day", "model", "key", "endpoint", "upstream"]

GROUPS: dict[GroupBy, str] = {
    "day": "substr(started_at, 1, 10)",
    "model": "COALESCE(model_served, model_requested)",
    "key": "key_name",
    "endpoint": "endpoint",
    "upstream": "upstream",
}

_SUCCESS = "status BETWEEN 200 AND 399"
_METERED = "(usage_source IS NOT NULL OR prompt_tokens IS NOT NULL)"
_SELECT = f"""
SELECT {{group}} AS grp,
       COUNT(*),
       COALESCE(SUM(NOT ({_SUCCESS})), 0),
       COALESCE(SUM(prompt_tokens), 0),
       COALESCE(SUM(completion_tokens), 0),
       COALESCE(SUM(cached_tokens), 0),
       COALESCE(SUM(reasoning_tokens), 0),
       SUM(CASE WHEN {{simulated}} <> 0 THEN 0 ELSE cost_microusd END),
       COALESCE(SUM(cost_microusd IS NULL AND {_SUCCESS} AND {_METERED}), 0),
       COALESCE(SUM(usage_source = 'estimated'), 0),
       COALESCE(SUM(CASE WHEN {{simulated}} <> 0 THEN COALESCE(replayed_cost_microusd, cost_microusd) END), 0),
       COALESCE(SUM({{saved}}), 0)
FROM requests {{where}} {{tail}}
"""
_COSTLIEST_FIRST = ("ORDER BY SUM(cost_microusd) IS NULL, SUM(cost_microusd) DESC, COUNT(*) DESC, {group} IS NULL, "
                    "{group}")  # the group's expression, not its alias: PostgreSQL runs this too

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


class LedgerError(Exception):
    """The ledger file is missing, unreadable, or not an oaigate ledger."""


class NoLedger(LedgerError):
    """There is no ledger file (yet): nothing was written to it."""


_NOT_A_LEDGER = ("file is not a database", "no such table", "no such column")


def sqlite_ledger_error(file: str | Path, exc: sqlite3.Error, doing: str = "read") -> LedgerError:
    """The LedgerError for `exc`, met on the SQLite ledger `file`: a file that is no database, or has no
    ledger table, is "not an oaigate ledger"; any other error (locked by another process, an I/O error,
    a damaged file) says the ledger cannot be opened or read, with SQLite's reason."""
    reason = str(exc)
    if reason.startswith(_NOT_A_LEDGER):
        return LedgerError(f"{file} is not an oaigate ledger ({reason})")
    return LedgerError(f"cannot {doing} the ledger {file}: {reason}")


def open_sqlite(file: str | Path, mode: str = "ro", **options: Any) -> sqlite3.Connection:
    """A connection to the SQLite file (`mode` "ro" or "rw": never created here), waiting up to 5 s for
    the locks other connections hold a moment; `options` go to `sqlite3.connect`."""
    return sqlite3.connect(f"{Path(file).resolve().as_uri()}?mode={mode}", uri=True, timeout=5.0, **options)


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One group of a spend report (or the total, with `group` None).

    `errors` counts requests with no successful (2xx/3xx) response (status 0: the client left first).
    `unpriced_requests` counts successful ones that have usage but no cost (their model is missing
    from the price table), so their spend is not in `cost_microusd`, which is None when the group
    has unpriced requests and nothing priced. Requests without usage (model lists, files, errors)
    cost nothing.
    """

    group: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_microusd: int | None
    unpriced_requests: int
    estimated_requests: int
    simulated_microusd: int = 0  # what oaigate's mock or replayed fixtures answered: priced, never real spend
    saved_microusd: int = 0  # what the response cache's hits would have cost

    @property
    def cost_usd(self) -> str | None:
        """The cost as a decimal string of dollars, or None when unknown."""
        return format_usd(self.cost_microusd)

    @property
    def simulated_usd(self) -> str:
        return format_usd(self.simulated_microusd) or "0.000000"

    @property
    def saved_usd(self) -> str:
        return format_usd(self.saved_microusd) or "0.000000"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the costs both in micro-dollars and as USD strings."""
        return asdict(self) | {"cost_usd": self.cost_usd, "simulated_usd": self.simulated_usd,
                               "saved_usd": self.saved_usd}


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """What `oaigate ledger info` shows."""

    path: str
    schema_version: int
    rows: int
    first_started_at: str | None
    last_started_at: str | None
    size_bytes: int


def format_usd(microusd: int | None) -> str | None:
    """`1234567` → `"1.234567"`, exactly (no floats); None stays None."""
    if microusd is None:
        return None
    sign = "-" if microusd < 0 else ""
    dollars, micros = divmod(abs(microusd), 1_000_000)
    return f"{sign}{dollars}.{micros:06d}"


def parse_time(value: str, now: datetime | None = None, *, end_of_day: bool = False) -> datetime:
    """A UTC instant from `YYYY-MM-DD`, an ISO-8601 timestamp, or a span back from `now` (`7d`, `24h`, `30m`).

    A bare date is midnight UTC at its start, or with `end_of_day` at its end (the next midnight), so
    `--until 2026-11-30` includes that day. Timestamps without an offset are taken as UTC.
    """
    text = value.strip()
    if match := _RELATIVE.fullmatch(text):
        amount, unit = match.groups()
        return (now or datetime.now(UTC)).astimezone(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        if _DATE_ONLY.fullmatch(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=int(end_of_day))
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD), an ISO-8601 timestamp, "
                         "or a span like 7d, 24h, 30m") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def ledger_time(moment: datetime) -> str:
    """`moment` in the ledger's `started_at` format (`2026-11-23T09:15:19.900Z`), which sorts as text."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def ledger_file_exists(file: str | Path) -> bool:
    """Whether the SQLite ledger `file` is there; a directory in its place, or a folder that cannot be
    searched, raises LedgerError (neither means "no ledger yet")."""
    try:
        if Path(file).is_dir():
            raise LedgerError(f"no ledger at {file} (it is a directory)")
        return Path(file).is_file()
    except OSError as exc:
        raise LedgerError(f"cannot read the ledger {file}: {exc.strerror or exc}") from None


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open an existing ledger read-only; no file raises NoLedger, a file that cannot be read or is no
    ledger LedgerError."""
    file = Path(path)
    if not ledger_file_exists(file):
        raise NoLedger(f"no ledger at {file}")
    conn = open_sqlite(file)
    try:
        conn.execute("SELECT started_at, cost_microusd FROM requests LIMIT 0")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise sqlite_ledger_error(file, exc) from None
    return conn


def _spend_row(values: tuple[Any, ...]) -> SpendRow:
    row = SpendRow(*values)
    return replace(row, cost_microusd=0) if row.cost_microusd is None and not row.unpriced_requests else row


def _where(since: datetime | None, until: datetime | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(ledger_time(since))
    if until is not None:
        clauses.append("started_at < ?")
        params.append(ledger_time(until))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _simulated(conn: sqlite3.Connection) -> str:
    """The SQL that says a row is simulated; a ledger older than the `simulated` column has none."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    return "simulated" if "simulated" in columns else "0"


def _saved(conn: sqlite3.Connection) -> str:
    """The SQL of what a row's cache hit saved; a ledger older than the `saved_microusd` column has none."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    return "saved_microusd" if "saved_microusd" in columns else "0"


def spend_total(conn: sqlite3.Connection, since: datetime | None = None, until: datetime | None = None) -> SpendRow:
    """Totals over the requests started in [since, until)."""
    where, params = _where(since, until)
    row = conn.execute(_SELECT.format(group="NULL", where=where, tail="", simulated=_simulated(conn),
                                      saved=_saved(conn)), params).fetchone()
    return _spend_row(row)


def spend_by(conn: sqlite3.Connection, by: GroupBy, since: datetime | None = None,
             until: datetime | None = None) -> list[SpendRow]:
    """One row per day, model, key, endpoint or upstream over [since, until).

    Days are UTC and come in date order; the other groupings come costliest first.
    """
    where, params = _where(since, until)
    order = "ORDER BY grp" if by == "day" else _COSTLIEST_FIRST.format(group=GROUPS[by])
    sql = _SELECT.format(group=GROUPS[by], where=where, tail=f"GROUP BY grp {order}", simulated=_simulated(conn),
                         saved=_saved(conn))
    return [_spend_row(row) for row in conn.execute(sql, params)]


def ledger_info(conn: sqlite3.Connection, path: str | Path) -> LedgerInfo:
    """Schema version, row count, first and last request, and bytes on disk (database plus WAL files)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    rows, first, last = conn.execute("SELECT COUNT(*), MIN(started_at), MAX(started_at) FROM requests").fetchone()
    return LedgerInfo(str(path), version, rows, first, last, disk_size(path))


def disk_size(path: str | Path) -> int:
    """Bytes used by the database file and its `-wal` and `-shm` companions."""
    return sum(p.stat().st_size for p in (Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")) if p.is_file())
