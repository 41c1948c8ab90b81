"""Resilience figures (issue 15): one bad upstream answer or one client must not degrade everyone.

Each scenario starts `oaigate serve` in its own process (the code on PYTHONPATH, so the same script
measures a before and an after tree), drives it from this process on loopback, and prints its figures:

  throughput    req/s at concurrency 32 against the mock (answering in 50 ms), before and after one
                upstream 429 (`x-mock-fault: 429;times=1;id=...`)
  retry-after   20 other clients right after one 429 with retry-after 60 s: on another model (mock),
                and on the same model when the 429 leaves requests (a test upstream)
  deadlines     mixed faults (429 with long retry-afters, 5xx, hangs) with timeout_s = 20: how many
                requests took longer than that, and the longest
  pool          300 concurrent streams through the 256-connection pool, first_byte_timeout_s = 2:
                how many got a 504
  slowloris     600 connections sending header bytes slowly or nothing: how many are still open
                after header_timeout_s (default 30 s) + 5 s, and whether an SDK call still works
  shutdown      SIGTERM with a stream in flight: when the stream is cut, when the process exits,
                and the row's error_type

    python benchmarks/resilience.py [SCENARIO ...] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
AUTH = {"Authorization": "Bearer sk-bench"}


class Gateway:
    def __init__(self, config: str, *extra: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="oaigate-resilience-"))
        self.db = self.tmp / "ledger.db"
        path = self.tmp / "config.toml"
        path.write_text(config + f'\n[ledger]\npath = "{self.db}"\n')
        runner = "import sys; from proxy.cli import main; sys.argv[0] = 'oaigate'; main()"
        self.proc = subprocess.Popen([sys.executable, "-c", runner, "serve", "--config", str(path), "--port", "0",
                                      *extra], stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"serving on (http://\S+/v1)", self.proc.stderr.readline())
            if match:
                self.url = match.group(1)
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
                return
        self.proc.kill()
        raise RuntimeError("the gateway did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def rows(self) -> list[dict[str, object]]:
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM requests")]
        finally:
            conn.close()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, object],
               headers: dict[str, str] | None = None) -> int:
    async with session.post(url + "/chat/completions", json=body, headers={**AUTH, **(headers or {})}) as response:
        await response.read()
        return response.status


async def rate(session: aiohttp.ClientSession, url: str, seconds: float, concurrency: int = 32,
               headers: dict[str, str] | None = None) -> float:
    done, end = 0, time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            await post(session, url, CHAT, headers)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


# --- scenarios -------------------------------------------------------------------------------------

def throughput(args: argparse.Namespace) -> None:
    gw = Gateway('[upstream]\nbase_url = "mock"\nmax_retries = 2\n[limits]\nadaptive = true\n')

    async def go() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            pace = {"x-mock-latency": f"ttft_ms={args.latency_ms}"} if args.latency_ms else None
            await rate(session, gw.url, 1, headers=pace)  # warm-up
            before = await rate(session, gw.url, args.window, headers=pace)
            status = await post(session, gw.url, CHAT, {"x-mock-fault": f"429;times=1;id={uuid.uuid4().hex}"})
            after = await rate(session, gw.url, args.window, headers=pace)
            later = await rate(session, gw.url, args.window, headers=pace)
            print(f"throughput c32, mock answering in {args.latency_ms} ms: before the 429 {before:.0f} req/s; the "
                  f"429'd request -> {status}; after it {after:.0f} req/s, then {later:.0f} req/s")

    try:
        asyncio.run(go())
    finally:
        gw.stop()


def retry_after(args: argparse.Namespace) -> None:
    async def per_request_429(request: web.Request) -> web.Response:
        body = await request.json()
        if request.headers.get("x-bench-429"):
            return web.json_response({"error": {"message": "Rate limit reached", "type": "tokens", "param": None,
                                                "code": "rate_limit_exceeded"}}, status=429,
                                     headers={"retry-after": "60", "x-ratelimit-remaining-requests": "250"})
        return web.json_response({"id": "chatcmpl-x", "object": "chat.completion", "created": 1,
                                  "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "hi"}, "logprobs": None}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

    async def go() -> None:
        gw = Gateway('[upstream]\nbase_url = "mock"\nmax_retries = 2\n')
        try:
            async with aiohttp.ClientSession() as session:
                fault = {"x-mock-fault": f"429;times=1;id={uuid.uuid4().hex};retry_after_ms=60000"}
                blocked = asyncio.ensure_future(post(session, gw.url, CHAT, fault))  # waits 60 s for its retry
                await asyncio.sleep(0.5)
                other = await asyncio.gather(*(post(session, gw.url, {**CHAT, "model": "gpt-4o"}) for _ in range(20)))
                same = await asyncio.gather(*(post(session, gw.url, CHAT) for _ in range(20)))
                blocked.cancel()
                print(f"mock 429 retry-after 60 s (remaining-requests 0) on gpt-4o-mini: 20 clients on gpt-4o -> "
                      f"{other.count(429)} x 429, {other.count(200)} x 200; "
                      f"20 on gpt-4o-mini -> {same.count(429)} x 429 "
                      "(its headers say that window is empty for 60 s)")
        finally:
            gw.stop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", per_request_429)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        gw = Gateway(f'[upstream]\nbase_url = "http://127.0.0.1:{port}/v1"\nmax_retries = 0\n')
        try:
            async with aiohttp.ClientSession() as session:
                first = await post(session, gw.url, CHAT, {"x-bench-429": "1"})
                same = await asyncio.gather(*(post(session, gw.url, CHAT) for _ in range(20)))
                print(f"upstream 429 retry-after 60 s with remaining-requests 250 (relayed: {first}): "
                      f"20 clients on the same model -> {same.count(429)} x 429, {same.count(200)} x 200")
        finally:
            gw.stop()
            await runner.cleanup()

    asyncio.run(go())


def deadlines(args: argparse.Namespace) -> None:
    gw = Gateway('[upstream]\nbase_url = "mock"\nmax_retries = 2\ntimeout_s = 20\n[limits]\nadaptive = true\n'
                 "max_wait_s = 30\n")
    faults = ["", "", "", "", "", "500", "503", "timeout"] + [f"429;retry_after_ms={ms}" for ms in (2000, 5000, 9000)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def go() -> None:
        import random

        rng = random.Random(15)
        end = time.monotonic() + args.duration
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def worker() -> None:
                while time.monotonic() < end:
                    fault = rng.choice(faults)
                    headers = {"x-mock-fault": f"{fault};times=1;id={uuid.uuid4().hex}"} if fault.startswith("429") \
                        else ({"x-mock-fault": fault} if fault else {})
                    started = time.monotonic()
                    status = await post(session, gw.url, {**CHAT, "model": rng.choice(["gpt-4o-mini", "gpt-4o"])},
                                        headers)
                    latencies.append(time.monotonic() - started)
                    statuses[status] = statuses.get(status, 0) + 1

            await asyncio.gather(*(worker() for _ in range(16)))

    try:
        asyncio.run(go())
    finally:
        gw.stop()
    over = sum(1 for s in latencies if s > 20.5)
    print(f"mixed faults for {args.duration:.0f} s, timeout_s = 20: {len(latencies)} requests, {over} took > 20.5 s, "
          f"longest {max(latencies):.2f} s; statuses {dict(sorted(statuses.items()))}")


def pool(args: argparse.Namespace) -> None:
    gw = Gateway('[upstream]\nbase_url = "mock"\nmax_retries = 0\nfirst_byte_timeout_s = 2\n')

    async def go() -> None:
        body = {**CHAT, "stream": True, "max_tokens": 40}
        connector = aiohttp.TCPConnector(limit=400)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def stream() -> int:
                headers = {**AUTH, "x-mock-latency": "ttft_ms=50;chunk_ms=100"}  # ~4 s per stream
                async with session.post(gw.url + "/chat/completions", json=body, headers=headers) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(stream() for _ in range(300)))
        print(f"300 concurrent streams (~4 s each), pool 256, first_byte_timeout_s = 2: "
              f"{statuses.count(504)} x 504, {statuses.count(200)} x 200")

    try:
        asyncio.run(go())
    finally:
        gw.stop()


def slowloris(args: argparse.Namespace) -> None:
    gw = Gateway('[upstream]\nbase_url = "mock"\n')
    host, port = gw.url.removeprefix("http://").removesuffix("/v1").split(":")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bench\r\n"
    socks = []
    try:
        for _ in range(600):
            sock = socket.create_connection((host, int(port)))
            sock.setblocking(False)
            socks.append(sock)
        started = time.monotonic()
        wait = args.header_timeout + 5
        while time.monotonic() - started < wait:
            for i, sock in enumerate(socks):
                if i % 2:  # half send one header byte every 2 s, half send nothing
                    with contextlib.suppress(OSError):
                        sock.send(head[int(time.monotonic() - started) // 2 % len(head):][:1])
            time.sleep(2)
        still_open = 0
        for sock in socks:
            try:
                data = sock.recv(4096)
                still_open += 0 if data == b"" or data.startswith(b"HTTP/1.1 408") else 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
        sdk_ok = asyncio.run(_one(gw.url))
        print(f"600 slowloris connections: {still_open} still open after {wait:.0f} s; an SDK-style call -> {sdk_ok}")
    finally:
        for sock in socks:
            sock.close()
        gw.stop()


async def _one(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        return await post(session, url, CHAT)


def shutdown(args: argparse.Namespace) -> None:
    gw = Gateway('[upstream]\nbase_url = "mock"\n')

    async def go() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            headers = {**AUTH, "x-mock-latency": "ttft_ms=10;chunk_ms=2000"}
            async with session.post(gw.url + "/chat/completions", json={**CHAT, "stream": True, "max_tokens": 60},
                                    headers=headers) as response:
                await response.content.readany()
                started = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(aiohttp.ClientError):
                    await response.read()
                cut = time.monotonic() - started
            code = await asyncio.to_thread(gw.proc.wait, 120)
            exited = time.monotonic() - started
            rows = gw.rows()
            print(f"SIGTERM with a stream in flight (default grace): stream cut after {cut:.1f} s, exit {code} after "
                  f"{exited:.1f} s; row error_type {[r['error_type'] for r in rows]}")

    try:
        asyncio.run(go())
    finally:
        gw.stop()


SCENARIOS = {"throughput": throughput, "retry-after": retry_after, "deadlines": deadlines, "pool": pool,
             "slowloris": slowloris, "shutdown": shutdown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--duration", type=float, default=120.0, help="deadlines: how long to run (s)")
    parser.add_argument("--window", type=float, default=3.0, help="throughput: each measuring window (s)")
    parser.add_argument("--latency-ms", type=int, default=50, help="throughput: the mock's time to answer (0: none)")
    parser.add_argument("--header-timeout", type=float, default=30.0, help="slowloris: the gateway's header_timeout_s")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for name in args.scenarios or SCENARIOS:
        SCENARIOS[name](args)


if __name__ == "__main__":
    main()
