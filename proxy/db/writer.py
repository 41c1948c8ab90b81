"""The one ledger writer: rows queue up from the event loop and a thread inserts them in batches.

The request path only calls `submit`: an append to a deque, which wakes nobody. The writer thread
wakes every `interval_s`, takes everything queued and inserts it in one transaction, so the event
loop never waits on SQLite and never fights the writer for the GIL once per request. A locked
database or a full disk never stalls a client: the writer keeps its batch and retries with backoff
while new rows wait in the bounded queue; rows that do not fit are counted in `dropped`, which
`/healthz` reports.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from typing import Any

from .schema import COLUMNS, connect

log = logging.getLogger("oaigate.ledger")

_INSERT = "INSERT OR REPLACE INTO requests ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("?" for _ in COLUMNS)
)


class LedgerWriter:
    """Start with `start()`; `submit(row)` from anywhere; `flush()` waits; `close()` flushes and stops."""

    def __init__(self, path: str, *, max_queue: int = 100_000, interval_s: float = 0.05,
                 max_retry_delay_s: float = 5.0) -> None:
        self.path = path
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._max_queue, self._interval_s, self._max_retry_delay_s = max_queue, interval_s, max_retry_delay_s
        self._in_flight = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oaigate-ledger", daemon=True)

    def start(self) -> None:
        connect(self.path).close()  # create and migrate now, so a bad path fails at startup
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row; never blocks. A full queue drops the row and counts it."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            log.error("ledger queue full: a row was dropped (%d so far)", self.dropped)
            return
        self._queue.append(tuple(row.get(c) for c in COLUMNS))

    @property
    def backlog(self) -> int:
        """Rows submitted and not written yet."""
        return len(self._queue) + self._in_flight

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row submitted so far is written (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while self.backlog:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(self._interval_s / 5)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued, then stop the thread."""
        if self._thread.is_alive():
            self.flush(timeout)
            self._stop.set()
            self._thread.join(timeout)

    def _take(self) -> list[tuple[Any, ...]]:
        count = len(self._queue)
        self._in_flight = count  # before popping: `backlog` must never miss a row that is not written yet
        return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not (self._stop.is_set() and not self._queue):
            self._stop.wait(self._interval_s)
            batch = self._take()
            delay = 0.05
            while batch:
                try:
                    conn = conn or connect(self.path)
                    with conn:
                        conn.execute("BEGIN")
                        conn.executemany(_INSERT, batch)
                except sqlite3.Error as exc:
                    self.failures += 1
                    log.warning("ledger write failed (%s); retrying %d rows in %.2fs", exc, len(batch), delay)
                    if conn is not None:
                        conn.close()
                        conn = None
                    time.sleep(delay)
                    delay = min(delay * 2, self._max_retry_delay_s)
                    continue
                self.written += len(batch)
                self._in_flight = 0
                batch = []
        if conn is not None:
            conn.close()
