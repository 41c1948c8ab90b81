"""Direct vs through oaigate, side by side in one run, on loopback.

Starts a canned upstream (fixed JSON and SSE answers, so upstream time is near zero and constant)
and gateways in their own processes, then drives them from this process with aiohttp:

  latency p50/p99 at concurrency 1, throughput at concurrency 32, time to first stream chunk,
  the gateway's CPU milliseconds per request (from /proc), and ledger on vs off.

    python benchmarks/gateway.py [--requests 2000] [--asyncio-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

CHAT_BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1735689600, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! " * 40, "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 80, "total_tokens": 92},
}).encode()
CHUNK = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1735689600,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello "},"finish_reason":null}]}\n\n'  # noqa: E501 (data)
USAGE = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1735689600,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n'  # noqa: E501 (data)
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


def run_upstream(port: int) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=CHAT_BODY, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(20):
            await response.write(CHUNK)
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(USAGE)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_process(args: list[str], pattern: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(pattern, line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def latencies(session: aiohttp.ClientSession, url: str, n: int, stream: bool = False) -> list[float]:
    body = json.dumps({**REQUEST, "stream": stream}).encode()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        async with session.post(url, data=body, headers=HEADERS) as response:
            if stream:
                await response.content.readany()
                out.append(time.perf_counter() - start)
                await response.read()
            else:
                await response.read()
                out.append(time.perf_counter() - start)
            assert response.status == 200, response.status
    return out


async def throughput(session: aiohttp.ClientSession, url: str, n: int, concurrency: int) -> float:
    body = json.dumps(REQUEST).encode()
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                assert response.status == 200

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


async def measure(direct: str, gateways: dict[str, tuple[str, int]], n: int) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        results: dict[str, object] = {}
        targets = {"direct": (direct, None), **gateways}
        for base, _ in targets.values():  # warm up connections, tokenizers, price lookups
            await latencies(session, base + "/chat/completions", 200)
            await latencies(session, base + "/chat/completions", 50, stream=True)
        for name, (base, pid) in targets.items():
            cpu_before = cpu_seconds(pid) if pid else 0.0
            lat = await latencies(session, base + "/chat/completions", n)
            cpu = (cpu_seconds(pid) - cpu_before) / n * 1000 if pid else None
            ttfc = await latencies(session, base + "/chat/completions", n // 4, stream=True)
            rps = statistics.median([await throughput(session, base + "/chat/completions", n * 2, 32)
                                     for _ in range(3)])
            results[name] = {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "cpu_ms_per_request": cpu,
                             "ttfc_p50_ms": pct(ttfc, 0.5), "rps_c32": rps}
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--asyncio-loop", action="store_true",
                        help="Run the gateways on the standard asyncio loop instead of uvloop (the default).")
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "upstream"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        sys.stderr.write(f"upstream on {args.upstream_port}\n")
        sys.stderr.flush()
        run_upstream(args.upstream_port)
        return

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    try:
        upstream, _ = start_process([sys.executable, __file__, "upstream", "--upstream-port", str(port)],
                                    r"upstream on (\d+)")
        procs.append(upstream)
        time.sleep(0.5)
        tmp = Path(tempfile.mkdtemp(prefix="oaigate-bench-"))
        gateways = {}
        for name, ledger in (("oaigate", True), ("oaigate (ledger off)", False)):
            config = tmp / f"{ledger}.toml"
            config.write_text(f'[upstream]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                              f'[ledger]\nenabled = {str(ledger).lower()}\npath = "{tmp / "ledger.db"}"\n')
            block_uvloop = "sys.modules['uvloop'] = None; " if args.asyncio_loop else ""
            runner = f"import sys; {block_uvloop}from proxy.cli import main; sys.argv[0] = 'oaigate'; main()"
            proc, url = start_process([sys.executable, "-c", runner, "serve", "--config", str(config), "--port", "0"],
                                      r"serving on (http://\S+/v1)")
            procs.append(proc)
            gateways[name] = (url, proc.pid)
        results = asyncio.run(measure(f"http://127.0.0.1:{port}/v1", gateways, args.requests))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    direct = results["direct"]
    print(f"{'':24}{'p50 ms':>9}{'p99 ms':>9}{'TTFC ms':>9}{'req/s c32':>11}{'CPU ms/req':>12}")
    for name, r in results.items():
        cpu = f"{r['cpu_ms_per_request']:.3f}" if r["cpu_ms_per_request"] is not None else "-"
        print(f"{name:24}{r['p50_ms']:9.3f}{r['p99_ms']:9.3f}{r['ttfc_p50_ms']:9.3f}{r['rps_c32']:11.0f}{cpu:>12}")
    gw, off = results["oaigate"], results["oaigate (ledger off)"]
    print(f"\nadded p50 latency: {gw['p50_ms'] - direct['p50_ms']:.3f} ms; "
          f"TTFC added: {gw['ttfc_p50_ms'] - direct['ttfc_p50_ms']:.3f} ms; "
          f"ledger on vs off throughput: {100 * (gw['rps_c32'] / off['rps_c32'] - 1):+.1f}%")


if __name__ == "__main__":
    main()
