"""What request bodies cost the gateway in memory: RSS of a `python -m proxy serve` process, read from
/proc/PID/status (VmHWM, the peak, and VmRSS) before and after each scenario.

    python benchmarks/memory.py [--size-mb 200] [--embedded-mock]

Scenarios (each against a fresh gateway so one peak does not hide the next):
1. three uploads of --size-mb with a wrong key, at once: the key is checked on headers, so the body
   is never read (expect ~0 growth);
2. one upload of --size-mb with the right key, to the mock (a separate `python -m mockserver`
   process unless --embedded-mock, where the mock's own copy of the file counts too): the body is
   relayed as it arrives (expect growth far below the file's size);
3. a 50 MB JSON string to /v1/chat/completions (the key has a budget, so the gateway would count
   its tokens): refused with 413 on its Content-Length, before a byte is read or parsed.

Uploads are generated as a stream of 1 MiB pieces of one buffer, so the client holds no copy.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RIGHT, WRONG = "sk-bench-right-key", "sk-bench-wrong-key"
MiB = 1024 * 1024


class Process:
    def __init__(self, args: list[str], ready: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "sk-bench-upstream"}
        self.proc = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            line = lines.get(timeout=60)
            if line is None:
                raise SystemExit(f"{args} exited {self.proc.wait()} before serving")
            if ready in line:
                self.url = line.split(ready, 1)[1].split()[0]
                return

    def status(self) -> dict[str, int]:
        """VmHWM and VmRSS in bytes."""
        found = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                found[name] = int(value.split()[0]) * 1024
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway(tmp: Path, upstream: str) -> Process:
    config = tmp / "bench.toml"
    config.write_text(f'[upstream]\nbase_url = "{upstream}"\nmax_retries = 0\n'
                      f'[[keys]]\nname = "bench"\nkey = "{RIGHT}"\nbudget_usd = 1000\n')
    return Process(["-m", "proxy", "--config", str(config), "--port", str(free_port()),
                    "--db", str(tmp / f"ledger-{time.monotonic_ns()}.db")], "oaigate serving on ")


def multipart(size: int) -> tuple[str, int, AsyncIterator[bytes]]:
    boundary = "benchmarkboundary7d41e0"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    piece = b"x" * MiB

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        left = size
        while left > 0:
            yield piece[:min(left, MiB)]
            left -= MiB
        yield tail

    return f"multipart/form-data; boundary={boundary}", len(head) + size + len(tail), chunks()


async def upload(url: str, key: str, size: int) -> int:
    content_type, length, chunks = multipart(size)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type, "Content-Length": str(length)}
    try:
        async with aiohttp.ClientSession() as session, session.post(url + "/files", data=chunks,
                                                                    headers=headers) as response:
            await response.read()
            return response.status
    except aiohttp.ClientError as exc:  # the gateway closes the connection after refusing: fine
        return getattr(exc, "status", 0) or -1


async def big_json(url: str, size: int) -> tuple[int, float]:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * size + b'"}]}'
    headers = {"Authorization": f"Bearer {RIGHT}", "Content-Type": "application/json"}
    started = time.perf_counter()
    status = -1
    try:
        async with aiohttp.ClientSession() as session, session.post(url + "/chat/completions", data=body,
                                                                    headers=headers) as response:
            status = response.status
            await response.read()
    except aiohttp.ClientError:
        pass
    return status, time.perf_counter() - started


def mb(n: int) -> str:
    return f"{n / 1e6:+.1f} MB"


def measure(name: str, gw: Process, run) -> None:  # type: ignore[no-untyped-def]
    before = gw.status()
    result = asyncio.run(run())
    time.sleep(0.5)
    after = gw.status()
    print(f"{name}: result {result}; VmHWM {before['VmHWM'] / 1e6:.1f} -> {after['VmHWM'] / 1e6:.1f} MB "
          f"({mb(after['VmHWM'] - before['VmHWM'])}), VmRSS {mb(after['VmRSS'] - before['VmRSS'])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--embedded-mock", action="store_true", help="use the gateway's embedded mock as upstream")
    args = parser.parse_args()
    size = args.size_mb * 1000 * 1000
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        mock = None if args.embedded_mock else Process(
            ["-m", "mockserver", "--port", str(free_port())], "oaigate mock listening on ")
        upstream = "mock" if mock is None else mock.url + "/v1"
        try:
            gw = gateway(tmp, upstream)
            try:
                async def three() -> list[int]:
                    return list(await asyncio.gather(*(upload(gw.url, WRONG, size) for _ in range(3))))

                measure(f"3 x {args.size_mb} MB uploads, wrong key", gw, three)
            finally:
                gw.stop()
            gw = gateway(tmp, upstream)
            try:
                measure(f"1 x {args.size_mb} MB upload, right key, to {'the embedded' if mock is None else 'a'} mock",
                        gw, lambda: upload(gw.url, RIGHT, size))
            finally:
                gw.stop()
            gw = gateway(tmp, upstream)
            try:
                measure("50 MB JSON string (status, seconds)", gw, lambda: big_json(gw.url, 50 * 1000 * 1000))
            finally:
                gw.stop()
        finally:
            if mock is not None:
                mock.stop()


if __name__ == "__main__":
    main()
