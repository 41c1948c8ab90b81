"""The ledger on PostgreSQL: the SQLite ledger's table and views, created and migrated on start, and its writer.

The DDL comes from the one column list, `schema.COLUMNS`, and the views from `schema.VIEWS`, so a
column added there appears here too (on start, `migrate` adds the columns a table lacks). Text
columns use the "C" collation, so they compare and sort byte-wise as in SQLite: the ISO timestamps
in `started_at` compare as text, and reports list groups in the same order on both. One small
aggregate, `sum(boolean)`, counts the rows where a condition holds, as SQLite's `SUM(cond)` does,
so the ledger's queries run unchanged. The version lives in `oaigate_schema`; several gateways
starting at once migrate one after the other (an advisory lock).

`PgLedgerWriter` is `LedgerWriter` with PostgreSQL behind its thread: the same bounded queue,
tickets and counters, the same retries; the thread has its own connection and writes each batch in
one transaction: a small batch with one multi-row `INSERT ... ON CONFLICT` ("executemany"), a big one
(100 rows and more, as under load or after an outage) with `COPY` into a temporary table merged by
one `INSERT ... ON CONFLICT` (benchmarks/pg_ledger.py measured both). A row written twice, by a
retry after a commit whose answer was lost, replaces itself as `INSERT OR REPLACE` does in SQLite.
A thread rather than psycopg's async connection in a task: adapting rows costs CPU, and on the
event loop it would delay every request in flight (the same benchmark measures the loop's lag).
Several gateway processes and machines may write one ledger at once.

`oaigate_hourly` holds the dashboard's sums per hour, key, model and endpoint, kept equal to the table
by statement triggers inside each writing transaction (inserts, replacements, prunes, whoever writes),
so a month of spend is read from a few thousand summary rows instead of the month's requests. Each
batch is one statement, so the triggers run once per batch and lock the hours they add to in one
order (two gateways writing the same hour wait for each other, briefly, instead of deadlocking).

A URL's password is never shown: `redact` is what logs, errors and reports print.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from .ledger import LedgerError, redact
from .schema import COLUMNS, SCHEMA_VERSION, VIEWS
from .writer import LedgerWriter

TABLE = "requests"
VERSION_TABLE = "oaigate_schema"
_TYPES: dict[type, str] = {str: 'text COLLATE "C"', int: "bigint", float: "double precision"}
_NOT_NULL = {"started_at": "", "endpoint": "", "status": "", "simulated": " DEFAULT 0"}
_INDEXES = {"requests_started_at": "(started_at)", "requests_key_name_started_at": "(key_name, started_at)",
            "requests_object_id": "(object_id)"}
_LOCK = 0x6F616967  # "oaig": the advisory lock that serializes migrations of one database
_CONNECT_TIMEOUT_S = 5
# a server that vanishes without closing the connection (a partition, a dead host) is noticed in about a
# minute, and the writer reconnects, instead of waiting on the socket for hours
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _scrub(message: str, url: str) -> str:
    password = urlsplit(url).password
    text = message.replace(url, redact(url))
    return text.replace(password, "***") if password else text


def _psycopg() -> Any:
    """The psycopg module (imported when a PostgreSQL ledger is used, not before)."""
    try:
        import psycopg
    except ImportError:
        raise LedgerError("a PostgreSQL ledger needs psycopg: pip install 'oaigate[postgres]'") from None
    return psycopg


def connect(url: str, *, autocommit: bool = True, read_only: bool = False) -> Any:
    """A psycopg connection; failures raise LedgerError naming the redacted URL."""
    psycopg = _psycopg()

    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=_CONNECT_TIMEOUT_S,
                               application_name="oaigate", **_KEEPALIVE)
    except psycopg.Error as exc:
        raise LedgerError(f"cannot connect to the ledger at {redact(url)}: "
                                  f"{_scrub(str(exc).strip(), url)}") from None
    if read_only:  # autocommit runs no BEGIN that psycopg's `read_only` would apply to: set the session's default
        conn.execute("SET default_transaction_read_only = on")
    return conn


# --- schema ---------------------------------------------------------------------------------------

def _column(name: str) -> str:
    sql = f"{name} {_TYPES[COLUMNS[name]]}"
    if name == "id":
        return sql + " PRIMARY KEY"
    if name in _NOT_NULL:
        return f"{sql} NOT NULL{_NOT_NULL[name]}"
    return sql


def table_sql() -> str:
    """`CREATE TABLE` for the ledger, one column per entry of `schema.COLUMNS`."""
    return f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    " + ",\n    ".join(map(_column, COLUMNS)) + "\n)"


_SUM_BOOLEAN = [
    "CREATE OR REPLACE FUNCTION oaigate_count_true(state bigint, cond boolean) RETURNS bigint "
    "LANGUAGE sql IMMUTABLE AS "
    "$$ SELECT CASE WHEN cond IS NULL THEN state ELSE COALESCE(state, 0) + cond::int END $$",
    "CREATE OR REPLACE AGGREGATE sum(boolean) (SFUNC = oaigate_count_true, STYPE = bigint)",
]


def _nulls_first(sql: str) -> str:
    """SQLite sorts NULL first, PostgreSQL last: say SQLite's order (a view's rows come in the same order)."""
    return re.sub(r"ORDER BY (\S+?)(\s*)$", r"ORDER BY \1 NULLS FIRST\2", sql.rstrip())


def migrate(conn: Any) -> int:
    """Create or bring the ledger up to this oaigate's schema; the version it is at now.

    Idempotent and safe from several processes at once; refuses a database migrated by a newer oaigate."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
        row = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise LedgerError(f"ledger schema version {version} is newer than this oaigate ({SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            _ensure_summary(conn)
            return version
        conn.execute(table_sql())
        have = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s", (TABLE,))}
        for name in COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN {_column(name)}")
        for index, columns in _INDEXES.items():
            conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {TABLE} {columns}")
        for statement in _SUM_BOOLEAN:
            conn.execute(statement)
        for name, sql in VIEWS.items():
            conn.execute(f"DROP VIEW IF EXISTS {name}")
            conn.execute(f"CREATE VIEW {name} AS {_nulls_first(sql)}")
        _ensure_summary(conn)
        conn.execute(f"DELETE FROM {VERSION_TABLE}")
        conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


# --- the hourly summary ----------------------------------------------------------------------------

SUMMARY = "oaigate_hourly"
# what the dashboard adds up per hour, key, model and endpoint (`queries.cells`' sums, in their order; the
# cost as 0 when NULL, with `priced` counting the rows that gave a cost)
_SUCCESS = "status BETWEEN 200 AND 399"
_METERED = "(usage_source IS NOT NULL OR prompt_tokens IS NOT NULL)"
SUMMARY_SUMS: dict[str, str] = {
    "requests": "COUNT(*)",
    "errors": f"SUM(CASE WHEN {_SUCCESS} THEN 0 ELSE 1 END)",
    "prompt_tokens": "COALESCE(SUM(prompt_tokens), 0)",
    "completion_tokens": "COALESCE(SUM(completion_tokens), 0)",
    "cached_tokens": "COALESCE(SUM(cached_tokens), 0)",
    "reasoning_tokens": "COALESCE(SUM(reasoning_tokens), 0)",
    "cost_microusd": "COALESCE(SUM(CASE WHEN simulated <> 0 THEN 0 ELSE cost_microusd END), 0)",
    "unpriced_requests": f"SUM(CASE WHEN cost_microusd IS NULL AND {_SUCCESS} AND {_METERED} THEN 1 ELSE 0 END)",
    "estimated_requests": "SUM(CASE WHEN usage_source = 'estimated' THEN 1 ELSE 0 END)",
    "simulated_microusd": "COALESCE(SUM(CASE WHEN simulated <> 0 THEN COALESCE(replayed_cost_microusd, "
                          "cost_microusd) END), 0)",
    "priced": "SUM(CASE WHEN simulated <> 0 OR cost_microusd IS NOT NULL THEN 1 ELSE 0 END)",
    "ok_requests": f"SUM(CASE WHEN {_SUCCESS} THEN 1 ELSE 0 END)",
    "ok_prompt_tokens": f"COALESCE(SUM(CASE WHEN {_SUCCESS} THEN prompt_tokens END), 0)",
    "ok_completion_tokens": f"COALESCE(SUM(CASE WHEN {_SUCCESS} THEN completion_tokens END), 0)",
    "ok_cached_tokens": f"COALESCE(SUM(CASE WHEN {_SUCCESS} THEN cached_tokens END), 0)",
}
_NO = "E'\\x01'"  # stands for NULL in the unique index (ON CONFLICT never matches NULLs)
_CELL = f"hour, COALESCE(key_name, {_NO}), COALESCE(model, {_NO}), endpoint"
_GROUP = "left(started_at, 13), key_name, COALESCE(model_served, model_requested), endpoint"


def _fold(sign: int, rows: str) -> str:
    """Add (`sign` 1) or take away (-1) the sums of the transition table `rows` to the summary."""
    sums = ", ".join(f"{sign} * {expr}" for expr in SUMMARY_SUMS.values())
    update = ", ".join(f"{name} = {SUMMARY}.{name} + EXCLUDED.{name}" for name in SUMMARY_SUMS)
    # in the unique index's order, so two writers lock the cells they share in the same order
    return (f"INSERT INTO {SUMMARY} (hour, key_name, model, endpoint, {', '.join(SUMMARY_SUMS)}) "
            f"SELECT {_GROUP}, {sums} FROM {rows} GROUP BY 1, 2, 3, 4 "
            f"ORDER BY 1, COALESCE(key_name, {_NO}), COALESCE(COALESCE(model_served, model_requested), {_NO}), 4 "
            f"ON CONFLICT ({_CELL}) DO UPDATE SET {update}")


def summary_sql() -> list[str]:
    """The summary table and the statement triggers that keep it equal to the `requests` table's sums
    (inside each writing transaction: never stale, whoever writes)."""
    columns = ", ".join(f"{name} bigint NOT NULL" for name in SUMMARY_SUMS)
    sweep = (f"DELETE FROM {SUMMARY} s USING (SELECT DISTINCT left(started_at, 13) AS hour FROM old_rows) d "
             f"WHERE s.hour = d.hour AND s.requests = 0")
    functions = {"insert": [_fold(1, "new_rows")], "update": [_fold(-1, "old_rows"), _fold(1, "new_rows"), sweep],
                 "delete": [_fold(-1, "old_rows"), sweep]}
    tables = {"insert": "NEW TABLE AS new_rows", "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
              "delete": "OLD TABLE AS old_rows"}
    out = [f'CREATE TABLE IF NOT EXISTS {SUMMARY} (hour text COLLATE "C" NOT NULL, key_name text COLLATE "C", '
           f'model text COLLATE "C", endpoint text COLLATE "C" NOT NULL, {columns})',
           f"CREATE UNIQUE INDEX IF NOT EXISTS {SUMMARY}_cell ON {SUMMARY} ({_CELL})"]
    for op, statements in functions.items():
        body = ";\n".join(statements)
        out.append(f"CREATE OR REPLACE FUNCTION {SUMMARY}_{op}() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN {body}; RETURN NULL; END $$")
        out.append(f"DROP TRIGGER IF EXISTS {SUMMARY}_{op} ON {TABLE}")
        out.append(f"CREATE TRIGGER {SUMMARY}_{op} AFTER {op.upper()} ON {TABLE} REFERENCING {tables[op]} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {SUMMARY}_{op}()")
    out.append(f"DELETE FROM {SUMMARY}")
    out.append(_fold(1, TABLE))  # what the table holds already
    return out


def _ensure_summary(conn: Any) -> None:
    """Create the summary (and fill it from the rows there) where it is missing: a ledger migrated before
    it existed gets it on the next start. Under the migration lock; the triggers' lock on `requests`
    holds writers back until it is filled."""
    if conn.execute(f"SELECT to_regclass('{SUMMARY}') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_trigger "
                    f"WHERE tgname = '{SUMMARY}_insert')").fetchone()[0]:
        return
    for statement in summary_sql():
        conn.execute(statement)


# --- reading ---------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def to_postgres(sql: str) -> str:
    """The ledger's SQLite query text for psycopg: `?` placeholders become `%s` (and `%` becomes `%%`)."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


def _plain(value: Any) -> Any:
    """PostgreSQL's SUM of bigints is numeric: back to the int (or float) SQLite would give."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


class _Cursor:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int = -1) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def __iter__(self) -> Any:
        return iter(self._rows)


class ReadConnection:
    """What the ledger's readers use of a `sqlite3.Connection`, on PostgreSQL: `execute(sql, params)` with
    the SQLite query text, rows as tuples of plain values, `close()`. `PRAGMA user_version` and
    `PRAGMA table_info(requests)` answer as SQLite would, so reports need no second code path."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = connect(url, read_only=True)
        self._columns: list[str] | None = None

    def columns(self) -> list[str]:
        """The ledger table's columns, in order (looked up once per connection)."""
        if self._columns is None:
            self._columns = [row[1] for row in self.execute(f"PRAGMA table_info({TABLE})")]
        return self._columns

    def interrupt(self) -> None:
        """Cancel the query running now (from another thread), as `sqlite3.Connection.interrupt` does."""
        self.conn.cancel_safe(timeout=2)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        text = sql.strip()
        if text.upper() == "PRAGMA USER_VERSION":
            return _Cursor([(schema_version(self.conn),)])
        if text.upper() == f"PRAGMA TABLE_INFO({TABLE.upper()})":
            rows = self.conn.execute(
                "SELECT ordinal_position - 1, column_name, data_type, is_nullable = 'NO', column_default, "
                "column_name = 'id' FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s ORDER BY ordinal_position", (TABLE,)).fetchall()
            return _Cursor([tuple(r) for r in rows])
        cursor = self.conn.execute(to_postgres(sql), tuple(params) or None)
        rows = [tuple(_plain(v) for v in row) for row in cursor.fetchall()] if cursor.description else []
        return _Cursor(rows, cursor.rowcount)

    def close(self) -> None:
        self.conn.close()


def schema_version(conn: Any) -> int:
    try:
        with conn.transaction():
            row = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()
    except Exception:
        return 0
    return int(row[0] or 0)


def open_readonly(url: str) -> ReadConnection:
    """A read-only connection to an existing ledger; raises LedgerError when it is not one."""
    psycopg = _psycopg()

    reader = ReadConnection(url)
    try:
        reader.conn.execute(f"SELECT started_at, cost_microusd FROM {TABLE} LIMIT 0")
    except psycopg.Error as exc:
        reader.close()
        raise LedgerError(f"{redact(url)} holds no oaigate ledger ({_scrub(str(exc).strip(), url)})") from None
    return reader


def read_rows(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query (SQLite text) on the ledger; none when it has no `requests` table yet. Any other
    failure (unreachable, not allowed to read) raises LedgerError: never read as empty."""
    psycopg = _psycopg()

    reader = ReadConnection(url)
    try:
        return reader.execute(sql, params).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    except psycopg.Error as exc:
        raise LedgerError(f"cannot read the ledger at {redact(url)}: {_scrub(str(exc).strip(), url)}") from None
    finally:
        reader.close()


def relation_size(conn: Any) -> int:
    """Bytes the ledger's table takes, with its indexes and TOAST."""
    row = conn.execute(f"SELECT COALESCE(pg_total_relation_size(to_regclass('{TABLE}')), 0)").fetchone()
    return int(row[0])


def delete_before(url: str, cutoff: str, *, batch: int, vacuum: bool, dry_run: bool) -> tuple[int, int, int, int]:
    """`oaigate ledger prune` on PostgreSQL: (deleted, remaining, bytes before, bytes after).

    Deletes in transactions of `batch` rows, so writers are never held up for long."""
    psycopg = _psycopg()

    with connect(url) as conn:
        try:
            conn.execute(f"SELECT started_at FROM {TABLE} LIMIT 0")
        except psycopg.Error as exc:
            raise LedgerError(f"{redact(url)} holds no oaigate ledger ({_scrub(str(exc).strip(), url)})") \
                from None
        size_before = relation_size(conn)
        if dry_run:
            deleted = conn.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE started_at < %s", (cutoff,)).fetchone()[0]
        else:
            deleted = 0
            while True:
                count = conn.execute(f"DELETE FROM {TABLE} WHERE ctid IN (SELECT ctid FROM {TABLE} WHERE "
                                     "started_at < %s ORDER BY started_at LIMIT %s)", (cutoff, batch)).rowcount
                deleted += count
                if count < batch:
                    break
            if vacuum:
                conn.execute(f"VACUUM FULL {TABLE}")
        remaining = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0] - (deleted if dry_run else 0)
        return int(deleted), int(remaining), size_before, relation_size(conn)


# --- writing ---------------------------------------------------------------------------------------

_NAMES = ", ".join(COLUMNS)
_UPDATE = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
INSERT = (f"INSERT INTO {TABLE} ({_NAMES}) VALUES ({', '.join('%s' for _ in COLUMNS)}) "
          f"ON CONFLICT (id) DO UPDATE SET {_UPDATE}")
_STAGE = "oaigate_incoming"
_STAGE_SQL = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (LIKE {TABLE} INCLUDING DEFAULTS, "
              "oaigate_seq bigserial) ON COMMIT DELETE ROWS")
_MERGE = (f"INSERT INTO {TABLE} ({_NAMES}) SELECT DISTINCT ON (id) {_NAMES} FROM {_STAGE} "
          f"ORDER BY id, oaigate_seq DESC ON CONFLICT (id) DO UPDATE SET {_UPDATE}")
_ROW = f"({', '.join('%s' for _ in COLUMNS)})"
METHODS = ("auto", "copy", "executemany")
COPY_FROM = 100  # rows: below, one INSERT is faster; above, COPY (benchmarks/pg_ledger.py)


def write_batch(conn: Any, batch: Sequence[Sequence[Any]], method: str = "auto") -> None:
    """One transaction: every row of `batch` (values in `COLUMNS` order) is in the ledger after it.

    "auto": executemany for batches under `COPY_FROM` rows, COPY for bigger ones."""
    if method == "auto":
        method = "copy" if len(batch) >= COPY_FROM else "executemany"
    with conn.transaction():
        if method == "executemany":
            # one statement (the summary's triggers run once per statement, and lock the hours they add
            # to in one order), each id once (the last of its rows wins, as in a COPY batch)
            rows = list({row[0]: row for row in batch}.values())
            values = ", ".join(_ROW for _ in rows)
            conn.execute(f"INSERT INTO {TABLE} ({_NAMES}) VALUES {values} ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                         [value for row in rows for value in row])
            return
        conn.execute(_STAGE_SQL)
        with conn.cursor() as cur, cur.copy(f"COPY {_STAGE} ({_NAMES}) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        conn.execute(_MERGE)


class PgLedgerWriter(LedgerWriter):
    """`LedgerWriter` writing to PostgreSQL at `url` (which may hold the password; never shown)."""

    backend = "postgresql"

    def __init__(self, url: str, *, method: str = "auto", **kwargs: Any) -> None:
        kwargs.pop("synchronous", None)
        super().__init__(redact(url), **kwargs)
        self.url = url
        self.method = method
        self.synchronous = "server"  # a commit is as durable as the server's synchronous_commit makes it

    def start(self) -> None:
        with connect(self.url) as conn:  # create and migrate now, so a bad URL fails at startup
            migrate(conn)
        self._thread.start()

    @property
    def _errors(self) -> tuple[type[Exception], ...]:  # type: ignore[override]
        return (_psycopg().Error, LedgerError)

    def _connect(self) -> Any:
        return connect(self.url)

    def _write(self, conn: Any, batch: list[tuple[Any, ...]]) -> None:
        write_batch(conn, batch, self.method)


# --- copying a SQLite ledger in --------------------------------------------------------------------

COPY_BATCH = 5000


def copy_from_sqlite(source: Any, url: str, *, batch: int = COPY_BATCH,
                     progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Every row of the SQLite ledger open on `source` (a read-only `sqlite3.Connection`) into the
    PostgreSQL ledger at `url`, created or migrated first: batches of `batch` rows, each one COPY merged
    by id in one transaction (`write_batch`), so running it again, or after an interruption, gives the
    same table. Columns an older file lacks are NULL (`simulated`: 0). `progress(copied, total)` after
    each batch. Returns (rows copied, rows now in the PostgreSQL ledger)."""
    have = [r[1] for r in source.execute("PRAGMA table_info(requests)")]
    picked = [c if c in have else ("0" if c == "simulated" else "NULL") for c in COLUMNS]
    total = source.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    copied = 0
    try:
        with connect(url) as conn:
            migrate(conn)
            cursor = source.execute(f"SELECT {', '.join(picked)} FROM requests ORDER BY rowid")
            while chunk := cursor.fetchmany(batch):
                write_batch(conn, chunk, "copy")
                copied += len(chunk)
                if progress is not None:
                    progress(copied, total)
            held = conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
    except _psycopg().Error as exc:
        raise LedgerError(f"copying into {redact(url)} stopped after {copied:,} rows (run it again to resume): "
                          f"{_scrub(str(exc).strip(), url)}") from None
    return copied, int(held)
