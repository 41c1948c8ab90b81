"""Gateways on a PostgreSQL ledger, end to end: what they read back at start, and two processes writing one
ledger under load (the issue's done-means: 2,000 requests at concurrency 50 leave exactly 2,000 rows)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path

import openai
import psycopg
import pytest
from aiohttp import web
from click.testing import CliRunner

from mockserver.app import make_app as make_mock
from proxy.cli import cli
from proxy.db.reports import format_usd
from tests.postgres_server import PASSWORD, postgres_server
from tests.servers import ServerThread

from ..conftest import Gateway, fetch
from ..processes import MOCK_CONFIG, Serve, write_config

ALICE, BOB = "sk-alice-0a1b2c", "sk-bob-3d4e5f"
KEYS = [{"name": "alice", "key": ALICE, "budget_usd": 5}, {"name": "bob", "key": BOB}]


def _budget(gw: Gateway) -> str:
    (budget,) = json.loads(fetch("GET", gw.root + "/oaigate/budgets", key=ALICE).body)["budgets"]
    return str(budget["spent_usd"])


def test_budgets_and_owners_come_back_from_postgres_after_a_restart(
        gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread], pg_url: str) -> None:
    mock = upstream(make_mock()).url + "/v1"
    first = gateway(mock, keys=KEYS, ledger={"url": pg_url})
    with first.client(key=ALICE) as alice:
        file_id = alice.files.create(file=("a.jsonl", b"{}\n", "application/jsonl"), purpose="batch").id
        for _ in range(3):
            alice.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=8)
    first.settle()
    spent = _budget(first)
    first.stop()
    with psycopg.connect(pg_url) as conn:
        (rows, cost), = conn.execute("SELECT COUNT(*), SUM(cost_microusd) FROM requests WHERE key_name = 'alice' "
                                     "AND method = 'POST' AND endpoint = '/v1/chat/completions'").fetchall()
    assert rows == 3 and cost > 0 and spent == format_usd(int(cost))

    second = gateway(mock, keys=KEYS, ledger={"url": pg_url})
    assert _budget(second) == spent  # the spend came back from PostgreSQL
    with second.client(key=BOB) as bob, second.client(key=ALICE) as alice:
        with pytest.raises(openai.NotFoundError):
            bob.files.retrieve(file_id)  # alice's file is still alice's
        assert alice.files.retrieve(file_id).id == file_id


REQUESTS, CONCURRENCY = 2_000, 50


@pytest.mark.timeout(600)
def test_two_gateway_processes_write_one_ledger(serve: Callable[..., Serve], tmp_path: Path, pg_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `oaigate serve` processes, one PostgreSQL ledger (password from `password_env`), the real SDK at
    concurrency 50: exactly one row per request, and `oaigate spend` totals equal SUM(cost) on the table."""
    monkeypatch.setenv("OAIGATE_TEST_PG_PASSWORD", PASSWORD)
    url = pg_url.replace(f":{PASSWORD}@", "@")
    config = write_config(tmp_path, MOCK_CONFIG + f'[ledger]\nurl = "{url}"\n'
                          'password_env = "OAIGATE_TEST_PG_PASSWORD"\n')
    gateways = [serve("--config", str(config), "--port", "0") for _ in range(2)]
    bases = [g.ready_url() for g in gateways]
    for base in bases:
        health = json.loads(fetch("GET", base.removesuffix("/v1") + "/healthz", key=None).body)
        assert health["ledger"]["backend"] == "postgresql"

    async def load() -> list[int]:
        clients = [openai.AsyncOpenAI(base_url=base, api_key="sk-anything", max_retries=0, timeout=120)
                   for base in bases]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(number: int) -> int:
            async with gate:
                raw = await clients[number % 2].chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"Request {number}."}], max_tokens=8)
                return raw.status_code

        try:
            return await asyncio.gather(*(one(n) for n in range(REQUESTS)))
        finally:
            for client in clients:
                await client.close()

    statuses = asyncio.run(load())
    assert statuses == [200] * REQUESTS
    for g in gateways:
        assert g.stop() == 0  # SIGTERM drains, and the writer flushes before the process ends
    logs = "".join(line for g in gateways for line in g.stderr)
    assert PASSWORD not in logs and url in logs  # the ready line names the ledger, never its password

    with psycopg.connect(pg_url) as conn:
        (rows, ids, cost, simulated), = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT id), SUM(cost_microusd), "
            "SUM(CASE WHEN simulated <> 0 THEN cost_microusd ELSE 0 END) FROM requests").fetchall()
    assert rows == ids == REQUESTS
    cost, simulated = int(cost), int(simulated)
    result = CliRunner().invoke(cli, ["spend", "--db", pg_url, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    total = json.loads(result.output)["total"]
    assert total["requests"] == REQUESTS
    # the embedded mock's answers are simulated: priced, and counted apart from real spend
    assert cost > 0 and total["cost_microusd"] + total["simulated_microusd"] == cost
    assert total["simulated_microusd"] == simulated


def test_an_unreachable_ledger_stops_serve_at_start_with_a_clear_error(serve: Callable[..., Serve],
                                                                        tmp_path: Path, pg_url: str) -> None:
    wrong = pg_url.replace(f":{PASSWORD}@", f":not-{PASSWORD}@")
    config = write_config(tmp_path, MOCK_CONFIG + f'[ledger]\nurl = "{wrong}"\n')
    gateway = serve("--config", str(config), "--port", "0")
    assert gateway.proc.wait(60) == 1  # EXIT_FAILED: the command could not do its job
    gateway.stop()
    said = "".join(gateway.stderr)
    assert said.startswith("oaigate: cannot connect to the ledger at postgresql://oaigate:***@127.0.0.1:")
    assert "password authentication failed" in said and PASSWORD not in said and "Traceback" not in said


def test_a_locked_ledger_never_holds_a_client(gateway: Callable[..., Gateway], pg_url: str) -> None:
    """The table locked by someone else: every answer still comes (its commit wait gives up, counted in
    /healthz), rows wait in the queue, and they are all written once the lock goes."""
    gw = gateway("mock", ledger={"url": pg_url, "durable_wait_s": 0.2})
    admin = psycopg.connect(pg_url)
    try:
        admin.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")  # held until the transaction ends
        with gw.client() as client:
            for n in range(5):
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                               messages=[{"role": "user", "content": f"locked {n}"}])
        health = gw.healthz()["ledger"]
        assert health["backend"] == "postgresql"
        assert health["durability_timeouts"] == 5 and health["backlog"] >= 1 and health["written"] == 0
    finally:
        admin.rollback()
        admin.close()
    gw.settle()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (5,)
    assert gw.healthz()["ledger"]["backlog"] == 0


def test_a_server_down_mid_run_never_holds_a_client_and_its_rows_land_when_it_is_back(
        gateway: Callable[..., Gateway]) -> None:
    """PostgreSQL stopped under a running gateway: answers still come, rows wait and are retried (counted
    in /healthz), and when the server is back on the same port they are all written, none twice."""
    with postgres_server(fsync=True) as server:  # commits on disk: the halt below loses none of them
        url = server.database()
        gw = gateway("mock", ledger={"url": url, "durable_wait_s": 0.2})
        with gw.client() as client:
            ask = partial(client.chat.completions.create, model="gpt-4o-mini", max_tokens=4)
            ask(messages=[{"role": "user", "content": "before"}])
            gw.settle()
            server.halt()
            for n in range(5):
                ask(messages=[{"role": "user", "content": f"while down {n}"}])
            health = gw.healthz()["ledger"]
            assert health["durability_timeouts"] == 5 and health["backlog"] == 5 and health["written"] == 1
            assert server.launch()
            gw.settle(timeout=60)
            ask(messages=[{"role": "user", "content": "after"}])
            gw.settle()
        health = gw.healthz()["ledger"]
        assert health["write_failures"] >= 1 and health["written"] == 7 and health["dropped"] == 0
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests").fetchone() == (7, 7)
        gw.stop()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT: Linux/BSD only")
def test_serve_workers_write_one_postgres_ledger(serve: Callable[..., Serve], tmp_path: Path, pg_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--workers 2` on a PostgreSQL ledger: the workers migrate it together and each writes its own rows."""
    monkeypatch.setenv("OAIGATE_TEST_PG_PASSWORD", PASSWORD)
    url = pg_url.replace(f":{PASSWORD}@", "@")
    config = write_config(tmp_path, MOCK_CONFIG + f'[ledger]\nurl = "{url}"\n'
                          'password_env = "OAIGATE_TEST_PG_PASSWORD"\n')
    gateway = serve("--config", str(config), "--port", "0", "--workers", "2")
    base = gateway.ready_url(timeout=60)

    async def load() -> list[int]:
        async with openai.AsyncOpenAI(base_url=base, api_key="sk-anything", max_retries=0) as client:
            async def one(number: int) -> int:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"w {number}"}], max_tokens=4)
                return raw.status_code

            return await asyncio.gather(*(one(n) for n in range(200)))

    assert asyncio.run(load()) == [200] * 200
    assert gateway.stop() == 0
    assert PASSWORD not in "".join(gateway.stderr)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM requests").fetchone() == (200, 200)
