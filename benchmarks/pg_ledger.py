"""How the PostgreSQL ledger writes: COPY against executemany per batch size, and a thread against an async task.

Starts its own PostgreSQL (tests/postgres_server.py, fsync on, as a real server would run) and writes
the same realistic rows (tests/proxy/db/rows.py) in batches of 1, 10, 100 and 1,000 rows, one
transaction per batch, each way in rotating order (the machine is shared: its noise hits all alike);
prints the median rows/s over the rounds.

Then the question of where the writer runs: `PgLedgerWriter` (a thread with its own connection, as
proxy/db/writer.py does for SQLite) against psycopg's `AsyncConnection` in a task on the event loop.
A ticker on the loop measures how late it wakes (loop lag: what every request in flight would wait)
while 20,000 rows are submitted in bursts of 100 and written; prints p50/p99/max lag and the
loop's CPU time per 1,000 rows.

    python benchmarks/pg_ledger.py [--rounds 5] [--rows 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from proxy.db.postgres import INSERT, PgLedgerWriter, connect, migrate, write_batch  # noqa: E402
from proxy.db.schema import COLUMNS  # noqa: E402
from tests.postgres_server import postgres_server  # noqa: E402
from tests.proxy.db.rows import rows  # noqa: E402

BATCHES = (1, 10, 100, 1000)
METHODS = ("copy", "executemany")  # what the batch-size table compares


def tuples(count: int, seed: int) -> list[tuple[Any, ...]]:
    return [tuple(r[c] for c in COLUMNS) for r in rows(count, seed=seed)]


def batch_sizes(url: str, rounds: int, total: int) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {(m, b): [] for m in METHODS for b in BATCHES}
    conn = connect(url)
    migrate(conn)
    seed = 0
    for r in range(rounds):
        order = list(out)
        order = order[r % len(order):] + order[:r % len(order)]
        for method, size in order:
            seed += 1
            n = min(total, size * 300)  # small batches: fewer rows, the same number of commits is enough
            data = tuples(n, seed)
            start = time.perf_counter()
            for i in range(0, n, size):
                write_batch(conn, data[i:i + size], method)
            out[method, size].append(n / (time.perf_counter() - start))
        conn.execute("TRUNCATE requests")
    conn.close()
    return out


async def lag_while(write: Any, data: list[dict[str, Any]]) -> tuple[list[float], float]:
    """Loop lag samples (ms) while `write` handles `data`, and the loop's CPU seconds meanwhile."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - before - 0.001) * 1000)

    tick = asyncio.get_running_loop().create_task(ticker())
    cpu = time.thread_time()
    await write(data)
    cpu = time.thread_time() - cpu
    done.set()
    await tick
    return lags, cpu


async def thread_writer(url: str, data: list[dict[str, Any]]) -> None:
    writer = PgLedgerWriter(url)
    await asyncio.to_thread(writer.start)
    for i in range(0, len(data), 100):
        for row in data[i:i + 100]:
            writer.submit(row)
        await asyncio.sleep(0.005)
    while writer.backlog:
        await asyncio.sleep(0.005)
    await asyncio.to_thread(writer.close)


async def async_writer(url: str, data: list[dict[str, Any]]) -> None:
    """The alternative: an async connection in a task on the loop, taking what is queued each round."""
    queue: list[tuple[Any, ...]] = []
    finished = False

    async def drain() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while not finished or queue:
                batch = queue[:]
                del queue[:]
                if batch:
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.executemany(INSERT, batch)
                else:
                    await asyncio.sleep(0.005)

    task = asyncio.get_running_loop().create_task(drain())
    for i in range(0, len(data), 100):
        queue.extend(tuple(r[c] for c in COLUMNS) for r in data[i:i + 100])
        await asyncio.sleep(0.005)
    finished = True
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    with postgres_server(fsync=True) as server:
        url = server.database()
        print(f"PostgreSQL at 127.0.0.1:{server.port} (fsync on); median of {args.rounds} rounds")
        results = batch_sizes(url, args.rounds, args.rows)
        print(f"{'batch':>6} {'COPY rows/s':>12} {'executemany rows/s':>19} {'COPY/executemany':>17}")
        for size in BATCHES:
            copy, many = (statistics.median(results[m, size]) for m in METHODS)
            print(f"{size:>6} {copy:>12,.0f} {many:>19,.0f} {copy / many:>16.2f}x")
        data = rows(args.rows, seed=99)
        print(f"\nwriting {args.rows:,} rows submitted in bursts of 100 from the event loop:")
        print(f"{'writer':>22} {'lag p50 ms':>11} {'p99 ms':>8} {'max ms':>8} {'loop CPU ms/1k rows':>20}")
        for name, write in (("thread (PgLedgerWriter)", thread_writer), ("async task", async_writer)):
            target = server.database()
            with psycopg.connect(target, autocommit=True) as conn:
                migrate(conn)
            lags, cpu = asyncio.run(lag_while(lambda d, w=write, t=target: w(t, d), data))
            lags.sort()
            p99 = lags[int(len(lags) * 0.99)]
            print(f"{name:>22} {statistics.median(lags):>11.2f} {p99:>8.2f} {lags[-1]:>8.2f} "
                  f"{cpu / args.rows * 1e6:>20.1f}")


if __name__ == "__main__":
    main()
