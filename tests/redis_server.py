"""A real `redis-server` for tests: started on a free loopback port in a temporary folder, stopped after.

    server = RedisServer(tmp_path).start()
    server.url                    # redis://127.0.0.1:PORT/0
    server.stop(); server.start() # an outage, then Redis back on the same port

`require_redis_server()` skips a test (loudly) when the binary is missing, and fails it under CI
(`CI=true`): a broken install must not hide behind a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def require_redis_server() -> str:
    """The redis-server binary; skip the test without it (fail under CI)."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                              else None)
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server): the Redis state tests cannot run"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason + " [CI=true: a missing server is a failure]")
        pytest.skip("SKIPPED LOUDLY: " + reason)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1, no persistence, in `folder`."""

    def __init__(self, folder: Path, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.binary = require_redis_server()
        self.folder, self.port, self.args = folder, port or free_port(), args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log"), *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                             password=self.password)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = (self.folder / "redis.log")
                        raise RuntimeError("redis-server did not start: "
                                           + (log.read_text()[-2000:] if log.exists() else "")) from None
                    time.sleep(0.02)
        finally:
            client.close()

    @property
    def password(self) -> str | None:
        return self.args[self.args.index("--requirepass") + 1] if "--requirepass" in self.args else None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, password=self.password)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
