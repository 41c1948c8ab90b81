"""Deleting old ledger rows (`oaigate ledger prune`), safe to run next to a live gateway.

Rows go in small transactions so the gateway's writer is never locked out for long; its rows wait
in its queue meanwhile. VACUUM (optional) gives the freed pages back to the filesystem.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .reports import LedgerError, disk_size, ledger_time, open_sqlite, sqlite_ledger_error

BATCH = 5_000

_DELETE = ("DELETE FROM requests WHERE rowid IN "
           "(SELECT rowid FROM requests WHERE started_at < ? ORDER BY started_at LIMIT ?)")


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a prune did (or, with `dry_run`, would do)."""

    before: str
    deleted: int
    remaining: int
    size_before: int
    size_after: int
    vacuumed: bool
    dry_run: bool


def prune(path: str | Path, before: datetime, *, vacuum: bool = False, dry_run: bool = False,
          batch: int = BATCH) -> PruneResult:
    """Delete the requests started before `before`; with `vacuum`, compact the file afterwards."""
    file = Path(path)
    if not file.is_file():
        raise LedgerError(f"no ledger at {file}")
    cutoff = ledger_time(before)
    size_before = disk_size(file)
    mode = "ro" if dry_run else "rw"
    conn = open_sqlite(file, mode, isolation_level=None)
    try:
        try:
            conn.execute("SELECT started_at FROM requests LIMIT 0")
        except sqlite3.DatabaseError as exc:
            raise sqlite_ledger_error(file, exc, "prune") from None
        if dry_run:
            deleted = conn.execute("SELECT COUNT(*) FROM requests WHERE started_at < ?", (cutoff,)).fetchone()[0]
        else:
            deleted = _delete(conn, cutoff, batch)
            if vacuum:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        remaining = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] - (deleted if dry_run else 0)
    except sqlite3.OperationalError as exc:
        raise sqlite_ledger_error(file, exc, "prune") from None
    finally:
        conn.close()
    return PruneResult(cutoff, deleted, remaining, size_before, disk_size(file), vacuum and not dry_run, dry_run)


def _delete(conn: sqlite3.Connection, cutoff: str, batch: int) -> int:
    deleted = 0
    while True:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            count = conn.execute(_DELETE, (cutoff, batch)).rowcount
        deleted += count
        if count < batch:
            return deleted
