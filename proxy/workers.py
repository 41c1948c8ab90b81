"""`oaigate serve --workers N`: N gateway processes sharing one port, supervised by the parent.

The parent binds the port first with SO_REUSEPORT (so a port in use is a clear error at once, and
`--port 0` picks one port for all), then starts each worker as `python -m proxy serve ... --port P`
with `--worker-index I`; a worker binds the same port with SO_REUSEPORT and the kernel spreads new
connections over the workers. The parent's own socket never listens, so it takes no connections; it
keeps the port reserved while a worker restarts.

Supervision: a worker that exits while the gateway is not stopping is logged and started again (a
worker that keeps dying, more than `MAX_RESTARTS` times in `RESTART_WINDOW_S`, stops the whole
gateway rather than loop). SIGTERM or SIGINT to the parent is passed to every worker, each drains its
requests in flight (`server.shutdown_grace_s`), and the parent waits for them all. Workers end with
the parent even when it is killed (Linux: PR_SET_PDEATHSIG).

What the workers share: only what lives outside a process. Budgets and rate limits need `[state] url`
(checked before start, see `shared_state_problem`); the ledger is one SQLite file in WAL mode with a
writer per worker (or one PostgreSQL ledger); `/metrics` is the answering worker's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("oaigate")

READY_FD_ENV = "OAIGATE_READY_FD"
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 120.0
POLL_S = 0.1  # how often the supervisor looks where it cannot sleep until news (no pidfd, not the main thread)


class WorkersError(Exception):
    """The workers could not be started (the message says why)."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening: it holds the port (and picks
    one for port 0) for the workers, which bind the same port with SO_REUSEPORT."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersError("--workers needs SO_REUSEPORT, which this OS does not have; run one process per port "
                           "behind a load balancer instead")
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def notify_ready() -> None:
    """In a worker: tell the supervising parent that this worker accepts requests (no-op otherwise)."""
    fd = os.environ.get(READY_FD_ENV)
    if fd is None:
        return
    try:
        os.write(int(fd), b"r")
        os.close(int(fd))
    except OSError:
        pass
    os.environ.pop(READY_FD_ENV, None)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM when the supervisor dies, even by kill -9."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Supervisor:
    """Starts `count` workers with `command(index)`, restarts those that die, stops them all on a signal."""

    command: Callable[[int], Sequence[str]]
    count: int
    grace_s: float = 10.0
    say: Callable[[str], None] = field(default=lambda line: print(f"oaigate: {line}", file=sys.stderr))
    workers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: deque[float] = field(default_factory=deque)
    stopping: bool = False

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], int]:
        read, write = os.pipe()
        env = {**os.environ, READY_FD_ENV: str(write)}
        try:
            proc = subprocess.Popen(list(self.command(index)), env=env, pass_fds=(write,),
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            os.close(write)
        self.workers[index] = proc
        return proc, read

    def _await_ready(self, pending: dict[int, int], timeout: float) -> None:
        """Wait until every worker in `pending` (index -> read end of its pipe) says it is ready."""
        deadline = time.monotonic() + timeout
        try:
            while pending:
                for index, fd in list(pending.items()):
                    proc = self.workers[index]
                    os.set_blocking(fd, False)
                    try:
                        got = os.read(fd, 1)
                    except BlockingIOError:
                        got = None
                    if got:
                        del pending[index]
                        os.close(fd)
                    elif proc.poll() is not None:
                        raise WorkersError(f"worker {index} exited with code {proc.returncode} before it was ready")
                if self.stopping:
                    raise WorkersError("stopped before the workers were ready")
                if time.monotonic() > deadline:
                    raise WorkersError(f"workers not ready after {timeout:.0f}s")
                time.sleep(0.02)
        finally:
            for fd in pending.values():
                os.close(fd)

    def start(self) -> None:
        """Start every worker and return once all of them accept requests (or raise WorkersError)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        pending = {}
        for index in range(self.count):
            _, pending[index] = self._spawn(index)
        try:
            self._await_ready(pending, READY_TIMEOUT_S)
        except WorkersError:
            self.stop()
            raise

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until a stop signal (0) or a worker that keeps dying (1); then stop every worker."""
        with _News() as news:
            return self._supervise(news)

    def _supervise(self, news: _News) -> int:
        code = 0
        while not self.stopping:
            for index, proc in list(self.workers.items()):
                if proc.poll() is None or self.stopping:
                    continue
                now = time.monotonic()
                while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
                    self.restarts.popleft()
                if len(self.restarts) >= MAX_RESTARTS:
                    self.say(f"error: worker {index} (pid {proc.pid}) exited with code {proc.returncode}; "
                             f"{MAX_RESTARTS} restarts in {RESTART_WINDOW_S:.0f}s already, stopping the gateway")
                    self.stopping, code = True, 1
                    break
                self.restarts.append(now)
                self.say(f"warning: worker {index} (pid {proc.pid}) exited with code {proc.returncode}; restarting it")
                _, fd = self._spawn(index)
                try:
                    self._await_ready({index: fd}, READY_TIMEOUT_S)
                except WorkersError as exc:
                    self.say(f"warning: {exc}")
                else:
                    self.say(f"worker {index} restarted (pid {self.workers[index].pid})")
            if not self.stopping:
                news.wait([proc.pid for proc in self.workers.values()])
        self.stop()
        return code

    def stop(self) -> None:
        """SIGTERM to every worker; each drains within the grace; SIGKILL what is left after it."""
        self.stopping = True
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5.0
        for proc in self.workers.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _News:
    """Sleeps until there is something for the supervisor to look at: a worker exited (a pidfd per
    worker turns readable) or a signal came (Python's signal wakeup fd). An idle supervisor then never
    wakes (it used to look 10 times a second). Where either is missing (not Linux 5.3+, not the main
    thread) it looks every `POLL_S` instead."""

    def __init__(self) -> None:
        self._pidfds: dict[int, int] = {}
        self._read = self._write = -1
        self._previous_wakeup: int | None = None

    def __enter__(self) -> _News:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        try:
            self._previous_wakeup = signal.set_wakeup_fd(self._write)
        except ValueError:  # not the main thread: signals cannot wake us
            self._previous_wakeup = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous_wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
        for fd in (*self._pidfds.values(), self._read, self._write):
            os.close(fd)
        self._pidfds.clear()

    def wait(self, pids: list[int]) -> None:
        """Return once one of `pids` may have exited or a signal came (or after `POLL_S` where it cannot
        tell)."""
        can_sleep = self._previous_wakeup is not None and self._watch(pids)
        select.select([self._read, *self._pidfds.values()], [], [], None if can_sleep else POLL_S)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):  # the signal numbers: the handlers already ran
                pass

    def _watch(self, pids: list[int]) -> bool:
        """A pidfd for each of `pids` (and none for pids gone from it); False if one cannot be had."""
        for pid in self._pidfds.keys() - set(pids):
            os.close(self._pidfds.pop(pid))
        for pid in pids:
            if pid not in self._pidfds:
                try:
                    self._pidfds[pid] = os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]
                except (AttributeError, OSError):  # not Linux 5.3+, or the worker is already gone and reaped
                    return False
        return True
