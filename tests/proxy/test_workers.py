"""`oaigate serve --workers N`: one port, N supervised processes, one ledger (real processes, real signals)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from .processes import MOCK_CONFIG, Serve, voluntary_switches, write_config

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT: Linux/BSD only")


def _pid(base: str) -> int:
    """The pid of the worker that answers /healthz on a new connection (the kernel picks the worker)."""
    with urllib.request.urlopen(base.removesuffix("/v1") + "/healthz", timeout=10) as response:
        return int(json.loads(response.read())["pid"])


def _pids(base: str, want: int, tries: int = 400) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(_pid(base))
        if len(seen) >= want:
            break
    return seen


def _worker_pids(line: str) -> list[int]:
    return [int(p) for p in line.split("(pids ", 1)[1].split(")", 1)[0].split(", ")]


def _ready_line(serve: Serve) -> str:
    return next(line for line in serve.stderr if line.startswith("oaigate serving on "))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def test_two_workers_share_one_port_and_one_ledger(tmp_path: Path) -> None:
    config = write_config(tmp_path, MOCK_CONFIG)
    serve = Serve(["--config", str(config), "--port", "0", "--workers", "2", "--db", str(tmp_path / "l.db")],
                  tmp_path)
    try:
        base = serve.ready_url(timeout=60)
        pids = _worker_pids(_ready_line(serve))
        assert len(pids) == 2 and serve.proc.pid not in pids
        assert _pids(base, 2) == set(pids), "new connections reach both workers"

        def call(i: int) -> str:
            client = openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0)
            answer = client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                                    messages=[{"role": "user", "content": f"hello {i}"}])
            client.close()  # one client per call: each call is a new connection, spread over the workers
            return answer.id

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(call, range(120)))
        assert len(set(ids)) == 120
    finally:
        assert serve.stop() == 0
    out = "".join(serve.stderr)
    assert out.count("oaigate stopped (worker ") == 2, out
    assert "oaigate stopped: 2 workers" in out
    assert _wait_gone(pids)
    with sqlite3.connect(tmp_path / "l.db") as conn:
        rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests WHERE endpoint = "
                            "'/v1/chat/completions' AND status = 200").fetchone()
    assert rows == (120, 120)


def test_a_dead_worker_is_restarted_and_a_dead_parent_takes_its_workers(tmp_path: Path) -> None:
    config = write_config(tmp_path, MOCK_CONFIG)
    serve = Serve(["--config", str(config), "--port", "0", "--workers", "2", "--db", str(tmp_path / "l.db")],
                  tmp_path)
    try:
        base = serve.ready_url(timeout=60)
        first = _worker_pids(_ready_line(serve))
        os.kill(first[0], signal.SIGKILL)
        line = serve.lines.get(timeout=30)
        while line is not None and "restarted" not in line:
            line = serve.lines.get(timeout=30)
        out = "".join(serve.stderr)
        assert f"worker 0 (pid {first[0]}) exited with code -9; restarting it" in out, out
        assert line is not None
        replacement = int(line.split("(pid ", 1)[1].rstrip(")\n"))
        assert _pids(base, 2) == {replacement, first[1]}
    finally:
        serve.proc.kill()  # kill -9 the supervisor: its workers must not outlive it
        serve.stop()
    assert _wait_gone([replacement, first[1]]), "workers outlived their supervisor"


def test_workers_with_a_budget_need_shared_state(tmp_path: Path) -> None:
    config = write_config(tmp_path, MOCK_CONFIG + "[limits]\nbudget_usd = 5\n")
    serve = Serve(["--config", str(config), "--port", "0", "--workers", "2"], tmp_path)
    assert serve.proc.wait(60) == 2
    serve.stop()
    out = "".join(serve.stderr)
    assert "--workers 2 with 1 budget(s) and 0 rate limit(s) but no [state] url" in out, out
    assert "[state] url" in out and "could spend 2x a budget" in out


def test_workers_on_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        config = write_config(tmp_path, MOCK_CONFIG)
        serve = Serve(["--config", str(config), "--port", str(taken.getsockname()[1]), "--workers", "2"], tmp_path)
        assert serve.proc.wait(60) == 1
        serve.stop()
    finally:
        taken.close()
    assert "cannot listen on 127.0.0.1:" in "".join(serve.stderr)


def _wakes(pids: list[int]) -> int:
    """How many times the threads of `pids` gave up their CPU to wait, in all (Linux: /proc)."""
    return sum(voluntary_switches(task) for pid in pids for task in Path(f"/proc/{pid}/task").iterdir())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread switches from /proc")
def test_an_idle_gateway_never_wakes(tmp_path: Path) -> None:
    """Once its clients hung up, no thread of the supervisor or of its workers wakes up (no timer polls
    for work): a gateway left running on a laptop costs no CPU. It still answers at once after."""
    config = write_config(tmp_path, MOCK_CONFIG)
    serve = Serve(["--config", str(config), "--port", "0", "--workers", "2", "--db", str(tmp_path / "l.db")],
                  tmp_path)
    try:
        base = serve.ready_url(timeout=60)
        with openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0) as client:  # hangs up when done
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        pids = [serve.proc.pid, *_worker_pids(_ready_line(serve))]
        quiet = 0
        before = _wakes(pids)
        for _ in range(40):  # start-up work (a tokenizer loading in the background...) ends; then silence
            time.sleep(0.5)
            now = _wakes(pids)
            quiet = quiet + 1 if now == before else 0
            before = now
            if quiet == 2:
                break
        assert quiet == 2, "the gateway's threads kept waking up while it was idle"
        with openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0) as client:
            answer = client.chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    finally:
        serve.stop()
