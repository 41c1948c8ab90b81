"""The one ledger writer: rows queue up from the event loop and a thread inserts them in batches.

The request path only calls `submit` (a non-blocking put). A locked database or a full disk never
stalls a client: the writer keeps its batch and retries with backoff while new rows wait in the
bounded queue; rows that do not fit are counted in `dropped`, which `/healthz` reports.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from typing import Any

from .schema import COLUMNS, connect

log = logging.getLogger("oaigate.ledger")

_STOP = object()
_INSERT = "INSERT OR REPLACE INTO requests ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("?" for _ in COLUMNS)
)


class LedgerWriter:
    """Start with `start()`; `submit(row)` from anywhere; `close()` flushes and stops."""

    def __init__(self, path: str, *, max_queue: int = 100_000, batch_size: int = 500, batch_wait_s: float = 0.05):
        self.path = path
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._queue: queue.Queue[Any] = queue.Queue(max_queue)
        self._batch_size, self._batch_wait_s = batch_size, batch_wait_s
        self._thread = threading.Thread(target=self._run, name="oaigate-ledger", daemon=True)
        self._idle = threading.Condition()
        self._pending = 0

    def start(self) -> None:
        connect(self.path).close()  # create and migrate now, so a bad path fails at startup
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        """Queue a row; never blocks. A full queue drops the row and counts it."""
        values = tuple(row.get(c) for c in COLUMNS)
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(values)
        except queue.Full:
            with self._idle:
                self._pending -= 1
            self.dropped += 1
            log.error("ledger queue full: a row was dropped (%d so far)", self.dropped)

    @property
    def backlog(self) -> int:
        """Rows submitted and not written yet."""
        return self._pending

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted row is written (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush what is queued, then stop the thread."""
        if self._thread.is_alive():
            self.flush(timeout)
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
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
                    delay = min(delay * 2, 5.0)
                    continue
                self.written += len(batch)
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()
                batch = []
        if conn is not None:
            conn.close()

    def _next_batch(self) -> tuple[list[tuple[Any, ...]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False
