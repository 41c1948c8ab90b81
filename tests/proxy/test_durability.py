"""A ledger that survives kill -9: every request a client received as a whole 200 has its row.

`oaigate serve` runs as a real subprocess in front of the embedded mock, ~32 aiohttp clients send a
mix of JSON and streaming chat requests, and the process gets SIGKILL mid-load. Then, read with plain
`sqlite3`: each `x-oaigate-request-id` of a response received completely with status 200 has its row,
the file passes `PRAGMA integrity_check`, and a gateway restarted on it rebuilds budgets that cover
that spend. `run_trial` is also what `benchmarks/kill9.py` runs against another checkout (the loss
share before this fix).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from .conftest import CLIENT_KEY, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Gateway, Reply, fetch, ledger_locker

REPO = Path(__file__).resolve().parents[2]
READY = "oaigate serving on "
KEY_NAME = "durable"
BUDGET_CONFIG = f"""
[[keys]]
name = "{KEY_NAME}"
key = "{CLIENT_KEY}"
budget_usd = 1000
budget_period = "total"
"""


def gateway_config(db: Path, ledger_extra: str = "") -> str:
    return (f'[upstream]\nbase_url = "mock"\napi_key_env = "{UPSTREAM_KEY_ENV}"\n'
            f'[ledger]\npath = "{db}"\n{ledger_extra}\n{BUDGET_CONFIG}')


class Serve:
    """`python -m proxy` (that is `oaigate serve`) from the checkout `code`, on a free port."""

    def __init__(self, code: Path, workdir: Path, config: Path) -> None:
        self.log = workdir / f"serve-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(code), UPSTREAM_KEY_ENV: UPSTREAM_KEY, "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "--config", str(config), "--port", "0"],
                                         cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def ready_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith(READY):
                    return line[len(READY):].split()[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"the gateway did not start: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Trial:
    """One load run ended by SIGKILL: what the clients received, and what the ledger kept."""

    received: list[tuple[str | None, str | None,
                         bool]] = field(default_factory=list)  # (gateway id, upstream id, stream)
    failed: int = 0
    ids: set[str] = field(default_factory=set)
    upstream_ids: set[str] = field(default_factory=set)
    integrity: str = ""

    @property
    def missing(self) -> list[tuple[str | None, str | None, bool]]:
        """Received 200s without a row: by the gateway's id when it sent one, else by the upstream's."""
        return [r for r in self.received
                if (r[0] not in self.ids if r[0] is not None else r[1] not in self.upstream_ids)]

    @property
    def loss_share(self) -> float:
        return len(self.missing) / max(len(self.received), 1)


async def drive(url: str, kill: Callable[[], None], *, kill_after: int, connections: int = 32) -> Trial:
    """`connections` clients, each sending chat requests one after another (every other one a stream),
    until the gateway dies; `kill` is called once `kill_after` responses were received whole."""
    trial, numbers = Trial(), itertools.count()
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

    async def client(session: aiohttp.ClientSession) -> None:
        while True:
            n = next(numbers)
            stream = n % 2 == 1
            body = {"model": "gpt-4o-mini", "max_tokens": 8, "stream": stream,
                    "messages": [{"role": "user", "content": f"Durable request number {n}."}]}
            try:
                async with session.post(url + "/chat/completions", json=body, headers=headers) as response:
                    data = await response.read()  # whole: Content-Length, or the chunked stream's end
                    if response.status != 200 or (stream and b"data: [DONE]" not in data):
                        trial.failed += 1
                        continue
                    trial.received.append((response.headers.get("x-oaigate-request-id"),
                                           response.headers.get("x-request-id"), stream))
            except (TimeoutError, aiohttp.ClientError):
                return  # the gateway is gone
            if len(trial.received) == kill_after:
                kill()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    return trial


def read_ledger(db: Path, trial: Trial) -> None:
    conn = sqlite3.connect(db)
    try:
        trial.integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        for row_id, upstream_id in conn.execute("SELECT id, upstream_request_id FROM requests"):
            trial.ids.add(row_id)
            trial.upstream_ids.add(upstream_id)
    finally:
        conn.close()


def run_trial(code: Path, workdir: Path, *, ledger_extra: str = "", kill_after: int = 300,
              connections: int = 32) -> Trial:
    """Start a gateway from the checkout `code`, load it, SIGKILL it after `kill_after` whole answers,
    then read its ledger."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "ledger.db"
    config = workdir / "oaigate.toml"
    config.write_text(gateway_config(db, ledger_extra))
    gateway = Serve(code, workdir, config)
    try:
        trial = asyncio.run(drive(gateway.ready_url(), gateway.kill, kill_after=kill_after, connections=connections))
    finally:
        gateway.kill()
    read_ledger(db, trial)
    return trial


@pytest.fixture
def killed(tmp_path: Path) -> Iterator[Callable[[], Trial]]:
    yield lambda: run_trial(REPO, tmp_path)


@pytest.mark.parametrize("attempt", range(3))
def test_every_200_received_has_its_row_after_kill_9(killed: Callable[[], Trial], attempt: int) -> None:
    trial = killed()
    assert len(trial.received) >= 300 and trial.failed == 0
    assert {stream for _, _, stream in trial.received} == {True, False}
    assert all(gateway_id is not None for gateway_id, _, _ in trial.received), "no x-oaigate-request-id header"
    assert trial.missing == [], f"{trial.loss_share:.1%} of the 200s received have no ledger row"
    assert trial.integrity == "ok"


def test_budget_rebuilt_after_kill_9_covers_every_200_received(tmp_path: Path) -> None:
    trial = run_trial(REPO, tmp_path)
    assert trial.missing == [] and trial.integrity == "ok"
    db = tmp_path / "ledger.db"
    conn = sqlite3.connect(db)
    try:
        (rows, total), = conn.execute("SELECT COUNT(*), SUM(cost_microusd) FROM requests WHERE key_name = ?",
                                      (KEY_NAME,))
        received = [gid for gid, _, _ in trial.received]
        (received_cost,), = conn.execute(
            f"SELECT SUM(cost_microusd) FROM requests WHERE id IN ({','.join('?' * len(received))})", received)
    finally:
        conn.close()
    assert rows >= len(trial.received) and received_cost > 0
    restarted = Serve(REPO, tmp_path, tmp_path / "oaigate.toml")
    try:
        url = restarted.ready_url()
        (budget,) = json.loads(fetch("GET", url.removesuffix("/v1") + "/oaigate/budgets").body)["budgets"]
    finally:
        restarted.kill()
    spent = int(Decimal(budget["spent_usd"]) * 1_000_000)
    assert spent == total >= received_cost


# --- the wait for the commit is bounded --------------------------------------------------------------

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Wait for me."}], "max_tokens": 5}


def test_a_locked_ledger_delays_an_answer_by_at_most_durable_wait_s(gateway: Callable[..., Gateway]) -> None:
    wait_s = 0.3
    gw = gateway(ledger={"durable_wait_s": wait_s})
    fetch("GET", gw.url + "/models")
    gw.rows(expect=1)
    lock = ledger_locker(gw.db)
    try:
        lock.execute("BEGIN EXCLUSIVE")  # the writer's busy timeout is 5 s: without a bound, answers wait that long
        lock.execute("INSERT INTO requests (id, started_at, endpoint, status) VALUES ('lock', 'x', 'x', 0)")
        for stream in (False, True, False):
            started = time.monotonic()
            reply = fetch("POST", gw.url + "/chat/completions", json={**CHAT, "stream": stream})
            elapsed = time.monotonic() - started
            assert reply.status == 200 and (b"[DONE]" in reply.body) == stream
            assert elapsed < wait_s + 2.0, f"answered after {elapsed:.2f}s with a locked ledger"
        health = gw.healthz()["ledger"]
        assert health["durability_timeouts"] == 3 and health["written"] == 1
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    rows = gw.rows(expect=4)
    assert [r["endpoint"] for r in rows].count("/v1/chat/completions") == 3
    assert gw.healthz()["ledger"]["durability_timeouts"] == 3


def test_the_row_is_committed_when_the_answer_arrives(gateway: Callable[..., Gateway]) -> None:
    """A whole JSON answer and a stream's end wait for the row's commit (no flush, no polling)."""
    gw = gateway(ledger={"durable_wait_s": 30.0})
    for stream in (False, True):
        reply = fetch_held_by_locked_ledger(gw, {**CHAT, "stream": stream})
        conn = sqlite3.connect(gw.db)
        try:
            found = conn.execute("SELECT status, stream, prompt_tokens, cost_microusd FROM requests WHERE id = ?",
                                 (reply.headers["x-oaigate-request-id"],)).fetchall()
        finally:
            conn.close()
        assert len(found) == 1 and found[0][:2] == (200, int(stream)) and found[0][2] > 0
    assert gw.healthz()["ledger"]["durability_timeouts"] == 0


def test_every_v1_answer_names_its_ledger_row(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    replies = [fetch("POST", gw.url + "/chat/completions", json=CHAT),
               fetch("POST", gw.url + "/chat/completions", json={**CHAT, "model": "no-such-model"}),
               fetch("GET", gw.url + "/models"),
               fetch("POST", gw.url + "/chat/completions", data=b"{not json",
                     headers={"Content-Type": "application/json"})]
    ids = [r.headers.get("x-oaigate-request-id") for r in replies]
    assert all(ids) and len(set(ids)) == len(ids)
    rows = {r["id"]: r for r in gw.rows(expect=len(replies))}
    assert [rows[i]["status"] for i in ids] == [r.status for r in replies]


def test_finish_hooks_run_once_per_exchange(gateway: Callable[..., Gateway]) -> None:
    """`complete` runs them before the last bytes; the background finish must not run them again (a
    second budget settle would count the spend twice, a second metrics pass the request twice)."""
    gw = gateway(keys=[{"name": KEY_NAME, "key": CLIENT_KEY, "budget_usd": 100, "concurrent": 4}])
    for stream in (False, True, False, True):
        assert fetch("POST", gw.url + "/chat/completions", json={**CHAT, "stream": stream}).status == 200
    rows = gw.rows(expect=4)
    budget = json.loads(fetch("GET", gw.root + "/oaigate/budgets").body)["budgets"][0]
    assert int(Decimal(budget["spent_usd"]) * 1_000_000) == sum(r["cost_microusd"] for r in rows) > 0
    assert budget["reserved_usd"] == "0.000000"
    metrics = fetch("GET", gw.root + "/metrics").body.decode()  # with [[keys]], /metrics needs a key
    served = [line for line in metrics.splitlines() if line.startswith("oaigate_requests_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in served) == 4


def _row_now(db: Path, row_id: str) -> tuple[int, str | None] | None:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT status, fixture FROM requests WHERE id = ?", (row_id,)).fetchone()
    finally:
        conn.close()


def fetch_held_by_locked_ledger(gw: Gateway, body: dict[str, object]) -> Reply:
    """Send `body` while another connection locks the ledger: neither the whole answer nor a stream's
    terminal event (`[DONE]`) may reach the client before the lock ends (its row cannot commit); once
    it has them, its row is there."""
    lock = ledger_locker(gw.db)
    replies: list[Reply] = []
    terminal_seen = threading.Event()

    async def send() -> None:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with (aiohttp.ClientSession() as session,
                    session.post(gw.url + "/chat/completions", json=body, headers=headers) as response):
            data = b""
            async for piece in response.content.iter_any():
                data += piece
                if b"data: [DONE]" in data:
                    terminal_seen.set()
            replies.append(Reply(response.status, response.headers, data))

    try:
        lock.execute("BEGIN EXCLUSIVE")
        sender = threading.Thread(target=lambda: asyncio.run(send()))
        sender.start()
        sender.join(0.5)
        assert not terminal_seen.is_set(), "the stream's terminal event went out before its row was committed"
        assert sender.is_alive() and not replies, "the answer went out before its row was committed"
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    sender.join(10)
    (reply,) = replies
    assert reply.status == 200 and _row_now(gw.db, reply.headers["x-oaigate-request-id"]) is not None
    return reply


def test_recorded_and_replayed_answers_wait_for_their_rows(gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """Recording (its finish writes the fixture before the terminal event goes out) still keeps the
    whole stream, and a replay, like a live answer, goes out whole only once its row is committed."""
    fdir = tmp_path / "fixtures"
    recorder = gateway(fixtures={"mode": "record", "dir": str(fdir)}, ledger={"durable_wait_s": 30.0})
    recorded = {}
    for stream in (False, True):
        reply = fetch_held_by_locked_ledger(recorder, {**CHAT, "stream": stream})
        assert _row_now(recorder.db, reply.headers["x-oaigate-request-id"]) == (200, "recorded")
        recorded[stream] = reply.body
    recorder.stop()
    player = gateway(fixtures={"mode": "replay", "dir": str(fdir)}, ledger={"durable_wait_s": 30.0})
    for stream in (False, True):
        reply = fetch_held_by_locked_ledger(player, {**CHAT, "stream": stream})
        assert reply.headers["x-oaigate-fixture"] == "hit"
        assert _row_now(player.db, reply.headers["x-oaigate-request-id"]) == (200, "hit")
        if stream:
            assert reply.body.endswith(b"data: [DONE]\n\n")
            assert reply.body.count(b"data: ") == recorded[True].count(b"data: ") > 2
        else:
            assert json.loads(reply.body)["choices"] == json.loads(recorded[False])["choices"]
