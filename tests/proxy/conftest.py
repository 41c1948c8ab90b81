"""Gateway fixtures: a running `oaigate` (in a thread) in front of the mock or a test upstream.

    gw = gateway()                       # base_url = "mock" (the embedded mock)
    gw = gateway(upstream_url, upstream={"max_retries": 0}, sleep=fake_sleep, keys=[...])
    gw.url                               # the gateway's /v1 base URL, for any SDK
    gw.rows(expect=3)                    # the ledger rows, once the 3 expected ones are written

`upstream(app)` runs any aiohttp app (a misbehaving test upstream) the same way. Every server a test
starts is stopped when the test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from proxy.app import PIPELINE, make_app
from proxy.config import Config

from ..servers import ServerThread
from .scripted import Action, Script

if TYPE_CHECKING:
    from .processes import Serve

UPSTREAM_KEY_ENV = "OAIGATE_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-SECRET-5f3c9a1e77d04b2c"  # must never reach a client, the ledger or a log
CLIENT_KEY = "sk-client-7d41e0"


# --- raw HTTP ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def afetch(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Reply:
    """`url` is sent as written: percent-escapes are not normalized."""
    async with session.request(method, URL(url, encoded=True), **kwargs) as response:
        return Reply(response.status, response.headers, await response.read())


def fetch(method: str, url: str, *, key: str | None = CLIENT_KEY, headers: dict[str, str] | None = None,
          **kwargs: Any) -> Reply:
    """One raw HTTP request with aiohttp (bearer `key` unless None); the body as bytes, never decoded."""
    all_headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    all_headers.update(headers or {})

    async def go() -> Reply:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            return await afetch(session, method, url, headers=all_headers, **kwargs)

    return asyncio.run(go())


# --- servers -------------------------------------------------------------------------------------

@dataclass(eq=False)
class Gateway:
    server: ServerThread
    config: Config
    db: Path
    stopped: bool = False

    @property
    def root(self) -> str:
        return self.server.url

    @property
    def url(self) -> str:
        """The `/v1` base URL to give an SDK."""
        return self.server.url + "/v1"

    def client(self, key: str = CLIENT_KEY, **kwargs: Any) -> openai.OpenAI:
        """A sync SDK client on the gateway, no SDK retries (use it in a `with`)."""
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=kwargs.pop("max_retries", 0),
                             timeout=kwargs.pop("timeout", 15.0), **kwargs)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait for the finish hooks of every exchange so far, then for the writer to write their rows."""
        if self.stopped:
            return
        pipeline = self.server.app[PIPELINE]
        done = threading.Event()

        def kick() -> None:
            asyncio.ensure_future(pipeline.drain()).add_done_callback(lambda _: done.set())

        self.server.call(kick)
        assert done.wait(timeout), "the gateway's finish hooks did not complete"
        if pipeline.writer is not None:
            assert pipeline.writer.flush(timeout), "the ledger writer did not flush"

    def rows(self, expect: int | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The ledger's rows, oldest first. With `expect`, waits (bounded) until that many are written:
        a stream's handler may still be finishing when the client has read its last byte."""
        deadline = time.monotonic() + timeout
        while True:
            self.settle()
            found = read_rows(self.db)
            if expect is None or len(found) >= expect or time.monotonic() > deadline:
                return found
            threading.Event().wait(0.01)

    def healthz(self) -> dict[str, Any]:
        import json

        return json.loads(fetch("GET", self.root + "/healthz", key=None).body)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.stop()


def ledger_locker(db: Path | str) -> sqlite3.Connection:
    """A connection for a test to lock the ledger with (`BEGIN EXCLUSIVE`). Like any SQLite client it
    waits out the locks the gateway's own connections hold for a moment (a reader opening or closing the
    WAL, as the dashboard's startup rollup does): with no busy timeout, `BEGIN EXCLUSIVE` then fails now
    and again with "database is locked"."""
    return sqlite3.connect(db, isolation_level=None, timeout=10.0)


def hold_ledger(db: Path) -> sqlite3.Connection:
    """Another process's hold on the ledger that keeps every other connection out, readers too (SQLite's
    exclusive locking mode with a write in progress); it ends when the connection is closed."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO requests (id, started_at, endpoint, status) VALUES ('held', 'x', 'x', 0)")
    return holder


def read_rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY started_at, rowid")]
    finally:
        conn.close()


@pytest.fixture
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The upstream key, set in the environment variable the gateway's config names."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    return UPSTREAM_KEY


@pytest.fixture
def gateway(tmp_path: Path, upstream_key: str) -> Iterator[Callable[..., Gateway]]:
    """Factory: `gateway(base_url="mock", *, sleep=None, keys=(), db=None, **sections)` starts a gateway.

    `sections` are config sections as dicts (`upstream={"max_retries": 0}`, `ledger={...}`, `mock={...}`);
    the ledger lives in tmp_path and the upstream key comes from `UPSTREAM_KEY_ENV`."""
    started: list[Gateway] = []

    def start(base_url: str = "mock", *, sleep: Callable[[float], Awaitable[object]] | None = None,
              keys: list[dict[str, Any]] | tuple[()] = (), db: Path | None = None, **sections: Any) -> Gateway:
        db = db or tmp_path / f"ledger-{len(started)}.db"
        raw: dict[str, Any] = {**sections, "keys": list(keys)}
        raw["upstream"] = {"base_url": base_url, "api_key_env": UPSTREAM_KEY_ENV, **sections.get("upstream", {})}
        raw["ledger"] = {"path": str(db), **sections.get("ledger", {})}
        config = Config.model_validate(raw)
        extra = {} if sleep is None else {"sleep": sleep}
        server = ServerThread(lambda: make_app(config, **extra)).start()
        gw = Gateway(server, config, db)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def upstream() -> Iterator[Callable[[web.Application], ServerThread]]:
    """Factory: run a test upstream app; returns the ServerThread (its `/v1` base is `.url + "/v1"`)."""
    started: list[ServerThread] = []

    def start(app: web.Application) -> ServerThread:
        server = ServerThread(lambda: app).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class SleepRecorder:
    """A fake `sleep` for the gateway: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def fake_sleep() -> SleepRecorder:
    return SleepRecorder()


# --- the echo upstream ---------------------------------------------------------------------------

BINARY = bytes(range(256))


async def _echo(request: web.Request) -> web.Response:
    """What reached the upstream: method, raw path and query, every header (in order) and the body."""
    body = await request.read()
    return web.json_response({
        "method": request.method,
        "path": request.rel_url.raw_path,
        "query": request.rel_url.raw_query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_b64": base64.b64encode(body).decode(),
    }, headers={"x-request-id": "req_echo_1", "x-ratelimit-remaining-requests": "499"})


async def _binary(request: web.Request) -> web.Response:
    return web.Response(body=BINARY, content_type="application/octet-stream")


def echo_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/files/file-binary/content", _binary)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


@pytest.fixture
def echo(upstream: Callable[[web.Application], ServerThread]) -> str:
    """An upstream that answers every request with what it received (JSON); returns its /v1 base URL."""
    return upstream(echo_app()).url + "/v1"


def echoed_headers(echoed: dict[str, Any]) -> dict[str, str]:
    """The echoed headers, lower-cased names (a repeated name would fail: none is expected)."""
    pairs = [(k.lower(), v) for k, v in echoed["headers"]]
    assert len({k for k, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


@pytest.fixture
def scripted(upstream: Callable[[web.Application], ServerThread]) -> Iterator[Callable[..., tuple[Script, str]]]:
    """Factory: `scripted(*actions)` starts a scripted upstream; returns it and its /v1 base URL."""
    started: list[tuple[Script, ServerThread]] = []

    def start(*actions: Action) -> tuple[Script, str]:
        script = Script(*actions)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", script.handle)
        server = upstream(app)
        started.append((script, server))
        return script, server.url + "/v1"

    yield start
    for script, server in started:
        server.call(script.release.set)  # let hanging handlers end, so the upstream stops at once


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Factory: `serve(*args)` runs `oaigate serve ARGS` in tmp_path; every process is stopped at the end."""
    from .processes import Serve

    started: list[Serve] = []

    def start(*args: str) -> Serve:
        process = Serve(list(args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
        process.stop()
