"""Ledger schema, created and migrated with sqlite-utils; the version lives in `PRAGMA user_version`.

One row per request in `requests`; views `spend_by_day`, `spend_by_model`, `spend_by_key`. Money is
integer micro-dollars (`cost_microusd`); the views add a `cost_usd` column for people.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from .reports import LedgerError, sqlite_ledger_error

_V1_COLUMNS: dict[str, type] = {
    "id": str,
    "started_at": str,
    "finished_at": str,
    "key_name": str,
    "method": str,
    "endpoint": str,
    "model_requested": str,
    "model_served": str,
    "status": int,
    "stream": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "cached_tokens": int,
    "reasoning_tokens": int,
    "usage_source": str,
    "cost_microusd": int,
    "latency_ms": float,
    "ttfb_ms": float,
    "overhead_ms": float,
    "upstream": str,
    "attempts": int,
    "fixture": str,
    "error_type": str,
    "upstream_request_id": str,
    "request_body": str,
    "response_body": str,
}
_V6_COLUMNS: dict[str, type] = {"finish_reason": str, "fallback_from": str, "models_tried": int, "cache": str,
                                "saved_microusd": int}
COLUMNS: dict[str, type] = {**_V1_COLUMNS, "replayed_cost_microusd": int, "object_id": str, "simulated": int,
                            **_V6_COLUMNS}

_SPEND = """
SELECT {group} AS {name}, COUNT(*) AS requests,
       SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
       SUM(CASE WHEN simulated <> 0 THEN 0 ELSE cost_microusd END) AS cost_microusd,
       ROUND(SUM(CASE WHEN simulated <> 0 THEN 0 ELSE cost_microusd END) / 1e6, 6) AS cost_usd,
       SUM(CASE WHEN simulated <> 0 THEN COALESCE(replayed_cost_microusd, cost_microusd) END) AS simulated_microusd,
       SUM(cost_microusd IS NULL AND prompt_tokens IS NOT NULL AND status BETWEEN 200 AND 399)
           AS unpriced_requests,
       SUM(usage_source = 'estimated') AS estimated_requests
FROM requests GROUP BY 1 ORDER BY 1
"""
_GROUPS = {"spend_by_day": ("substr(started_at, 1, 10)", "day"),
           "spend_by_model": ("COALESCE(model_served, model_requested)", "model"),
           "spend_by_key": ("key_name", "key_name")}
VIEWS = {view: _SPEND.format(group=group, name=name) for view, (group, name) in _GROUPS.items()}
_V1_VIEWS = {view: sql.replace("CASE WHEN simulated <> 0 THEN 0 ELSE cost_microusd END", "cost_microusd")
             .replace("SUM(CASE WHEN simulated <> 0 THEN COALESCE(replayed_cost_microusd, cost_microusd) END) AS "
                      "simulated_microusd,", "")
             for view, sql in VIEWS.items()}


def _v1(db: sqlite_utils.Database) -> None:
    db.table("requests").create(_V1_COLUMNS, pk="id", not_null={"started_at", "endpoint", "status"})
    db.table("requests").create_index(["started_at"])
    db.table("requests").create_index(["key_name", "started_at"])
    for name, sql in _V1_VIEWS.items():
        db.create_view(name, sql, replace=True)


def _v2(db: sqlite_utils.Database) -> None:
    """What a replayed fixture would have cost live (its own cost is 0)."""
    db.table("requests").add_column("replayed_cost_microusd", int)


def _v3(db: sqlite_utils.Database) -> None:
    """The id of the object a request created (file, batch, response, stored completion...): who owns
    it, and what a chained request builds on."""
    db.table("requests").add_column("object_id", str)
    db.table("requests").create_index(["object_id"])


def _v4(db: sqlite_utils.Database) -> None:
    """Rows answered by oaigate's mock or a replayed fixture are `simulated`: the views count their cost
    apart (`simulated_microusd`), never as real spend."""
    db.table("requests").add_column("simulated", int, not_null_default=0)
    for name, sql in VIEWS.items():
        db.create_view(name, sql, replace=True)


def _v5(db: sqlite_utils.Database) -> None:
    """Why an answer ended (`finish_reason`), which model it fell back from and how many were tried, and
    whether the response cache answered it (`cache`, with what that saved, `saved_microusd`). Columns
    are added only where missing, so this runs after any other migration that rebuilt the table."""
    table = db.table("requests")
    present = set(table.columns_dict)
    for name, kind in _V6_COLUMNS.items():
        if name not in present:
            table.add_column(name, kind)


def _v6(db: sqlite_utils.Database) -> None:
    """The `object_id` index holds only the rows that created an object: most rows (chat completions
    not stored, embeddings...) have none, and leaving them out of it spares every ledger commit a page
    (a one-row commit: ~53 -> ~40 us). Every query on it asks for `object_id IS NOT NULL` or an id."""
    db.execute("DROP INDEX IF EXISTS idx_requests_object_id")
    db.execute("CREATE INDEX idx_requests_object_id ON requests (object_id) WHERE object_id IS NOT NULL")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v1, _v2, _v3, _v4, _v5, _v6]
SCHEMA_VERSION = len(MIGRATIONS)


SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def connect(path: str, synchronous: str = "normal") -> sqlite3.Connection:
    """Open (creating and migrating) the ledger in WAL mode.

    `synchronous`: "normal" (a commit is written to the WAL, not fsynced: it survives the process
    being killed, the last commits may be lost on power loss) or "full" (each commit is fsynced: it
    also survives power loss, at the cost of one fsync per commit)."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[synchronous]}")
    migrate(conn)
    return conn


def prepare(path: str, synchronous: str = "normal") -> None:
    """Create the ledger file if need be and migrate it, now (at start, so a bad ledger stops the start):
    one that cannot be opened, is no ledger, or is newer than this oaigate raises LedgerError."""
    try:
        connect(path, synchronous).close()
    except sqlite3.DatabaseError as exc:
        raise sqlite_ledger_error(path, exc, "open") from None
    except LedgerError as exc:  # its schema is newer than this oaigate's
        raise LedgerError(f"{path}: {exc}") from None


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations newer than the file's `user_version`, each in its own transaction."""
    db = sqlite_utils.Database(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"ledger schema version {version} is newer than this oaigate ({SCHEMA_VERSION})")
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.conn:
            conn.execute("BEGIN")
            step(db)
            conn.execute(f"PRAGMA user_version = {number}")
