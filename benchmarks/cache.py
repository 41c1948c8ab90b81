"""The response cache: latency of a miss (the upstream answers in `--ttft-ms`) against a hit, and the
time the context-window pre-check adds to an ordinary chat request.

    PYTHONPATH=. python benchmarks/cache.py [--requests 200] [--ttft-ms 100]

Runs the gateway in-process (a background thread) in front of its embedded mock, `[cache] enabled`,
and sends from one client: `--requests` distinct deterministic chat requests (each a miss, paced by
`x-mock-latency`), then the same ones again (each a hit). Then the same distinct requests to two
cacheless gateways, with the pre-check on and off. Prints the median and p95 of each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from proxy.app import make_app
from proxy.background import BackgroundServer
from proxy.config import Config


def timed(url: str, n: int, headers: dict[str, str], tag: str) -> list[float]:
    """`n` chat requests on one keep-alive connection; the milliseconds each took."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    took = []
    try:
        for i in range(n):
            body = json.dumps({"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 20,
                               "messages": [{"role": "user", "content": f"Tell me about rivers, part {i} ({tag})."}]})
            started = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {**headers, "Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
            took.append((time.perf_counter() - started) * 1000)
            assert reply.status == 200, data
    finally:
        conn.close()
    return took


def summary(name: str, took: list[float]) -> str:
    p95 = statistics.quantiles(took, n=20)[-1]
    return f"{name:<28} median {statistics.median(took):8.2f} ms   p95 {p95:8.2f} ms"


def gateway(folder: Path, name: str, **sections: object) -> BackgroundServer:
    config = Config.model_validate({"ledger": {"path": str(folder / f"{name}.db")}, **sections})
    return BackgroundServer(lambda: make_app(config)).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ttft-ms", type=int, default=100)
    args = parser.parse_args()
    auth = {"Authorization": "Bearer sk-bench"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cached = gateway(folder, "cached", cache={"enabled": True})
        paced = {**auth, "x-mock-latency": f"ttft_ms={args.ttft_ms}"}
        try:
            misses = timed(cached.url, args.requests, paced, "cache")
            hits = timed(cached.url, args.requests, paced, "cache")
        finally:
            cached.stop()
        print(summary(f"miss (upstream {args.ttft_ms} ms)", misses))
        print(summary("hit", hits))
        for check in (True, False):
            gw = gateway(folder, f"check-{check}", limits={"check_context_window": check})
            try:
                timed(gw.url, 20, auth, "warm")
                took = timed(gw.url, args.requests, auth, "check")
            finally:
                gw.stop()
            print(summary(f"pre-check {'on' if check else 'off'} (no cache)", took))


if __name__ == "__main__":
    main()
