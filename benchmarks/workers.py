"""`oaigate serve --workers 2` against `--workers 1`: requests/s at 32 connections, in one run.

Starts the canned upstream of benchmarks/gateway.py, then for each round starts the gateway with 1
and with 2 workers (ledger on, defaults otherwise) and drives it with wrk (Debian's `wrk`, a C load
generator, so the load costs little of the machine's CPU) for `--seconds`. With `--state URL`, the
gateways share budgets through that Redis (`[state] url`, a budget on so every request reserves and
settles there), and the same run is repeated without it, to show what the shared state costs.

    python benchmarks/workers.py [--rounds 3] [--seconds 8] [--state redis://127.0.0.1:6379/0]

On a 2-core machine the gateway's workers share the cores with the upstream and wrk: the ceiling for
2 workers is well under 2x. Figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gateway import REQUEST, run_upstream  # noqa: E402  (the same canned upstream)

LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(folder: Path, upstream: str, workers: int, state: str | None) -> tuple[subprocess.Popen[str], str]:
    config = folder / f"w{workers}{'s' if state else ''}.toml"
    text = f'[upstream]\nbase_url = "{upstream}"\n[ledger]\npath = "{folder / "ledger.db"}"\n'
    if state:
        text += f'[state]\nurl = "{state}"\n[limits]\nbudget_usd = 1000000\n'
    config.write_text(text)
    oaigate = str(Path(sys.executable).parent / "oaigate")
    proc = subprocess.Popen([oaigate, "serve", "--config", str(config), "--port", "0", "--workers", str(workers)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OPENAI_API_KEY": "sk-up"})
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on (http://\S+/v1)", proc.stderr.readline())
        if match:
            return proc, match.group(1)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def wrk(url: str, seconds: int, script: Path) -> float:
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--state", help="redis://... : also measure with budgets shared through this Redis")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    port = free_port()
    upstream = multiprocessing.Process(target=run_upstream, args=(port,), daemon=True)
    upstream.start()
    time.sleep(1.0)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "post.lua"
        script.write_text(LUA.format(body=json.dumps(REQUEST)))
        setups = [(w, s) for s in ([None, args.state] if args.state else [None]) for w in (1, 2)]
        for _ in range(args.rounds):
            for workers, state in setups:
                proc, url = start_gateway(folder, f"http://127.0.0.1:{port}/v1", workers, state)
                try:
                    wrk(url + "/chat/completions", 2, script)  # warm up
                    rps = wrk(url + "/chat/completions", args.seconds, script)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                results.setdefault(f"workers={workers}{' redis' if state else ''}", []).append(rps)
    upstream.terminate()
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:<20} {value:8.0f} req/s   (rounds: {', '.join(f'{v:.0f}' for v in results[name])})")
    print(f"2 workers / 1 worker: {medians['workers=2'] / medians['workers=1']:.2f}x")
    if args.state:
        print(f"Redis state cost, 1 worker: {1 - medians['workers=1 redis'] / medians['workers=1']:.1%}; "
              f"2 workers: {1 - medians['workers=2 redis'] / medians['workers=2']:.1%}")


if __name__ == "__main__":
    main()
