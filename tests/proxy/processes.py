"""`oaigate serve` as a real process for tests: `Serve` collects its stderr line by line and finds its URL."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from .conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV

OAIGATE = str(Path(sys.executable).parent / "oaigate")
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "One word, please."}], "max_tokens": 5}
READY = "oaigate serving on "


class Serve:
    """A running `oaigate serve` subprocess; stderr is collected line by line on a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([OAIGATE, "serve", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def ready_url(self, timeout: float = 30.0) -> str:
        """The `/v1` base URL from the ready line."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"exited {self.proc.wait()} before serving: {''.join(self.stderr)}"
            if line.startswith(READY):
                url = line[len(READY):].split()[0]
                assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), line
                return url

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def voluntary_switches(task: Path) -> int:
    """How many times the thread `/proc/PID/task/TID` gave up its CPU to wait (Linux)."""
    status = (task / "status").read_text()
    return int(status.split("voluntary_ctxt_switches:", 1)[1].split()[0])


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "oaigate.toml"
    path.write_text(text)
    return path


MOCK_CONFIG = f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
