"""A 50 MB JSON string on a budgeted key: how long the gateway takes to refuse it and how much memory
it grows by (peak RSS of the gateway process, VmHWM), before and after issue 15's bounded counting.

    PYTHONPATH=. python benchmarks/huge_prompt.py [--mb 50]

Starts `python -m proxy serve` in a subprocess (embedded mock upstream, a key with a $0.001 budget),
measures its peak RSS after start, sends one chat request whose content is a 50 MB string, and
reports the status, the time to the answer and the growth of the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--text", choices=("words", "one-letter"), default="words",
                        help="the string: English-like words, or one letter repeated (one huge pre-token)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "config.toml")
        config.write_text(f'[server]\nport = {port}\n[upstream]\nbase_url = "mock"\n[ledger]\npath = "{tmp}/l.db"\n'
                          '[[keys]]\nname = "tiny"\nkey = "sk-tiny-bench"\nbudget_usd = 0.001\n')
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            before = peak_rss_mb(proc.pid)
            words = "the river bends past the old mill and carries leaves toward the sea " if args.text == "words" \
                else "a"
            content = (words * (args.mb * 1024 * 1024 // len(words) + 1))[: args.mb * 1024 * 1024]
            body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                               "messages": [{"role": "user", "content": content}]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Authorization": "Bearer sk-tiny-bench",
                                                      "Content-Type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=600) as reply:
                    status, answer = reply.status, reply.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
            elapsed = time.perf_counter() - started
            after = peak_rss_mb(proc.pid)
            code = json.loads(answer).get("error", {}).get("code") if answer[:1] == b"{" else None
            print(f"{args.mb} MB string ({args.text}): status {status} ({code}) in {elapsed:.2f} s; "
                  f"gateway peak RSS {before:.0f} MB -> {after:.0f} MB (+{after - before:.0f} MB)")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
