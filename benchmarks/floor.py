"""The floor: the least a Python gateway can do per request, to measure oaigate against.

An aiohttp pass-through on uvloop: forwards `/v1/*` untouched to one upstream, relays SSE chunk by
chunk as it arrives, swaps the client's key for the upstream's, and logs one row per request to
SQLite through a batching writer thread (one transaction per batch, WAL, synchronous=NORMAL).
No budgets, no limits, no usage parsing, no durability wait: what is left is the cost of aiohttp,
the loop and one ledger row.

    python benchmarks/floor.py --upstream http://127.0.0.1:8000/v1 --db floor.db [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sqlite3
import sys
import threading
import time
import uuid

import aiohttp
from aiohttp import web

HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                 "proxy-authorization", "proxy-connection", "authorization", "content-length"})


class Writer:
    """Rows queue in a deque; a thread inserts all that is queued in one transaction."""

    def __init__(self, path: str) -> None:
        self.path, self.queue, self.wake = path, collections.deque[tuple](), threading.Event()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, started_at REAL, "
                     "method TEXT, path TEXT, status INTEGER, latency_ms REAL)")
        conn.close()
        threading.Thread(target=self.run, daemon=True).start()

    def submit(self, row: tuple) -> None:
        self.queue.append(row)
        self.wake.set()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        while True:
            self.wake.wait(0.05)
            self.wake.clear()
            batch = [self.queue.popleft() for _ in range(len(self.queue))]
            if batch:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)", batch)
                conn.execute("COMMIT")


def make_app(upstream: str, key: str, db: str) -> web.Application:
    session_key: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
    writer = Writer(db)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("User-Agent",),
                                                 connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        started, started_wall = time.perf_counter(), time.time()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Authorization"] = f"Bearer {key}"
        body = await request.read()
        url = upstream + request.path[3:] + (f"?{request.query_string}" if request.query_string else "")
        status = 502
        try:
            async with request.app[session_key].request(request.method, url, data=body, headers=headers) as up:
                status = up.status
                out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
                if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                    response = web.StreamResponse(status=up.status, headers=out)
                    await response.prepare(request)
                    async for chunk in up.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                    return response
                return web.Response(status=up.status, body=await up.read(), headers=out)
        finally:
            writer.submit(("fl_" + uuid.uuid4().hex, started_wall, request.method, request.path, status,
                           (time.perf_counter() - started) * 1000))

    app = web.Application(client_max_size=600 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/v1/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--key", default="sk-upstream")
    parser.add_argument("--db", default="floor.db")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import uvloop

    async def serve() -> None:
        runner = web.AppRunner(make_app(args.upstream.rstrip("/"), args.key, args.db), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        sys.stderr.write(f"serving on http://127.0.0.1:{runner.addresses[0][1]}/v1\n")
        sys.stderr.flush()
        await asyncio.Event().wait()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
