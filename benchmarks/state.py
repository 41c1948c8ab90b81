"""Shared state on Redis vs in-process: c32 throughput of one gateway with a budget and rate limits.

Starts the canned upstream of `benchmarks/gateway.py` (near-zero, constant upstream time), a real
redis-server on a free loopback port, and two gateways in their own processes with the same budget
and limits (`[limits] budget_usd`, `rpm`, `tpm`), one with `[state] url` and one without. Each request
then costs Redis two script calls: one to reserve and admit, one to settle (no `concurrent` limit, so
no slot to release); concurrent requests' calls share pipelines. Rounds
alternate between the two so machine noise hits both alike; the median round is reported.

    python benchmarks/state.py [--requests 2000] [--rounds 3]

Target (issue 10): Redis state costs at most 15% of the in-process throughput at c32.
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

import aiohttp

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from gateway import cpu_seconds, latencies, start_process, throughput  # noqa: E402 (a sibling script)

from tests.redis_server import RedisServer  # noqa: E402

LIMITS = "[limits]\nbudget_usd = 1000000.0\nrpm = 100000000\ntpm = 1000000000\n"


async def measure(gateways: dict[str, tuple[str, int]], n: int, rounds: int, redis_pid: int
                  ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Throughput per round, and CPU ms per request (the gateway's, plus redis-server's for `redis`)."""
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        for base, _ in gateways.values():  # warm up connections, tokenizers, script caches
            await latencies(session, base + "/chat/completions", 200)
        results: dict[str, list[float]] = {name: [] for name in gateways}
        cpu = dict.fromkeys([*gateways, "redis-server"], 0.0)
        for _ in range(rounds):
            for name, (base, pid) in gateways.items():
                before, redis_before = cpu_seconds(pid), cpu_seconds(redis_pid)
                results[name].append(await throughput(session, base + "/chat/completions", n, 32))
                cpu[name] += (cpu_seconds(pid) - before) * 1000 / (n * rounds)
                if name == "redis":
                    cpu["redis-server"] += (cpu_seconds(redis_pid) - redis_before) * 1000 / (n * rounds)
        return results, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="oaigate-bench-state-"))
    redis = RedisServer(tmp / "redis").start()
    procs = []
    try:
        upstream, _ = start_process([sys.executable, str(Path(__file__).parent / "gateway.py"), "upstream",
                                     "--upstream-port", str(port)], r"upstream on (\d+)")
        procs.append(upstream)
        time.sleep(0.5)
        gateways = {}
        for name, state in (("in-process", ""), ("redis", f'[state]\nurl = "{redis.url}"\n')):
            config = tmp / f"{name}.toml"
            config.write_text(f'[upstream]\nbase_url = "http://127.0.0.1:{port}/v1"\n'
                              f'[ledger]\npath = "{tmp / name}.db"\n' + LIMITS + state)
            runner = "import sys; from proxy.cli import main; sys.argv[0] = 'oaigate'; main()"
            proc, url = start_process([sys.executable, "-c", runner, "serve", "--config", str(config), "--port", "0"],
                                      r"serving on (http://\S+/v1)")
            procs.append(proc)
            gateways[name] = (url, proc.pid)
        assert redis.proc is not None
        results, cpu = asyncio.run(measure(gateways, args.requests, args.rounds, redis.proc.pid))
        calls = redis.client().info("commandstats")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        redis.stop()
    local, shared = (statistics.median(results[n]) for n in ("in-process", "redis"))
    n = args.requests * args.rounds
    print(f"c32 throughput, {args.requests} requests x {args.rounds} rounds (median; all rounds in brackets)")
    for name, rounds in results.items():
        print(f"  {name:12}{statistics.median(rounds):8.0f} req/s   [{', '.join(f'{r:.0f}' for r in rounds)}]"
              f"   gateway CPU {cpu[name]:.3f} ms/request")
    print(f"  redis-server CPU {cpu['redis-server']:.3f} ms/request")
    evalsha = calls.get("cmdstat_evalsha", {})
    print(f"redis state costs {100 * (1 - shared / local):.1f}% of in-process throughput (target: <= 15%); "
          f"redis EVALSHA calls: {evalsha.get('calls', 0)} ({evalsha.get('calls', 0) / (200 + n):.2f} per request), "
          f"{evalsha.get('usec_per_call', 0):.1f} us each")


if __name__ == "__main__":
    main()
