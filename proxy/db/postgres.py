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
one transaction: a small batch with a pipelined `executemany` of `INSERT ... ON CONFLICT`, a big one
(100 rows and more, as under load or after an outage) with `COPY` into a temporary table merged by
one `INSERT ... ON CONFLICT` (benchmarks/pg_ledger.py measured both). A row written twice, by a
retry after a commit whose answer was lost, replaces itself as `INSERT OR REPLACE` does in SQLite.
A thread rather than psycopg's async connection in a task: adapting rows costs CPU, and on the
event loop it would delay every request in flight (the same benchmark measures the loop's lag).
Several gateway processes and machines may write one ledger at once.

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
        conn.execute(f"DELETE FROM {VERSION_TABLE}")
        conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


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
    """Rows of one query (SQLite text) on the ledger; none when it has no `requests` table yet."""
    psycopg = _psycopg()

    reader = ReadConnection(url)
    try:
        return reader.execute(sql, params).fetchall()
    except psycopg.errors.UndefinedTable:
        return []
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
METHODS = ("auto", "copy", "executemany")
COPY_FROM = 100  # rows: below, executemany (pipelined) is faster; above, COPY (benchmarks/pg_ledger.py)


def write_batch(conn: Any, batch: Sequence[Sequence[Any]], method: str = "auto") -> None:
    """One transaction: every row of `batch` (values in `COLUMNS` order) is in the ledger after it.

    "auto": executemany for batches under `COPY_FROM` rows, COPY for bigger ones."""
    if method == "auto":
        method = "copy" if len(batch) >= COPY_FROM else "executemany"
    with conn.transaction():
        if method == "executemany":
            with conn.cursor() as cur:
                cur.executemany(INSERT, batch)
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
