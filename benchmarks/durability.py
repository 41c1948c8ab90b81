"""What waiting for the ledger commit costs: gateways from two checkouts and ledger settings, interleaved.

Uses the pieces of benchmarks/gateway.py (same canned upstream, clients and CPU reading: latency at
concurrency 1, requests/s at 32 connections, the gateway's CPU ms per request) on several gateways in
one run, in short bursts, gateway after gateway in rotating order (the machine is shared: its noise
hits all alike); prints p50/p99 over all bursts and the median burst's req/s and CPU, at c1 and c32.

    python benchmarks/durability.py --base /work/wt/base [--rounds 10] [--requests 500] [--db-dir DIR]

Gateways: `base` (the --base checkout, ledger on), and this checkout with `synchronous = "normal"`,
with `"full"`, and with `durable_wait_s = 0` (rows queued, no wait: the old contract on the new writer).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gateway as bench  # noqa: E402 (benchmarks/gateway.py, found through the path set above)


async def interleaved(gateways: dict[str, tuple[str, int]], rounds: int, n: int) -> dict[str, dict[str, list[float]]]:
    """Short bursts, gateway after gateway in rotating order, `rounds` times: at concurrency 1 (`n`
    requests: latency) then at 32 connections (`4 n` requests: req/s), CPU ms per request over both."""
    names = list(gateways)
    out: dict[str, dict[str, list[float]]] = {k: {"lat": [], "rps": [], "cpu1": [], "cpu32": []} for k in names}
    async with bench.aiohttp.ClientSession(connector=bench.aiohttp.TCPConnector(limit=64)) as session:
        for name in names:  # warm up connections, tokenizers, price lookups
            await bench.latencies(session, gateways[name][0] + "/chat/completions", 200)
            await bench.throughput(session, gateways[name][0] + "/chat/completions", 500, 32)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                url, pid = gateways[name]
                cpu = bench.cpu_seconds(pid)
                out[name]["lat"] += await bench.latencies(session, url + "/chat/completions", n)
                middle = bench.cpu_seconds(pid)
                out[name]["rps"].append(await bench.throughput(session, url + "/chat/completions", 4 * n, 32))
                out[name]["cpu1"].append((middle - cpu) / n * 1000)
                out[name]["cpu32"].append((bench.cpu_seconds(pid) - middle) / (4 * n) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="Checkout to compare with (before).")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=500, help="Per burst at concurrency 1 (x4 at 32).")
    parser.add_argument("--db-dir", type=Path, default=None, help="Where the ledgers live (default: a temp dir).")
    parser.add_argument("--only", default="", help="Comma-separated subset of: base, normal, full, no wait.")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="oaigate-durability-", dir=args.db_dir))
    variants = {
        "base": (args.base.resolve(), ""),
        "normal": (REPO, 'synchronous = "normal"\n'),
        "full": (REPO, 'synchronous = "full"\n'),
        "no wait": (REPO, "durable_wait_s = 0\n"),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k == "base" or k in args.only.split(",")}
    procs = []
    try:
        upstream, _ = bench.start_process([sys.executable, str(HERE / "gateway.py"), "upstream", "--upstream-port",
                                           str(port)], r"upstream on (\d+)")
        procs.append(upstream)
        time.sleep(0.5)
        gateways: dict[str, tuple[str, int]] = {}
        for name, (code, extra) in variants.items():
            slug = name.replace(" ", "-")
            config = tmp / f"{slug}.toml"
            config.write_text(f'[upstream]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                              f'[ledger]\npath = "{tmp / (slug + ".db")}"\n{extra}')
            # `-c` puts the current directory first on sys.path: the checkout must come before it
            runner = (f"import sys; sys.path.insert(0, {str(code)!r}); from proxy.cli import main; "
                      "sys.argv[0] = 'oaigate'; main()")
            proc, url = bench.start_process([sys.executable, "-c", runner, "serve", "--config", str(config),
                                             "--port", "0"], r"serving on (http://\S+/v1)")
            procs.append(proc)
            gateways[name] = (url, proc.pid)
        results = asyncio.run(interleaved(gateways, args.rounds, args.requests))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)

    print(f"{args.rounds} interleaved rounds: {args.requests} requests at c1, {4 * args.requests} at c32 each; "
          f"ledgers in {tmp}")
    print(f"{'':10}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>11}{'req/s c32':>11}{'(min-max)':>13}{'CPU ms/req':>11}")
    print(f"{'':10}{'c1':>9}{'c1':>9}{'c1':>11}{'':>11}{'':>13}{'c32':>11}")
    figures = {}
    for name, r in results.items():
        figures[name] = (bench.pct(r["lat"], 0.5), bench.pct(r["lat"], 0.99), statistics.median(r["cpu1"]),
                         statistics.median(r["rps"]), statistics.median(r["cpu32"]))
        spread = f"{min(r['rps']):.0f}-{max(r['rps']):.0f}"
        f = figures[name]
        print(f"{name:10}{f[0]:9.3f}{f[1]:9.3f}{f[2]:11.3f}{f[3]:11.0f}{spread:>13}{f[4]:11.3f}")
    b = figures["base"]
    for name, f in figures.items():
        if name != "base":
            print(f"{name}: c32 req/s {100 * (f[3] / b[3] - 1):+.1f}%, CPU/req {100 * (f[4] / b[4] - 1):+.1f}%; "
                  f"c1 added latency p50 {f[0] - b[0]:+.3f} ms, p99 {f[1] - b[1]:+.3f} ms, "
                  f"CPU/req {100 * (f[2] / b[2] - 1):+.1f}% (vs base)")

if __name__ == "__main__":
    main()
