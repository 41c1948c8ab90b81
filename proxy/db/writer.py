"""The one ledger writer: rows queue up from the event loop and a thread commits them in batches.

The request path calls `submit`: an append to a deque that wakes the writer thread if it sleeps, once
the event loop is through with the callbacks at hand (a wake while the loop holds the GIL only got the
thread switched in to wait for it, then out again: two switches per row at one connection). The
thread takes everything queued and inserts it in one transaction (group commit): rows submitted while
it commits batch N go into batch N+1, so the event loop never waits on SQLite and a busy gateway pays
one commit per batch, not per row. A response that must not go out before its row is durable awaits
`wait_written(ticket, timeout)`; the thread tells the loop once per committed batch
(`call_soon_threadsafe`). The wait is bounded: a locked database or a full disk never stalls a
client beyond `timeout` (the miss is counted in `durability_timeouts`); the writer keeps its batch and
retries with backoff while new rows wait in the bounded queue; rows that do not fit are counted in
`dropped`. `/healthz` reports all three.

Committed means written to the OS (WAL, `synchronous = NORMAL`): it survives the process being
killed. `synchronous = "full"` also fsyncs each commit, so it survives power loss.

The WAL is checkpointed into the database by a thread of its own, every `checkpoint_s` while rows
come in (`PRAGMA wal_checkpoint(PASSIVE)`: commits go on meanwhile), not by the commit that happens to
fill it: SQLite's automatic checkpoint (and its fsyncs) ran inside a commit every ~1,000 pages, and the
answers waiting on that commit waited for it too. The automatic one stays as a backstop, at
`AUTOCHECKPOINT_PAGES`.

An idle ledger costs nothing: both threads sleep until there is work (a row, a commit to checkpoint,
`close`), with no timeout to poll on. A thread woken by a timer cost ~70 us of CPU per wake on the VM
this was measured on, and the two used to wake 22 times a second between them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import sqlite3
import threading
import time
from typing import Any

from .schema import COLUMNS, connect, prepare

log = logging.getLogger("oaigate.ledger")

_INSERT = "INSERT OR REPLACE INTO requests ({}) VALUES ".format(", ".join(COLUMNS))
_ROW = "({})".format(", ".join("?" for _ in COLUMNS))
# rows per INSERT statement: SQLite binds at most 32,766 parameters (999 before 3.32)
ROWS_PER_STATEMENT = (32766 if sqlite3.sqlite_version_info >= (3, 32) else 999) // len(COLUMNS)
CHECKPOINT_S = 0.5  # how long after a commit the checkpointer checkpoints (commits meanwhile join it)
AUTOCHECKPOINT_PAGES = 10_000  # the backstop: a commit checkpoints once the WAL holds this many pages
_TIMEOUT_LOG_EVERY_S = 60.0
_COMPACT_WAITERS = 4096


@functools.lru_cache(maxsize=64)
def _insert(rows: int) -> str:
    """The INSERT statement for `rows` rows."""
    return _INSERT + ", ".join([_ROW] * rows)


class LedgerWriter:
    """Start with `start()`; `submit(row)` from the event loop (or one other thread); `wait_written`
    on the loop; `flush()` waits from a thread (looking every `interval_s`); `close()` flushes and
    stops."""

    def __init__(self, path: str, *, max_queue: int = 100_000, interval_s: float = 0.05,
                 max_retry_delay_s: float = 5.0, synchronous: str = "normal",
                 checkpoint_s: float = CHECKPOINT_S) -> None:
        self.path = path
        self.checkpoint_s = checkpoint_s
        self.checkpoints = 0  # WAL checkpoints the checkpointer ran
        self.synchronous = synchronous
        self.dropped = 0
        self.accepted = 0  # rows queued so far: the ticket of the latest row
        self.written = 0  # rows committed so far; rows commit in ticket order
        self.batches = 0
        self.failures = 0
        self.durability_timeouts = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._max_queue, self._interval_s, self._max_retry_delay_s = max_queue, interval_s, max_retry_delay_s
        self._in_flight = 0
        self._stop = threading.Event()
        self._dirty = threading.Event()  # rows were committed since the last checkpoint began
        # wake-up tokens for the writer thread: a C-level queue costs far less per wake than an Event
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: collections.deque[tuple[int, asyncio.Future[bool], float]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._sleeping = True  # the writer thread is (about to be) blocked on `_wake`
        self._timeout_logged = -_TIMEOUT_LOG_EVERY_S
        self._thread = threading.Thread(target=self._run, name="oaigate-ledger", daemon=True)
        self._checkpointer = threading.Thread(target=self._checkpoint, name="oaigate-checkpoint", daemon=True)

    def start(self) -> None:
        prepare(self.path, self.synchronous)  # a bad ledger stops the start, with its reason
        self._thread.start()
        self._checkpointer.start()

    def submit(self, row: dict[str, Any]) -> int | None:
        """Queue a row; never blocks. Returns its ticket for `wait_written`, or None when the queue is
        full: then the row is dropped and counted."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            log.error("ledger queue full: a row was dropped (%d so far)", self.dropped)
            return None
        self._queue.append(tuple(map(row.get, COLUMNS)))
        self.accepted += 1
        if self._sleeping:  # a busy writer takes this row without a wake-up
            self._sleeping = False  # one token per sleep
            try:
                asyncio.get_running_loop().call_soon(self._wake.put, None)
            except RuntimeError:  # not on the loop (a thread): at once
                self._wake.put(None)
        return self.accepted

    async def wait_written(self, ticket: int, timeout: float) -> bool:
        """Wait (on the event loop) until the row `ticket` and every row before it is committed, at
        most `timeout` seconds. False, and counted in `durability_timeouts`, if that took too long.

        One future per wait and one timer for all of them (armed at the earliest deadline, and left
        armed when the waits end early: waits share one timeout, so a later wait's deadline is never
        earlier), so a gateway does not pay a timer per request."""
        if self.written >= ticket:
            return True
        if not self._thread.is_alive():  # not started, stopped, or died: nothing will commit it
            self.durability_timeouts += 1
            return False
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        deadline = loop.time() + timeout
        if len(self._waiters) > _COMPACT_WAITERS:  # waits of clients that left (cancelled) pile up in an outage
            self._waiters = collections.deque(w for w in self._waiters if not w[1].done())
        self._waiters.append((ticket, done, deadline))
        if self.written >= ticket:  # committed between the first check and registering: no notice will come
            self._release()
        elif self._timer is None or deadline < self._timer.when():
            self._arm(loop, deadline)
        return await done

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """On the loop, at the earliest deadline: the waits past theirs give up (False)."""
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        kept: collections.deque[tuple[int, asyncio.Future[bool], float]] = collections.deque()
        missed, earliest = 0, None
        for waiter in self._waiters:
            done, deadline = waiter[1], waiter[2]
            if done.done():
                continue  # cancelled
            if deadline <= now:
                done.set_result(False)
                missed += 1
            else:
                kept.append(waiter)
                earliest = deadline if earliest is None else min(earliest, deadline)
        self._waiters = kept
        if earliest is not None:
            self._arm(self._loop, earliest)
        if missed:
            self.durability_timeouts += missed
            if now - self._timeout_logged >= _TIMEOUT_LOG_EVERY_S:
                self._timeout_logged = now
                log.warning("a ledger row was not committed within its wait: the response went on without it "
                            "(%d such responses so far; backlog %d)", self.durability_timeouts, self.backlog)

    def _release(self) -> None:
        """On the loop: wake the waiters whose rows are committed (tickets are in order)."""
        written, waiting = self.written, self._waiters
        while waiting and waiting[0][0] <= written:
            done = waiting.popleft()[1]
            if not done.done():  # not cancelled
                done.set_result(True)

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
            self._wake.put(None)
            self._thread.join(timeout)
        if self._checkpointer.is_alive():
            self._stop.set()
            self._dirty.set()
            self._checkpointer.join(timeout)

    def _take(self) -> list[tuple[Any, ...]]:
        count = len(self._queue)
        self._in_flight = count  # before popping: `backlog` must never miss a row that is not written yet
        return [self._queue.popleft() for _ in range(count)]

    def _committed(self) -> None:
        """On the writer thread, once per batch: tell the loop, whose waiters may now go on, and the
        checkpointer, if it sleeps for want of commits (once per checkpoint, not per batch)."""
        if not self._dirty.is_set():
            self._dirty.set()
        loop = self._loop
        if loop is not None and self._waiters:
            try:
                loop.call_soon_threadsafe(self._release)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                self._loop = None

    # the engine, behind the thread (proxy/db/postgres.py's writer overrides these three)
    _errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def _connect(self) -> Any:
        conn = connect(self.path, self.synchronous)
        conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")  # the checkpointer's backstop
        return conn

    def _checkpoint(self) -> None:
        """The checkpointer thread: once rows were committed, wait `checkpoint_s` (more commits gather),
        then copy the WAL's committed pages into the database without waiting for (or stopping) anyone.
        Sleeps until the next commit after that: an idle ledger never wakes it."""
        conn: sqlite3.Connection | None = None
        while True:
            self._dirty.wait()
            self._dirty.clear()  # commits from now on call for the next checkpoint
            if self._stop.wait(self.checkpoint_s):
                break
            try:
                conn = conn or sqlite3.connect(self.path, isolation_level=None)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error as exc:  # the writer's commits go on; the backstop still checkpoints
                log.warning("ledger checkpoint failed (%s)", exc)
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def _write(self, conn: Any, batch: list[tuple[Any, ...]]) -> None:
        """One transaction with every row of `batch`: one multi-row INSERT (a batch of up to
        `ROWS_PER_STATEMENT` rows commits in a single statement, so this thread gives up and takes back
        the GIL once, not once per row as `executemany` does; taking it back from a busy event loop is
        what a ledger row costs the most)."""
        if len(batch) <= ROWS_PER_STATEMENT:
            conn.execute(_insert(len(batch)), [value for row in batch for value in row])
            return
        with conn:
            conn.execute("BEGIN")
            for start in range(0, len(batch), ROWS_PER_STATEMENT):
                part = batch[start:start + ROWS_PER_STATEMENT]
                conn.execute(_insert(len(part)), [value for row in part for value in row])

    def _run(self) -> None:
        conn: Any = None
        while not (self._stop.is_set() and not self._queue):
            if not self._queue:
                self._sleeping = True  # before checking again: a row queued after that check wakes us
                if not self._queue:
                    self._wake.get()  # a row (`submit`) or `close` wakes us; an idle writer never wakes
                self._sleeping = False
            batch = self._take()
            delay = 0.05
            while batch:
                try:
                    conn = conn or self._connect()
                    self._write(conn, batch)
                except self._errors as exc:
                    self.failures += 1
                    log.warning("ledger write failed (%s); retrying %d rows in %.2fs", exc, len(batch), delay)
                    if conn is not None:
                        conn.close()
                        conn = None
                    time.sleep(delay)
                    delay = min(delay * 2, self._max_retry_delay_s)
                    continue
                self.written += len(batch)
                self.batches += 1
                self._in_flight = 0
                batch = []
                self._committed()
        if conn is not None:
            conn.close()
