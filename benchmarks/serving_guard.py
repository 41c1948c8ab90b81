"""CPU per request of a trivial app served by `proxy.wire.serving` (the guarded server both oaigate
and its mock use), against the same app on a bare aiohttp `AppRunner`, under keep-alive load.

Each target is its own process on uvloop (as `proxy.wire.serving.run` picks it): `bare` (aiohttp's
AppRunner, no guard), `guarded` (this checkout's `proxy.wire.serving.run`), and with `--before REV`
also `before` (the same from git revision REV, exported with `git archive`). The app answers every
request with a small fixed JSON body. Round after round (the order rotates), each target gets
`wrk -t1 -cC -dD` after a short warm-up; its CPU time is read from /proc/PID/stat around the run and
divided by the requests wrk completed. Medians over rounds are printed, and each target's median as a
ratio to `bare` (the ratio is the figure that counts on a shared machine).

Differences of a few percent drown in a shared machine's noise; `--callgrind` counts instructions
instead (valgrind's callgrind, deterministic to a fraction of a percent): each server runs under it
twice, serving `--requests` and 3x as many keep-alive requests over `--connections` connections from
an asyncio client in this process, and the difference of the two totals divided by the difference of
requests is its instructions per request (startup and shutdown cancel out).

    python benchmarks/serving_guard.py [--before main] [--rounds 7] [--connections 32] [--duration 10]
    python benchmarks/serving_guard.py --callgrind [--before main] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"id":"x","object":"thing","ok":true}'


def serve(kind: str) -> None:
    """The server process: `kind` is `bare` or `guarded`; prints its URL on stderr once ready."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/thing", answer)

    def ready(url: str) -> None:
        print(f"ready {url}", file=sys.stderr, flush=True)

    if kind == "guarded":
        from proxy.wire.serving import run
        run(app, "127.0.0.1", 0, ready)
        return
    import signal

    import uvloop

    async def bare() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=75.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ready(f"http://{host}:{port}")
        await stop.wait()
        await runner.cleanup()

    uvloop.run(bare())


def start(kind: str, src: Path, prefix: tuple[str, ...] = (),
          lines: list[str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Starts a server process (under `prefix`, e.g. valgrind); its later stderr lines go to `lines`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen([*prefix, sys.executable, __file__, "--serve", kind], stderr=subprocess.PIPE,
                            text=True, env=env, cwd=src)
    assert proc.stderr is not None
    stderr = proc.stderr
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = re.search(r"ready (\S+)", stderr.readline())
        if match:
            sink = lines if lines is not None else []
            threading.Thread(target=sink.extend, args=(stderr,), daemon=True).start()
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{kind} from {src} did not start")


async def keep_alive_load(url: str, requests: int, connections: int) -> None:
    """`requests` GETs of /v1/thing over `connections` keep-alive connections, each one after the other."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = b"GET /v1/thing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for _ in range(count):
            writer.write(head)
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer
            length = int(re.search(rb"(?i)content-length: (\d+)", answer).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
        writer.close()
        await writer.wait_closed()

    share, extra = divmod(requests, connections)
    await asyncio.gather(*(one(share + (i < extra)) for i in range(connections)))


def instructions(kind: str, src: Path, requests: int, connections: int) -> int:
    """Instructions a server process executes in total, serving `requests` (valgrind's callgrind)."""
    lines: list[str] = []
    proc, url = start(kind, src, ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"), lines)
    try:
        asyncio.run(keep_alive_load(url, requests, connections))
    finally:
        proc.terminate()
        proc.wait(300)
    time.sleep(0.5)  # the reader thread's last lines
    match = re.search(r"Collected : (\d+)", "".join(lines))
    if not match:
        raise RuntimeError("".join(lines)[-2000:])
    return int(match.group(1))


def callgrind(sources: dict[str, Path], requests: int, connections: int, rounds: int) -> None:
    per: dict[str, list[float]] = {name: [] for name in sources}
    for r in range(rounds):
        for name, src in sources.items():
            kind = "bare" if name == "bare" else "guarded"
            low = instructions(kind, src, requests, connections)
            high = instructions(kind, src, 3 * requests, connections)
            per[name].append((high - low) / (2 * requests))
            print(f"round {r + 1}: {name} {per[name][-1]:,.0f} instructions per request", flush=True)
    base = statistics.median(per["bare"])
    print(f"\ninstructions per request (callgrind), {connections} keep-alive connections, medians of {rounds}")
    print(f"{'target':<10}{'instr/req':>12}{'÷ bare':>9}{'- bare':>9}")
    for name in sources:
        mid = statistics.median(per[name])
        print(f"{name:<10}{mid:>12,.0f}{mid / base:>9.3f}{mid - base:>9,.0f}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: int) -> int:
    """Runs wrk; returns the number of requests it completed (non-2xx answers make it fail)."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(out)
    match = re.search(r"(\d+) requests in", out)
    assert match, out
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=("bare", "guarded"), help=argparse.SUPPRESS)
    parser.add_argument("--before", metavar="REV", help="also measure proxy/ as of this git revision")
    parser.add_argument("--rounds", type=int, help="default: 7, or 1 with --callgrind")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per target and round")
    parser.add_argument("--callgrind", action="store_true", help="count instructions per request instead")
    parser.add_argument("--requests", type=int, default=2000, help="with --callgrind: the smaller load")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    rounds = args.rounds or 7
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"bare": ROOT, "guarded": ROOT}
        if args.before:
            before = Path(tmp) / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "proxy"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            sources = {"bare": ROOT, "before": before, "guarded": ROOT}
        if args.callgrind:
            callgrind(sources, args.requests, args.connections, args.rounds or 1)
            return
        procs = {kind: start("bare" if kind == "bare" else "guarded", src) for kind, src in sources.items()}
        try:
            names = list(procs)
            cpu: dict[str, list[float]] = {n: [] for n in names}
            rate: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    proc, url = procs[name]
                    url += "/v1/thing"
                    wrk(url, args.connections, 2)  # warm-up
                    before_cpu, began = cpu_seconds(proc.pid), time.monotonic()
                    n = wrk(url, args.connections, args.duration)
                    spent, took = cpu_seconds(proc.pid) - before_cpu, time.monotonic() - began
                    cpu[name].append(spent / n * 1e6)
                    rate[name].append(n / took)
                print(f"round {r + 1}: " + "  ".join(f"{n} {cpu[n][-1]:.1f} us" for n in names), flush=True)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(10)
    base = statistics.median(cpu["bare"])
    print(f"\nCPU us per request, wrk -t1 -c{args.connections} -d{args.duration:g}s, medians of {rounds} rounds")
    print(f"{'target':<10}{'cpu us/req':>12}{'÷ bare':>9}{'req/s':>10}   all rounds (us)")
    for name in names:
        mid = statistics.median(cpu[name])
        print(f"{name:<10}{mid:>12.1f}{mid / base:>9.3f}{statistics.median(rate[name]):>10.0f}   "
              + " ".join(f"{v:.1f}" for v in cpu[name]))


if __name__ == "__main__":
    main()
