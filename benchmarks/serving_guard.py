"""CPU per request of a trivial app served by `proxy.wire.serving` (the guarded server both oaigate
and its mock use), against the same app on a bare aiohttp `AppRunner`, under keep-alive load.

Each target is its own process on uvloop (as `proxy.wire.serving.run` picks it): `bare` (aiohttp's
AppRunner, no guard), `guarded` (this checkout's `proxy.wire.serving.run`), and with `--before REV`
also `before` (the same from git revision REV, exported with `git archive`). The app answers every
request with a small fixed JSON body. Round after round (the order rotates), each target gets
`wrk -t1 -cC -dD` after a short warm-up; its CPU time is read from /proc/PID/stat around the run and
divided by the requests wrk completed. Medians over rounds are printed, and each target's median as a
ratio to `bare` (the ratio is the figure that counts on a shared machine).

    python benchmarks/serving_guard.py [--before main] [--rounds 7] [--connections 32] [--duration 10]
"""

from __future__ import annotations

import argparse
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
    import asyncio

    import uvloop

    async def bare() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=75.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        ready(f"http://{host}:{port}")
        await asyncio.Event().wait()

    uvloop.run(bare())


def start(kind: str, src: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stderr=subprocess.PIPE, text=True,
                            env=env, cwd=src)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"ready (\S+)", proc.stderr.readline())
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError(f"{kind} from {src} did not start")


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
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10.0, help="seconds of wrk per target and round")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"bare": ROOT, "guarded": ROOT}
        if args.before:
            before = Path(tmp) / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "proxy"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            sources = {"bare": ROOT, "before": before, "guarded": ROOT}
        procs = {kind: start("bare" if kind == "bare" else "guarded", src) for kind, src in sources.items()}
        try:
            names = list(procs)
            cpu: dict[str, list[float]] = {n: [] for n in names}
            rate: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
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
    print(f"\nCPU us per request, wrk -t1 -c{args.connections} -d{args.duration:g}s, medians of {args.rounds} rounds")
    print(f"{'target':<10}{'cpu us/req':>12}{'÷ bare':>9}{'req/s':>10}   all rounds (us)")
    for name in names:
        mid = statistics.median(cpu[name])
        print(f"{name:<10}{mid:>12.1f}{mid / base:>9.3f}{statistics.median(rate[name]):>10.0f}   "
              + " ".join(f"{v:.1f}" for v in cpu[name]))


if __name__ == "__main__":
    main()
