"""Which ledger: a SQLite file (the default) or a PostgreSQL URL. Callers go through here, never to either.

A ledger is named by one string, `db`: a file path, or `postgresql://USER@HOST:PORT/DB` (the password
in the URL, in `[ledger] password_env`, or wherever libpq looks: `PGPASSWORD`, `~/.pgpass`).
`target(config.ledger)` is that string for a gateway; `open_writer`, `read_rows`, `connect_readonly`,
`info` and `prune` do the same thing on both engines; `shown(db)` is how to print it (no password).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import click

from .reports import LedgerError, LedgerInfo, ledger_file_exists, open_sqlite, sqlite_ledger_error

if TYPE_CHECKING:
    from ..config import LedgerConfig as _LedgerSettings
    from .writer import LedgerWriter

SCHEMES = ("postgresql://", "postgres://")

__all__ = ["LedgerError", "connect_readonly", "info", "is_url", "open_writer", "prune", "read_rows", "redact",
           "shown", "target"]


def is_url(db: object) -> bool:
    """Whether `db` names a PostgreSQL ledger rather than a file."""
    return isinstance(db, str) and db.startswith(SCHEMES)


def redact(url: str) -> str:
    """The URL without its password (`postgresql://user:***@host/db`), safe to print."""
    parts = urlsplit(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    if "password=" in parts.query:
        query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def with_password(url: str, password: str | None) -> str:
    """`url` with `password` in it, unless it has one already or there is none."""
    parts = urlsplit(url)
    if not password or parts.password is not None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    if not user:
        raise LedgerError(f"{url}: a password needs a user name in the URL (postgresql://USER@HOST/DB)")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def target(ledger: _LedgerSettings) -> str:
    """The ledger a gateway writes: `[ledger] url` (with the password from `password_env`), else `path`
    (which may be a URL too: `oaigate serve --db postgresql://...`)."""
    url = ledger.url or (ledger.path if is_url(ledger.path) else None)
    if not url:
        return ledger.path
    password = os.environ.get(ledger.password_env) if ledger.password_env else None
    if ledger.password_env and not password:
        raise LedgerError(f"[ledger] password_env: the environment variable {ledger.password_env} is not set")
    return with_password(url, password)


def shown(db: str | Path) -> str:
    """`db` as it may be printed: a URL without its password."""
    return redact(db) if isinstance(db, str) and is_url(db) else str(db)


def open_writer(ledger: _LedgerSettings) -> LedgerWriter:
    """The one batching writer for the configured ledger (not started)."""
    db = target(ledger)
    if is_url(db):
        from .postgres import PgLedgerWriter

        return PgLedgerWriter(db)
    from .writer import LedgerWriter

    return LedgerWriter(db, synchronous=ledger.synchronous)


def read_rows(db: str | Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query (SQLite's dialect, `?` placeholders) on the ledger, at start, off the
    event loop; none when there is no ledger yet (no file, no `requests` table). A ledger that is there
    but cannot be read (locked by another process, not a database, an unreachable PostgreSQL) raises
    LedgerError: never read as empty, which would start every budget from nothing."""
    if is_url(db):
        from .postgres import read_rows as pg_rows

        return pg_rows(str(db), sql, params)
    if not ledger_file_exists(db):
        return []
    try:
        conn = open_sqlite(db)
        try:
            return conn.execute(sql, tuple(params)).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if str(exc).startswith("no such table: requests"):
            return []  # a database the writer has not migrated yet
        raise sqlite_ledger_error(db, exc) from None


def connect_readonly(db: str | Path) -> Any:
    """A read-only connection for `reports` (a `sqlite3.Connection`, or its PostgreSQL stand-in)."""
    if is_url(db):
        from .postgres import open_readonly as pg_open

        return pg_open(str(db))
    from .reports import open_readonly

    return open_readonly(db)


def info(conn: Any, db: str | Path) -> LedgerInfo:
    """`reports.ledger_info` for either engine (on PostgreSQL the size is the table's, indexes included)."""
    from .reports import ledger_info

    if not is_url(db):
        return ledger_info(conn, Path(db).resolve())
    from dataclasses import replace

    from .postgres import relation_size

    facts = ledger_info(conn, shown(db))
    return replace(facts, size_bytes=relation_size(conn.conn))


def prune(db: str | Path, before: datetime, *, vacuum: bool = False, dry_run: bool = False) -> Any:
    """`prune.prune` for either engine: a `PruneResult`."""
    from .prune import BATCH, PruneResult
    from .prune import prune as sqlite_prune

    if not is_url(db):
        return sqlite_prune(db, before, vacuum=vacuum, dry_run=dry_run)
    from .postgres import delete_before
    from .reports import ledger_time

    cutoff = ledger_time(before)
    deleted, remaining, size_before, size_after = delete_before(str(db), cutoff, batch=BATCH, vacuum=vacuum,
                                                                dry_run=dry_run)
    return PruneResult(cutoff, deleted, remaining, size_before, size_after, vacuum and not dry_run, dry_run)


def ledger_db(ledger: _LedgerSettings) -> Path | str:
    """`target` as the ledger commands take it: a Path for a file, the URL as it is."""
    db = target(ledger)
    return db if is_url(db) else Path(db)


class _LedgerParam(click.ParamType):
    """`--db`: a ledger file (a Path; not a directory) or a PostgreSQL URL (kept as text)."""

    name = "FILE|URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, Path) or is_url(value):
            return value
        if "://" in value:  # not shown: it may hold a password
            self.fail("a URL must be postgresql://USER@HOST:PORT/DB (or postgres://, in lower case)", param, ctx)
        if Path(value).is_dir():
            self.fail(f"{value!r} is a directory", param, ctx)
        return Path(value)


LEDGER = _LedgerParam()
