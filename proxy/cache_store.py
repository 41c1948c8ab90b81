"""Where the response cache keeps answers: the `CacheStore` interface, and its SQLite implementation.

A store maps a key (a hex digest the `cache` stage computes) to a `CachedAnswer` until it expires. It
is async so a store over the network (Redis, for gateways sharing a `[state] url`) slots in with the
same interface; the SQLite store does its work in a thread, never on the event loop. Each store keeps
its total size under `max_bytes`, dropping expired answers first, then the oldest.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .wire.jsoncodec import dumps, loads


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A successful answer as the client received it: status, the headers kept, the body (a stream's
    SSE frames, byte for byte, as the upstream sent them), and when it was stored (wall seconds)."""

    status: int
    headers: dict[str, str]
    body: bytes
    stream: bool
    created: float

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items())


class CacheStore(Protocol):
    """What the `cache` stage needs of a store."""

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        """The answer stored under `key`, unless it expired by `now` (wall seconds)."""

    async def put(self, key: str, answer: CachedAnswer, expires: float) -> bool:
        """Keep `answer` until `expires`; False when it cannot fit in the store at all."""

    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, expires REAL NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL,
    status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created);
"""


class SQLiteCacheStore:
    """Answers in one SQLite file (WAL). One connection, used from worker threads one at a time."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path, self.max_bytes = str(path), max_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._total = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()[0]
            self._conn = conn
        return self._conn

    def open(self) -> None:
        """Create the file now (at start), so a bad path fails then, not on the first request."""
        with self._lock:
            self._db()

    async def get(self, key: str, now: float) -> CachedAnswer | None:
        return await asyncio.to_thread(self._get, key, now)

    async def put(self, key: str, answer: CachedAnswer, expires: float) -> bool:
        return await asyncio.to_thread(self._put, key, answer, expires)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    @property
    def total_bytes(self) -> int:
        return self._total

    def _get(self, key: str, now: float) -> CachedAnswer | None:
        with self._lock:
            row = self._db().execute("SELECT expires, created, status, headers, body, stream FROM answers "
                                     "WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] <= now:
            return None
        expires, created, status, headers, body, stream = row
        return CachedAnswer(status, loads(headers), bytes(body), bool(stream), created)

    def _put(self, key: str, answer: CachedAnswer, expires: float) -> bool:
        size = answer.size
        if size > self.max_bytes:
            return False
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute("SELECT size FROM answers WHERE key = ?", (key,)).fetchone()
                db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (key, expires, answer.created, size, answer.status, dumps(answer.headers).decode(),
                            answer.body, int(answer.stream)))
                total = self._total + size - (old[0] if old else 0)
                if total > self.max_bytes:
                    total -= self._evict(db, total - self.max_bytes, answer.created, key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._total = total
        return True

    @staticmethod
    def _evict(db: sqlite3.Connection, needed: int, now: float, keep: str) -> int:
        """Drop expired answers, then the oldest, until `needed` bytes are freed; the bytes freed."""
        freed = 0
        rows = db.execute("SELECT key, size FROM answers WHERE key != ? ORDER BY expires > ?, created",
                          (keep, now)).fetchall()
        for key, size in rows:
            if freed >= needed:
                break
            db.execute("DELETE FROM answers WHERE key = ?", (key,))
            freed += size
        return freed

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


__all__ = ["CacheStore", "CachedAnswer", "SQLiteCacheStore"]
