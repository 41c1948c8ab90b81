"""oaigate against the floor (benchmarks/floor.py, a bare aiohttp pass-through), interleaved in one run.

Starts a canned upstream (fixed JSON and SSE answers, so upstream time is near zero and constant),
the floor, `oaigate serve` with built-in defaults from an empty folder (ledger, budget and rate-limit
stages, metrics, fixtures, durability all on), and the same with `[ledger] durable_wait_s = 0`, each in
its own process. Then, round after round, each target gets:

  1 connection: N requests one after the other: the gateway's CPU ms per request (from /proc), p50
    and p99 latency (added: minus the upstream's own, measured directly in the same round);
  streams: N/4 streams (20 chunks + a usage chunk): CPU ms per stream, time to first chunk;
  32 connections: 2N requests: requests/s and CPU ms per request.

Each target in turn (the order rotates) does its whole share; `--slices K` cuts it in K turns. On a
small VM a whole share lands in one of two regimes (CPU per request at 32 connections ~0.30 or
~0.45 ms: where the gateway's threads and the client's happen to run, or what the host does then),
so a median over a few rounds is partly a coin toss per target: two copies of the same gateway
differ by up to 0.3x. Ten slices average the regimes within each round (copies then within
0.04-0.07x on CPU), but each slice starts colder, which costs the bigger program more: the default
stays 1, the protocol of the goals.
Each figure is divided by the floor's of the same round; the table shows medians over rounds.
Idle RSS is read from /proc once every process has started and settled (before any request), then
the CPU each spends idle over `IDLE_CPU_S` (timers, threads polling for work), and the first request's
latency once each gateway is idle, including a gateway with a budget (which counts prompt tokens: its
tokenizer must be ready in time).

    python benchmarks/gateway.py [--requests 1000] [--rounds 5] [--slices 1] [--asyncio-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

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
STREAM = {**REQUEST, "stream": True, "stream_options": {"include_usage": True}}
ROOT = Path(__file__).resolve().parent.parent
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


def start_process(args: list[str], pattern: str, cwd: Path | None = None,
                  root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(pattern, line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its stderr pipe drained
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start")


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid`: the sum over its live threads' `schedstat`, to the nanosecond, where the
    kernel keeps it (the `/proc/PID/stat` total counts 10 ms clock ticks: too coarse for 250 streams
    of ~0.6 ms each)."""
    if not SCHEDSTAT:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


SCHEDSTAT = Path("/proc/self/schedstat").exists()
IDLE_CPU_S = 5.0  # how long idle CPU is measured, once every process has settled


def idle_cpu_ms_per_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU ms per second that each process spends while nothing asks it anything."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(IDLE_CPU_S)
    return {name: (cpu_seconds(pid) - before[name]) * 1000 / IDLE_CPU_S for name, pid in pids.items()}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def latencies(session: aiohttp.ClientSession, url: str, n: int, stream: bool = False) -> list[float]:
    body = json.dumps(STREAM if stream else REQUEST).encode()
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
    """Seconds that `n` requests over `concurrency` connections take."""
    body = json.dumps(REQUEST).encode()
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            async with session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                assert response.status == 200

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


class Cpu:
    """CPU seconds a process spends inside a `with` block."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.seconds = pid, 0.0

    def __enter__(self) -> Cpu:
        self.start = cpu_seconds(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = cpu_seconds(self.pid) - self.start if self.pid else 0.0


async def first_request_ms(url: str) -> float:
    async with aiohttp.ClientSession() as session:
        return (await latencies(session, url + "/chat/completions", 1))[0] * 1000


T = TypeVar("T")
SLICES = 1  # each round's work per figure, cut in this many slices, the targets taking turns slice by slice


def _turns(names: list[str], k: int) -> list[str]:
    return names[k % len(names):] + names[:k % len(names)]  # rotate: no target always goes first


async def one_round(session: aiohttp.ClientSession, targets: dict[str, tuple[str, int | None]],
                    n: int, slices: int = SLICES) -> dict[str, dict[str, float]]:
    """Each target in turn (in rotating order) does its share of the three figures' work, cut in
    `slices` turns, so that what the machine does meanwhile falls on every target alike; each target's
    figures are its turns pooled."""
    names = list(targets)
    urls = {name: base + "/chat/completions" for name, (base, _) in targets.items()}
    cpu = {name: {"c1": 0.0, "stream": 0.0, "c32": 0.0} for name in names}
    lat: dict[str, list[float]] = {name: [] for name in names}
    ttfc: dict[str, list[float]] = {name: [] for name in names}
    busy = dict.fromkeys(names, 0.0)  # seconds spent on the 32-connection slices

    async def timed(name: str, kind: str, work: Awaitable[T]) -> T:
        pid = targets[name][1]
        with Cpu(pid) as used:
            got = await work
        cpu[name][kind] += used.seconds
        return got

    for k in range(slices):
        for name in _turns(names, k):
            lat[name] += await timed(name, "c1", latencies(session, urls[name], n // slices))
            ttfc[name] += await timed(name, "stream", latencies(session, urls[name], n // 4 // slices, stream=True))
            busy[name] += await timed(name, "c32", throughput(session, urls[name], n * 2 // slices, 32))
    n1, ns, n32 = n // slices * slices, n // 4 // slices * slices, n * 2 // slices * slices
    return {name: {"cpu_c32": cpu[name]["c32"] / n32 * 1000, "rps_c32": n32 / busy[name],
                   "cpu_c1": cpu[name]["c1"] / n1 * 1000, "p50": pct(lat[name], 0.5), "p99": pct(lat[name], 0.99),
                   "cpu_stream": cpu[name]["stream"] / ns * 1000, "ttfc": pct(ttfc[name], 0.5)}
            for name in names}


# (key, label, higher is better, target ratio or None)
FIGURES = [("cpu_c32", "CPU ms per request, 32 connections", False, 1.3),
           ("rps_c32", "requests/s, 32 connections (one process)", True, 0.75),
           ("cpu_c1", "CPU ms per request, 1 connection", False, None),
           ("added_p50", "added p50 latency ms, 1 connection", False, None),
           ("added_p99", "added p99 latency ms, 1 connection", False, 1.5),
           ("cpu_stream", "CPU ms per stream (20 chunks + usage)", False, 1.2),
           ("added_ttfc", "added time to first chunk ms", False, None)]


async def measure(direct: str, targets: dict[str, tuple[str, int]], n: int, rounds: int,
                  slices: int = SLICES) -> list[dict]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        everyone = {"direct": (direct, None), **targets}
        for base, _ in everyone.values():  # warm up connections, tokenizers, price lookups
            await latencies(session, base + "/chat/completions", 200)
            await latencies(session, base + "/chat/completions", 50, stream=True)
            await throughput(session, base + "/chat/completions", 200, 32)
        results = []
        names = list(everyone)
        for r in range(rounds):
            got = await one_round(session, {k: everyone[k] for k in _turns(names, r)}, n, slices)
            for name in targets:
                got[name]["added_p50"] = got[name]["p50"] - got["direct"]["p50"]
                got[name]["added_p99"] = got[name]["p99"] - got["direct"]["p99"]
                got[name]["added_ttfc"] = got[name]["ttfc"] - got["direct"]["ttfc"]
            results.append(got)
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{k} {got[k]['rps_c32']:.0f} req/s {got[k]['cpu_c32']:.3f} ms" for k in targets), file=sys.stderr)
        return results


def report(results: list[dict], idle: dict[str, float], idle_cpu: dict[str, float], first: dict[str, float]) -> None:
    names = [k for k in results[0] if k not in ("direct", "floor")]
    med = statistics.median
    head = "| figure | floor | " + " | ".join(f"{n} | {n} ÷ floor" for n in names) + " | target |"
    print(head)
    print("|---|---:|" + "---:|---:|" * len(names) + "---|")
    for key, label, higher, target in FIGURES:
        floor = med(r["floor"][key] for r in results)
        cells = []
        for n in names:
            ratios = [r[n][key] / r["floor"][key] for r in results if r["floor"][key] > 0]
            ratio = med(ratios) if ratios else math.nan  # an added latency of the floor's can round to 0
            cells.append(f"{med(r[n][key] for r in results):,.3f} | **{ratio:.2f}×**")
        goal = "" if target is None else (f"≥ {target}×" if higher else f"≤ {target}×")
        print(f"| {label} | {floor:,.3f} | " + " | ".join(cells) + f" | {goal} |")
    cells = [f"{idle[n]:.0f} | {idle[n] / idle['floor']:.1f}×" for n in names]
    print(f"| idle RSS MB | {idle['floor']:.0f} | " + " | ".join(cells) + " | < 100 MB |")
    cells = [f"{idle_cpu[n]:.2f} | {idle_cpu[n] / idle_cpu['floor']:.2f}×" if idle_cpu["floor"] > 0
             else f"{idle_cpu[n]:.2f} | " for n in names]
    print(f"| idle CPU ms per second | {idle_cpu['floor']:.2f} | " + " | ".join(cells) + " | |")
    cells = [f"{first[n]:.1f} | {first[n] / first['floor']:.1f}×" for n in names]
    print(f"| first request ms | {first['floor']:.1f} | " + " | ".join(cells) + " | |")
    for name in idle.keys() - {"floor", *names}:
        print(f"\n{name}: idle RSS {idle[name]:.0f} MB, idle CPU {idle_cpu[name]:.2f} ms per second, "
              f"first request {first[name]:.1f} ms")
    print(f"\n(medians of {len(results)} interleaved rounds; ratios are medians of per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per round at 1 connection")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slices", type=int, default=SLICES,
                        help="Cut each round's work per figure in this many slices, the targets taking turns "
                             "(1: each target does its whole share at once).")
    parser.add_argument("--asyncio-loop", action="store_true",
                        help="Run oaigate on the standard asyncio loop instead of uvloop (the default).")
    parser.add_argument("--no-durability-row", action="store_true",
                        help="Leave out the `durable_wait_s = 0` gateway.")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                        help="Also run oaigate from another checkout DIR (e.g. a worktree of an older commit).")
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "upstream"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        sys.stderr.write(f"upstream on {args.upstream_port}\n")
        sys.stderr.flush()
        run_upstream(args.upstream_port)
        return

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    serving = r"serving on (http://\S+/v1)"
    try:
        upstream, _ = start_process([sys.executable, __file__, "upstream", "--upstream-port", str(port)],
                                    r"upstream on (\d+)")
        procs.append(upstream)
        time.sleep(0.5)
        direct = f"http://127.0.0.1:{port}/v1"
        tmp = Path(tempfile.mkdtemp(prefix="oaigate-bench-"))
        floor, url = start_process([sys.executable, str(ROOT / "benchmarks" / "floor.py"), "--upstream", direct,
                                    "--db", str(tmp / "floor.db")], serving)
        procs.append(floor)
        targets = {"floor": (url, floor.pid)}
        also = {n: ("", Path(d).resolve()) for n, d in (a.split("=", 1) for a in args.also)}
        configs = {"oaigate": ("", ROOT), **also,
                   "oaigate durable_wait_s=0": ("[ledger]\ndurable_wait_s = 0\n", ROOT),
                   "oaigate with a budget": ("[limits]\nbudget_usd = 1000\n", ROOT)}
        if args.no_durability_row:
            del configs["oaigate durable_wait_s=0"]
        block_uvloop = "sys.modules['uvloop'] = None; " if args.asyncio_loop else ""
        runner = f"import sys; {block_uvloop}from proxy.cli import main; sys.argv[0] = 'oaigate'; main()"
        for i, (name, (extra, root)) in enumerate(configs.items()):
            folder = tmp / f"gw{i}"  # an empty folder: built-in defaults, ledger oaigate.db in it
            folder.mkdir()
            (folder / "oaigate.toml").write_text(f'[upstream]\nbase_url = "{direct}"\n{extra}')
            proc, url = start_process([sys.executable, "-c", runner, "serve", "--config", "oaigate.toml",
                                       "--port", "0"], serving, cwd=folder, root=root)
            procs.append(proc)
            targets[name] = (url, proc.pid)
        time.sleep(5)  # settled: anything loaded in the background at start is loaded
        idle = {name: rss_mb(pid) for name, (_, pid) in targets.items()}
        idle_cpu = idle_cpu_ms_per_s({name: pid for name, (_, pid) in targets.items()})
        first = {name: asyncio.run(first_request_ms(url)) for name, (url, _) in targets.items()}
        budgeted = targets.pop("oaigate with a budget")
        procs.remove(next(p for p in procs if p.pid == budgeted[1]))
        os.kill(budgeted[1], 15)
        results = asyncio.run(measure(direct, targets, args.requests, args.rounds, args.slices))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    report(results, idle, idle_cpu, first)


if __name__ == "__main__":
    main()
