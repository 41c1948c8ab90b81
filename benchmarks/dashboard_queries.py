"""The dashboard's queries on a big ledger (issue 11: under 200 ms each with 1,000,000 rows):

    PYTHONPATH=. python benchmarks/dashboard_queries.py [--rows 1000000] [--days 90] [--db PATH] [--http]
    PYTHONPATH=. python benchmarks/dashboard_queries.py --postgres [--rows 1000000] [--days 90]

Seeds a ledger (kept at --db when given, so a second run skips the seeding), then times, on a
read-only connection as the gateway runs them: the 30-day spend by day with its totals (what the page's
30 d range asks), the same split by model, and the first page (50 rows) of requests, unfiltered and
filtered by key. Prints the median and worst of 5 runs of each. With --http, also through a gateway
serving that ledger: GET /oaigate/spend?since=30d and /oaigate/requests?limit=50, end to end.

With --postgres, the same on a PostgreSQL ledger: starts its own server (tests/postgres_server.py,
fsync on), loads the rows with COPY, and times the queries as the gateway runs them there (whole
hours from the hourly summary the database keeps, the ends of the range from the table)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.db import queries
from proxy.db.reports import open_readonly
from proxy.db.schema import connect
from tests.proxy.dashboard.seed import insert, make_rows

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=90)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL ledger (its own server)")
    args = parser.parse_args()
    if args.postgres:
        postgres(args.rows, args.days, args.http)
        return
    folder = tempfile.TemporaryDirectory()
    db = args.db or Path(folder.name) / "ledger.db"
    conn = connect(str(db))
    have = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    if have < args.rows:
        started = time.perf_counter()
        for chunk in range(have, args.rows, 100_000):
            insert(conn, make_rows(min(100_000, args.rows - chunk), args.days, NOW, seed=chunk))
        print(f"seeded {args.rows - have:,} rows over {args.days:g} days in {time.perf_counter() - started:.1f} s")
    conn.close()
    ro = open_readonly(db)
    rows = ro.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    month = queries.Filter(since=NOW - timedelta(days=30), until=NOW)
    in_month = queries.total(ro, month).requests
    print(f"{rows:,} rows, {in_month:,} of them in the last 30 days")
    rollup = queries.Rollup()
    started = time.perf_counter()
    rollup.refresh(ro, NOW)
    print(f"hourly rollup built (once, when the gateway first answers a spend query) in "
          f"{(time.perf_counter() - started) * 1000:.0f} ms")
    timings(ro, rollup, month)
    if args.http:
        http({"path": str(db)})


def timings(ro: Any, rollup: queries.Rollup, month: queries.Filter) -> None:
    def spend(by: str, split: str | None = None) -> Any:
        coarsest = "hour" if by == "hour" else "day"  # as the gateway asks (PostgreSQL: fewer cells by day)
        return queries.spend_of(rollup.cells(ro, month, NOW, coarsest), by, split)  # type: ignore[arg-type]

    cases: dict[str, Callable[[], Any]] = {
        "30-day spend by day + total": lambda: spend("day"),
        "30-day spend by day split by model": lambda: spend("day", "model"),
        "30-day spend by hour split by key": lambda: spend("hour", "key"),
        "30-day spend by model": lambda: spend("model"),
        "30-day spend by day, SQL only (no rollup)": lambda: queries.grouped(ro, month, "day"),
        "first page of requests (50)": lambda: queries.page(ro, queries.Filter(), 50),
        "first page of requests, key=alice": lambda: queries.page(ro, queries.Filter(key="alice"), 50),
        "first page of requests, status=5xx": lambda: queries.page(ro, queries.Filter(status="5xx"), 50),
    }
    for name, run in cases.items():
        times = []
        for _ in range(5):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        print(f"{name:40s} median {statistics.median(times):7.1f} ms   worst {max(times):7.1f} ms")


def postgres(count: int, days: float, over_http: bool) -> None:
    from proxy.db.postgres import TABLE, connect, migrate, open_readonly
    from proxy.db.schema import COLUMNS
    from tests.postgres_server import postgres_server

    with postgres_server(fsync=True) as server:
        url = server.database()
        with connect(url) as conn:
            migrate(conn)
            started = time.perf_counter()
            for chunk in range(0, count, 100_000):
                made = make_rows(min(100_000, count - chunk), days, NOW, seed=chunk)
                with conn.cursor() as cur, cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in made:
                        copy.write_row(tuple(row.get(c) for c in COLUMNS))
            conn.execute(f"VACUUM ANALYZE {TABLE}")
            print(f"seeded {count:,} rows over {days:g} days with COPY in {time.perf_counter() - started:.1f} s")
        ro = open_readonly(url)
        month = queries.Filter(since=NOW - timedelta(days=30), until=NOW)
        print(f"{ro.execute('SELECT COUNT(*) FROM requests').fetchone()[0]:,} rows, "  # type: ignore[index]
              f"{queries.total(ro, month).requests:,} of them in the last 30 days (PostgreSQL)")
        timings(ro, queries.Rollup(), month)
        ro.close()
        if over_http:
            http({"url": url})


def http(ledger: dict[str, str]) -> None:
    import os
    import urllib.request

    from proxy.app import make_app
    from proxy.config import Config
    from tests.servers import ServerThread

    os.environ.setdefault("OAIGATE_BENCH_UPSTREAM", "unused")
    config = Config.model_validate({"upstream": {"base_url": "mock", "api_key_env": "OAIGATE_BENCH_UPSTREAM"},
                                    "ledger": ledger})
    started = time.perf_counter()
    server = ServerThread(lambda: make_app(config)).start(timeout=300)
    print(f"gateway started in {time.perf_counter() - started:.1f} s")
    try:
        def get(path: str) -> float:
            begin = time.perf_counter()
            with urllib.request.urlopen(server.url + path, timeout=120) as reply:
                reply.read()
            return (time.perf_counter() - begin) * 1000

        first = get("/oaigate/spend?since=30d")
        print(f"first /oaigate/spend (waits for the rollup begun at startup): {first:.0f} ms")
        for path in ("/oaigate/spend?since=30d&by=day", "/oaigate/spend?since=30d&by=day&split=model",
                     "/oaigate/requests?limit=50"):
            times = [get(path) for _ in range(5)]
            print(f"GET {path:45s} median {statistics.median(times):7.1f} ms   worst {max(times):7.1f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
