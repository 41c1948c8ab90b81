"""A real PostgreSQL server for tests: `initdb` in a temp dir, `postgres` on a free 127.0.0.1 port, stopped after.

The binaries come from `PATH` or the Debian layout (`/usr/lib/postgresql/<version>/bin`). PostgreSQL
refuses to run as root, so under root it runs as the `postgres` user (else `nobody`) through `runuser`,
with the temp dir handed to that user. A missing server skips the tests loudly, and under `CI=true`
fails them: CI installs it (`.ci/run`), so its absence there is a broken install, not a reason to skip.

The superuser `oaigate` has a password (password authentication over TCP, as a real deployment would),
so the tests also see that it never leaks; `database()` gives each test a fresh database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "oaigate"
PASSWORD = "pg-test-secret-" + uuid.uuid4().hex[:12]


def binaries() -> Path | None:
    """The folder holding `initdb` and `postgres`, newest version first; None when not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]), reverse=True)
    return Path(folders[0]).parent if folders else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """The prefix that runs a command as a non-root user when we are root."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and there is neither a postgres nor a nobody user to run PostgreSQL")


class PostgresServer:
    """One `postgres` process on 127.0.0.1:`port`, data in a temp dir; `stop()` ends it and removes the dir."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="oaigate-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        prefix = _run_as()
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if prefix:
            user = prefix[2]
            os.chmod(self.dir, 0o700)
            shutil.chown(self.dir, user)
            shutil.chown(pwfile, user)
        subprocess.run([*prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
                        "--no-instructions"], check=True, capture_output=True)
        for _ in range(5):  # a free port can be taken between finding it and binding it: try another
            self.port = _free_port()
            if self.launch():
                return self
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def launch(self) -> bool:
        """Run `postgres` on the data dir and `port`; whether it came up (again, after `halt`)."""
        prefix = _run_as()
        settings = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-k", str(self.dir),
                    "-c", "max_connections=200"]
        if not self.fsync:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the server writes it until stop()
        if prefix:
            shutil.chown(self.dir / "server.log", prefix[2])
        self.proc = subprocess.Popen([*prefix, str(self.bindir / "postgres"), "-D", str(self.data), *settings],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if self._ready():
            return True
        self.proc.kill()
        self.proc.wait()
        return False

    def halt(self, mode: str = "immediate") -> None:
        """Stop the server, keeping its data; "immediate" cuts clients off at once, "fast" rolls them back."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run([*_run_as(), str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode,
                            "-w", "-t", "30"], check=False, capture_output=True)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _ready(self, timeout: float = 30.0) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def database(self) -> str:
        """A new, empty database; its URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        self.halt("immediate")  # its data is deleted next: nothing to write out
        shutil.rmtree(self.dir, ignore_errors=True)


def missing(reason: str) -> None:
    """Skip loudly, or fail under CI, where the server must be installed."""
    message = f"PostgreSQL is not available ({reason}): install the Debian package `postgresql` to run these tests"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """A started server (skips or fails as `missing` says when there is none); stopped at the end."""
    bindir = binaries()
    if bindir is None:
        missing("no initdb on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("the psycopg package is not installed")
    assert bindir is not None
    server = PostgresServer(bindir, fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.stop()
