"""The dashboard's read side: spend over time and by group, pages of ledger rows, OpenAI usage buckets.

Plain parameterized SQL over the `requests` table, run on a read-only connection (`reports.open_readonly`)
off the event loop. The sums are the ones `oaigate spend` makes (`reports.spend_total`): integer
micro-dollars, simulated rows (oaigate's mock, replayed fixtures) priced apart, never as spend, and a
group whose successful metered requests have no price has an unknown cost (None), never $0.

The SQL that depends on the database is kept in `Dialect` (time buckets cut from the ISO text of
`started_at`, the list of columns, what marks a change for the rollup): `SQLITE` for a file,
`POSTGRES` for a `postgres.ReadConnection`. Both engines give the same numbers for the same rows.
"""

from __future__ import annotations

import operator
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .reports import SpendRow, format_usd, ledger_time

Width = Literal["minute", "hour", "day"]
Split = Literal["model", "key", "endpoint"]
StatusClass = Literal["2xx", "3xx", "4xx", "5xx", "error", "cut"]

MODEL = "COALESCE(model_served, model_requested)"
SPLITS: dict[Split, str] = {"model": MODEL, "key": "key_name", "endpoint": "endpoint"}
STATUS_CLASSES: dict[str, str] = {
    "2xx": "status BETWEEN 200 AND 299",
    "3xx": "status BETWEEN 300 AND 399",
    "4xx": "status BETWEEN 400 AND 499",
    "5xx": "status BETWEEN 500 AND 599",
    "error": "NOT (status BETWEEN 200 AND 399)",  # what `oaigate spend` counts as an error
    "cut": "status = 0",  # the client left (or the server stopped) before an answer
}
BODY_COLUMNS = ("request_body", "response_body")  # never sent to the page: large, and they may hold anything

_SUCCESS = "status BETWEEN 200 AND 399"
_METERED = "(usage_source IS NOT NULL OR prompt_tokens IS NOT NULL)"
# portable SQL (no sums of booleans): `{simulated}` is `simulated <> 0`, or `0 <> 0` on a ledger without it
_SUMS = f"""COUNT(*),
       COALESCE(SUM(CASE WHEN {_SUCCESS} THEN 0 ELSE 1 END), 0),
       COALESCE(SUM(prompt_tokens), 0),
       COALESCE(SUM(completion_tokens), 0),
       COALESCE(SUM(cached_tokens), 0),
       COALESCE(SUM(reasoning_tokens), 0),
       SUM(CASE WHEN {{simulated}} THEN 0 ELSE cost_microusd END),
       COALESCE(SUM(CASE WHEN cost_microusd IS NULL AND {_SUCCESS} AND {_METERED} THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN usage_source = 'estimated' THEN 1 ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN {{simulated}} THEN COALESCE(replayed_cost_microusd, cost_microusd) END), 0)"""
_N_SUMS = 10


class Dialect:
    """SQLite's spelling of the few things that differ between databases. The rest is portable SQL with
    `?` placeholders, which `sql` turns into the driver's."""

    name = "sqlite"
    rollup = True  # whether `marks` and `touched` can tell the rollup what changed
    summary: str | None = None  # a table of sums per hour, key, model and endpoint the database keeps

    def sql(self, text: str) -> str:
        return text

    _PREFIX = {"minute": 16, "hour": 13, "day": 10}  # of `2026-11-23T09:15:19.900Z`

    def bucket(self, width: Width) -> str:
        """An expression naming the UTC minute, hour or day a row started in, as ISO text that sorts."""
        return f"substr(started_at, 1, {self._PREFIX[width]})"

    def bucket_start(self, width: Width, text: str) -> str:
        """The ISO instant a bucket's text stands for (`2026-11-23T09` -> `2026-11-23T09:00:00Z`)."""
        return {"minute": f"{text}:00Z", "hour": f"{text}:00:00Z", "day": f"{text}T00:00:00Z"}[width]

    def columns(self, conn: sqlite3.Connection) -> list[str]:
        return [row[1] for row in conn.execute("PRAGMA table_info(requests)")]

    def marks(self, conn: sqlite3.Connection) -> tuple[Any, Any]:
        """What says rows were added or replaced (the last rowid: a replaced row gets a new one) and
        pruned (the first `started_at`)."""
        # two queries: each is one step down an index; together in one they would scan the table
        return (conn.execute("SELECT MAX(rowid) FROM requests").fetchone()[0],
                conn.execute("SELECT MIN(started_at) FROM requests").fetchone()[0])

    def touched(self, conn: sqlite3.Connection, mark: Any) -> set[str]:
        """The hours (bucket text) of the rows added or replaced since `marks` gave `mark`."""
        sql = f"SELECT DISTINCT {self.bucket('hour')} FROM requests WHERE rowid >= ?"
        return {row[0] for row in conn.execute(self.sql(sql), [mark])}


class PostgresDialect(Dialect):
    """PostgreSQL's, on a `postgres.ReadConnection` (which turns `?` into `%s` and PostgreSQL's numeric
    sums back into ints). The buckets are cut from the same ISO text with `left()`, so they are the same
    text as SQLite's; the columns come from `information_schema`. There is no rowid to mark what changed
    (and with several gateways writing at once, no sequence says it in commit order): instead of the
    in-memory rollup, the database keeps the hourly sums itself (`summary`, kept by triggers, exact in
    every transaction), and `Rollup.cells` reads whole hours there and only the ends from the table."""

    name = "postgresql"
    rollup = False
    summary = "oaigate_hourly"  # kept by triggers in the database (postgres.py): whole hours are read there

    def bucket(self, width: Width) -> str:
        return f"left(started_at, {self._PREFIX[width]})"

    def columns(self, conn: Any) -> list[str]:
        return list(conn.columns())

    def marks(self, conn: Any) -> tuple[Any, Any]:
        raise NotImplementedError("the PostgreSQL ledger has no change marks: its queries skip the rollup")

    def touched(self, conn: Any, mark: Any) -> set[str]:
        raise NotImplementedError("the PostgreSQL ledger has no change marks: its queries skip the rollup")


SQLITE = Dialect()
POSTGRES = PostgresDialect()


def dialect_of(conn: Any) -> Dialect:
    """The dialect of a connection from `ledger.connect_readonly`."""
    return POSTGRES if getattr(conn, "dialect", None) == "postgresql" else SQLITE


@dataclass(frozen=True, slots=True)
class Filter:
    """Which rows: started in [since, until), and optionally one key, model, endpoint or status class.

    `key` also carries the access rule: a non-admin caller's filter always names its own key."""

    since: datetime | None = None
    until: datetime | None = None
    key: str | None = None
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None
    endpoints: Sequence[str] = field(default=())  # any of these (the usage API's families)

    def where(self, extra: Sequence[str] = ()) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append("started_at >= ?")
            params.append(ledger_time(self.since))
        if self.until is not None:
            clauses.append("started_at < ?")
            params.append(ledger_time(self.until))
        if self.key is not None:
            clauses.append("key_name = ?")
            params.append(self.key)
        if self.model is not None:
            clauses.append(f"{MODEL} = ?")
            params.append(self.model)
        if self.endpoint is not None:
            clauses.append("endpoint = ?")
            params.append(self.endpoint)
        if self.endpoints:
            clauses.append(f"endpoint IN ({', '.join('?' for _ in self.endpoints)})")
            params += list(self.endpoints)
        if self.status is not None:
            clauses.append(STATUS_CLASSES[self.status])
        clauses += extra
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _simulated(columns: Sequence[str]) -> str:
    return "simulated <> 0" if "simulated" in columns else "0 <> 0"


def _spend_row(group: str | None, values: Sequence[Any]) -> SpendRow:
    row = SpendRow(group, *values)
    return replace(row, cost_microusd=0) if row.cost_microusd is None and not row.unpriced_requests else row


def total(conn: sqlite3.Connection, where: Filter, dialect: Dialect | None = None) -> SpendRow:
    """Totals over the rows `where` selects: the numbers `oaigate spend` shows for the same range."""
    dialect = dialect or dialect_of(conn)
    clause, params = where.where()
    sql = f"SELECT {_SUMS.format(simulated=_simulated(dialect.columns(conn)))} FROM requests {clause}"
    return _spend_row(None, conn.execute(dialect.sql(sql), params).fetchone())


def grouped(conn: sqlite3.Connection, where: Filter, by: Width | Split, split: Split | None = None,
            dialect: Dialect | None = None) -> list[tuple[str | None, str | None, SpendRow]]:
    """`(group, split, sums)` per time bucket (`minute`, `hour`, `day`: oldest first, as ISO instants) or per
    model, key or endpoint (costliest first), each further split by model, key or endpoint when `split`."""
    dialect = dialect or dialect_of(conn)
    clause, params = where.where()
    timed = by in ("minute", "hour", "day")
    group = dialect.bucket(by) if timed else SPLITS[by]  # type: ignore[arg-type,index]
    second = SPLITS[split] if split else "NULL"
    order = "1, 2" if timed else ("SUM(cost_microusd) IS NULL, SUM(cost_microusd) DESC, COUNT(*) DESC, "
                                  f"{group} IS NULL, {group}")
    sums = _SUMS.format(simulated=_simulated(dialect.columns(conn)))
    sql = f"SELECT {group} AS grp, {second}, {sums} FROM requests {clause} GROUP BY 1, 2 ORDER BY {order}"
    out = []
    for row in conn.execute(dialect.sql(sql), params):
        name = dialect.bucket_start(by, row[0]) if timed and row[0] is not None else row[0]  # type: ignore[arg-type]
        out.append((name, row[1], _spend_row(name, row[2:])))
    return out


def cost_text(row: dict[str, Any]) -> str | None:
    """A ledger row's cost in USD: a decimal string, `"0.000000"` when nothing was billable (no usage, a
    failure), None when it is unknown (a successful metered request whose model has no price)."""
    cost = row.get("cost_microusd")
    if cost is not None:
        return format_usd(cost)
    status = row.get("status") or 0
    metered = row.get("usage_source") is not None or row.get("prompt_tokens") is not None
    return None if 200 <= status <= 399 and metered else "0.000000"


def encode_cursor(started_at: str, row_id: str) -> str:
    return f"{started_at}|{row_id}"


def decode_cursor(cursor: str) -> tuple[str, str]:
    """`started_at|id` from a page's `next_before`; ValueError when it is not one."""
    started_at, sep, row_id = cursor.partition("|")
    if not sep or not row_id or len(started_at) < 10:
        raise ValueError(f"{cursor!r} is not a cursor from a previous page's next_before")
    return started_at, row_id


def page(conn: sqlite3.Connection, where: Filter, limit: int, before: str | None = None,
         dialect: Dialect | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `limit` rows, newest first (by `started_at`, then `id`), older than the cursor `before`; and
    the cursor of the next page, None when there is none. The bodies are left out."""
    dialect = dialect or dialect_of(conn)
    columns = [c for c in dialect.columns(conn) if c not in BODY_COLUMNS]
    extra, extra_params = [], []
    if before is not None:
        started_at, row_id = decode_cursor(before)
        extra.append("(started_at < ? OR (started_at = ? AND id < ?))")
        extra_params = [started_at, started_at, row_id]
    clause, params = where.where(extra)
    sql = (f"SELECT {', '.join(columns)} FROM requests {clause} "
           f"ORDER BY started_at DESC, id DESC LIMIT ?")
    rows = [dict(zip(columns, values, strict=True))
            for values in conn.execute(dialect.sql(sql), [*params, *extra_params, limit + 1])]
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        row["cost_usd"] = cost_text(row)
    cursor = encode_cursor(rows[-1]["started_at"], rows[-1]["id"]) if more and rows else None
    return rows, cursor


Cell = tuple[str, str | None, str | None, str]  # bucket, key, model, endpoint
# A cell's sums: the ten of `total` (the cost as 0 when unknown), 1 when some row had a cost, then the
# successful requests' count, prompt, completion and cached tokens (OpenAI's usage API counts those).
# Tuples, added with `plus`: a month is thousands of cells, added in C rather than field by field.
Sums = tuple[int, ...]
_COST, _PRICED = 6, 10
OK_REQUESTS, OK_PROMPT, OK_COMPLETION, OK_CACHED = 11, 12, 13, 14
ZERO: Sums = (0,) * 15
_OK_SUMS = ", ".join(f"COALESCE(SUM(CASE WHEN {_SUCCESS} THEN {what} END), 0)"
                     for what in ("1", "prompt_tokens", "completion_tokens", "cached_tokens"))


def _sums(values: Sequence[Any]) -> Sums:
    cost = values[_COST]
    return (*values[:_COST], cost or 0, *values[_COST + 1:_PRICED], int(cost is not None), *values[_PRICED:])


def plus(a: Sums, b: Sums) -> Sums:
    return tuple(map(operator.add, a, b))


def cells(conn: sqlite3.Connection, where: Filter, width: Width = "hour",
          dialect: Dialect | None = None) -> dict[Cell, Sums]:
    """The sums of `total` per time bucket (its text, e.g. `2026-11-23T09`), key, model and endpoint,
    with the successful requests' part: everything the page's spend views and OpenAI's usage API add up."""
    dialect = dialect or dialect_of(conn)
    clause, params = where.where()
    sums = _SUMS.format(simulated=_simulated(dialect.columns(conn)))
    sql = (f"SELECT {dialect.bucket(width)}, key_name, {MODEL}, endpoint, {sums}, {_OK_SUMS} "
           f"FROM requests {clause} GROUP BY 1, 2, 3, 4")
    return {tuple(row[:4]): _sums(row[4:]) for row in conn.execute(dialect.sql(sql), params)}


def spend_row(group: str | None, sums: Sums) -> SpendRow:
    """The `SpendRow` of summed cells: an unknown cost when nothing was priced and something needed a price."""
    cost = sums[_COST] if sums[_PRICED] else None
    return _spend_row(group, [*sums[:_COST], cost, *sums[_COST + 1:_PRICED]])


def total_of(found: dict[Cell, Sums]) -> SpendRow:
    """`total` from cells."""
    into = ZERO
    for sums in found.values():
        into = plus(into, sums)
    return spend_row(None, into)


def spend_of(found: dict[Cell, Sums], by: Width | Split,
             split: Split | None = None) -> tuple[list[tuple[str | None, str | None, SpendRow]], SpendRow]:
    """`grouped_of` and `total_of` in one pass over the cells (the total is summed from the groups)."""
    group, second = _BY[by], _BY[split] if split else None
    sums: dict[tuple[str | None, str | None], Sums] = {}
    get = sums.get
    for cell, values in found.items():
        name = (group(cell), second(cell) if second else None)
        sums[name] = plus(get(name, ZERO), values)
    into = ZERO
    for values in sums.values():
        into = plus(into, values)
    return _ordered(by, [(g, s, spend_row(g, v)) for (g, s), v in sums.items()]), spend_row(None, into)


_BY: dict[str, Callable[[Cell], str | None]] = {
    "hour": lambda c: f"{c[0][:13]}:00:00Z", "day": lambda c: f"{c[0][:10]}T00:00:00Z",
    "key": lambda c: c[1], "model": lambda c: c[2], "endpoint": lambda c: c[3],
}


def grouped_of(found: dict[Cell, Sums], by: Width | Split,
               split: Split | None = None) -> list[tuple[str | None, str | None, SpendRow]]:
    """`grouped` from cells (hour or day buckets, or model, key, endpoint), in the same order."""
    group, second = _BY[by], _BY[split] if split else (lambda c: None)
    sums: dict[tuple[str | None, str | None], Sums] = {}
    for cell, values in found.items():
        name = (group(cell), second(cell))
        sums[name] = plus(sums.get(name, ZERO), values)
    return _ordered(by, [(g, s, spend_row(g, v)) for (g, s), v in sums.items()])


def _ordered(by: str, rows: list[tuple[str | None, str | None, SpendRow]]) -> list[tuple[str | None, str | None,
                                                                                       SpendRow]]:
    if by in ("hour", "day"):
        rows.sort(key=lambda r: (r[0] or "", r[1] is not None, r[1] or ""))
    else:
        rows.sort(key=lambda r: (r[2].cost_microusd is None, -(r[2].cost_microusd or 0),
                                 -r[2].requests, r[0] is None, r[0] or "", r[1] or ""))
    return rows


def _hour_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def _hour_start(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC)


def summary_cells(conn: Any, where: Filter, width: Width, dialect: Dialect) -> dict[Cell, Sums]:
    """`cells` (hour or day buckets) from the database's own hourly summary for the whole hours of the
    range, and from the table for the parts of an hour at either end."""
    lo = hi = None
    if where.since is not None:
        lo = _hour_start(_hour_text(where.since))
        if lo < where.since:
            lo += timedelta(hours=1)
    if where.until is not None:
        hi = _hour_start(_hour_text(where.until))
    if lo is not None and hi is not None and lo >= hi:
        return cells(conn, where, width, dialect)
    clauses: list[str] = []
    params: list[Any] = []
    for column, bound in (("hour >= ?", lo), ("hour < ?", hi)):
        if bound is not None:
            clauses.append(column)
            params.append(_hour_text(bound))
    for column, value in (("key_name = ?", where.key), ("model = ?", where.model), ("endpoint = ?", where.endpoint)):
        if value is not None:
            clauses.append(column)
            params.append(value)
    if where.endpoints:
        clauses.append(f"endpoint IN ({', '.join('?' for _ in where.endpoints)})")
        params += list(where.endpoints)
    names = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
             "cost_microusd", "unpriced_requests", "estimated_requests", "simulated_microusd", "priced",
             "ok_requests", "ok_prompt_tokens", "ok_completion_tokens", "ok_cached_tokens")
    sql = (f"SELECT left(hour, {Dialect._PREFIX[width]}), key_name, model, endpoint, "
           f"{', '.join(f'CAST(SUM({n}) AS bigint)' for n in names)} FROM {dialect.summary} "
           f"{'WHERE ' + ' AND '.join(clauses) if clauses else ''} GROUP BY 1, 2, 3, 4 HAVING SUM(requests) > 0")
    found: dict[Cell, Sums] = {}
    for row in conn.execute(dialect.sql(sql), params):
        values = row[4:]
        found[tuple(row[:4])] = (*values[:_PRICED], int(values[_PRICED] > 0), *values[_PRICED + 1:])
    edges = []
    if lo is not None and where.since is not None and where.since < lo:
        edges.append(replace(where, until=lo))
    if hi is not None and where.until is not None and hi < where.until:
        edges.append(replace(where, since=hi))
    for edge in edges:
        for cell, sums in cells(conn, edge, width, dialect).items():
            found[cell] = plus(found.get(cell, ZERO), sums)
    return found


def _matches(where: Filter, cell: Cell) -> bool:
    return ((where.key is None or cell[1] == where.key) and (where.model is None or cell[2] == where.model)
            and (where.endpoint is None or cell[3] == where.endpoint)
            and (not where.endpoints or cell[3] in where.endpoints))


class Rollup:
    """The cells of every closed hour (before the current one), kept in memory: a month of spend is then a
    sum of a few thousand cells rather than a scan of the month's rows. Only the partial hours at the
    ends of a range, and the current hour, are read from the table.

    Before each use it catches up (`Dialect.marks`): the hours of rows added or replaced since the last
    look (a late row of a long request, a background response settled hours later) are read again;
    rows pruned from the start, or a ledger that went back, rebuild it all. Memory is bounded: past
    `max_cells` cells (about 250 bytes each), the oldest hours are dropped and ranges reaching before
    what is kept read that part from the table. Thread-safe: queries run in worker threads."""

    def __init__(self, dialect: Dialect | None = None, max_cells: int = 400_000) -> None:
        self.dialect, self.max_cells = dialect, max_cells
        self._floor: str | None = None  # hours before this one are not kept (the table answers for them)
        self._hours: dict[str, dict[Cell, Sums]] = {}
        self._mark: tuple[Any, Any] | None = None
        self._upto: str | None = None  # hours before this one are cached
        self._lock = threading.Lock()

    def _load(self, conn: sqlite3.Connection, where: Filter, hours: Iterable[str] = ()) -> None:
        for hour in hours:
            self._hours.pop(hour, None)
        for cell, sums in cells(conn, where, "hour", self.dialect).items():
            if self._floor is None or cell[0] >= self._floor:
                self._hours.setdefault(cell[0], {})[cell] = sums

    def _trim(self, current: str) -> None:
        kept = sum(len(hour) for hour in self._hours.values())
        if kept <= self.max_cells:
            return
        for hour in sorted(self._hours):
            kept -= len(self._hours.pop(hour))
            if kept <= self.max_cells * 0.9:
                break
        self._floor = min(self._hours, default=current)

    def refresh(self, conn: sqlite3.Connection, now: datetime) -> None:
        current = _hour_text(now)
        dialect = self.dialect or dialect_of(conn)
        if not dialect.rollup:
            return
        last, first = dialect.marks(conn)
        mark = self._mark
        if mark is None or first != mark[1] or (last or 0) < (mark[0] or 0) or self._upto is None:
            self._hours, self._floor = {}, None
            self._load(conn, Filter(until=_hour_start(current)))
        else:
            stale = {h for h in dialect.touched(conn, mark[0] or 0) if h < current}
            if self._upto < current:  # hours that closed since the last look
                self._load(conn, Filter(since=_hour_start(self._upto), until=_hour_start(current)),
                           [h for h in self._hours if h >= self._upto])
                stale = {h for h in stale if h < self._upto}
            for hour in sorted(stale):
                start = _hour_start(hour)
                self._load(conn, Filter(since=start, until=start + timedelta(hours=1)), [hour])
        self._mark, self._upto = (last, first), current
        self._trim(current)

    def cells(self, conn: sqlite3.Connection, where: Filter, now: datetime | None = None,
              coarsest: Width = "hour") -> dict[Cell, Sums]:
        """`cells(conn, where, "hour")`, the closed hours taken from memory. Without a rollup (PostgreSQL)
        the table answers, in buckets of `coarsest` ("day" when the caller needs no hours: fewer cells)."""
        dialect = self.dialect or dialect_of(conn)
        if not dialect.rollup:
            if dialect.summary and where.status is None:
                return summary_cells(conn, where, coarsest, dialect)
            return cells(conn, where, coarsest, dialect)
        if where.status is not None:
            return cells(conn, where, "hour", self.dialect)
        now = now or datetime.now(UTC)
        with self._lock:
            self.refresh(conn, now)
            current = _hour_start(_hour_text(now))
            lo = None
            if where.since is not None:
                lo = _hour_start(_hour_text(where.since))
                if lo < where.since:
                    lo += timedelta(hours=1)
            if self._floor is not None and (lo is None or lo < _hour_start(self._floor)):
                lo = _hour_start(self._floor)
            hi = current if where.until is None else min(current, _hour_start(_hour_text(where.until)))
            if lo is not None and lo >= hi:
                return cells(conn, where, "hour", self.dialect)
            lo_text, hi_text = (_hour_text(lo) if lo else ""), _hour_text(hi)
            found: dict[Cell, Sums] = {}
            everything = where.key is None and where.model is None and where.endpoint is None and not where.endpoints
            for hour, hour_cells in self._hours.items():
                if lo_text <= hour < hi_text:
                    if everything:
                        found.update(hour_cells)
                    else:
                        found.update((c, v) for c, v in hour_cells.items() if _matches(where, c))
        if lo is not None and (where.since is None or where.since < lo):  # before the first whole hour kept
            found.update(cells(conn, replace(where, until=lo), "hour", self.dialect))
        if where.until is None or hi < where.until:
            for cell, sums in cells(conn, replace(where, since=hi), "hour", self.dialect).items():
                found[cell] = plus(found.get(cell, ZERO), sums)
        return found


__all__ = ["POSTGRES", "SQLITE", "Dialect", "Filter", "PostgresDialect", "Rollup", "cells", "cost_text",
           "decode_cursor", "dialect_of", "encode_cursor", "grouped", "grouped_of", "page", "spend_of", "total",
           "total_of"]
