"""The metrics stage's cost per request: microseconds per `Metrics.finish` call, and per scrape.

    PYTHONPATH=. python benchmarks/metrics_stage.py [--exchanges 20000] [--runs 7]

Feeds `--exchanges` finished exchanges to one `Metrics` stage, `--runs` times over (a fresh stage each
run), and prints the median and the spread of µs per `finish`, beside a no-op stage's `finish` (the
cost of creating and running the coroutine at all). The mix is a busy gateway's: mostly
chat answers with usage and cost over a few models and keys, some embeddings, retries, a 429 and an
upstream error now and then. `finish` never awaits, so it is driven without an event loop.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Coroutine
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.exchange import Exchange
from proxy.stages import Stage
from proxy.stages.metrics import Metrics
from proxy.wire.usage import Usage

HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "text-embedding-3-small")
KEYS = ("ci", "alice", "bob", None)


def exchanges(n: int) -> list[Exchange]:
    """`n` deterministic finished exchanges, a gateway's usual mix."""
    made = []
    for i in range(n):
        embed = i % 10 == 9
        ex = Exchange("POST", "/v1/embeddings" if embed else "/v1/chat/completions", "", HEADERS, b"")
        ex.model = ex.model_served = MODELS[3] if embed else MODELS[i % 3]
        ex.principal = KEYS[i % 4]
        ex.status, ex.attempts = 200, 1
        ex.started, ex.finished = 0.0, 0.02 + (i % 97) * 0.013  # 20 ms .. 1.27 s
        ex.overhead_s = 0.0002 + (i % 13) * 0.0001
        ex.usage, ex.cost_micros = Usage(30 + i % 50, 0 if embed else 5 + i % 20), 12 + i % 40
        if i % 50 == 7:
            ex.status, ex.usage, ex.cost_micros = 429, None, None
        elif i % 100 == 13:
            ex.status, ex.attempts, ex.error_type, ex.usage, ex.cost_micros = 502, 3, "upstream_status", None, None
        elif i % 25 == 3:
            ex.attempts = 2
        made.append(ex)
    return made


def drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("finish suspended")


def timed(stage: Stage, batch: list[Exchange]) -> float:
    """µs per `stage.finish` over `batch`."""
    finish = stage.finish
    started = time.perf_counter()
    for ex in batch:
        drive(finish(ex))
    return (time.perf_counter() - started) / len(batch) * 1e6


def run(batch: list[Exchange]) -> tuple[float, float, float]:
    """µs per `finish` over `batch` on a fresh stage, ms for one scrape afterwards, µs per no-op `finish`."""
    metrics = Metrics()
    per_call = timed(metrics, batch)
    started = time.perf_counter()
    metrics.render()
    return per_call, (time.perf_counter() - started) * 1e3, timed(Stage(), batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    batch = exchanges(args.exchanges)
    run(batch[:1000])  # warm up
    results = [run(batch) for _ in range(args.runs)]
    calls, scrapes, noops = ([r[i] for r in results] for i in range(3))
    print(f"Metrics.finish: median {statistics.median(calls):.2f} µs per exchange "
          f"(min {min(calls):.2f}, max {max(calls):.2f}; {args.runs} runs x {args.exchanges} exchanges)")
    print(f"no-op Stage.finish: median {statistics.median(noops):.2f} µs per exchange")
    print(f"render (/metrics): median {statistics.median(scrapes):.2f} ms per scrape")


if __name__ == "__main__":
    main()
