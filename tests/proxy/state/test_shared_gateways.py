"""Two gateways on one Redis, end to end: one budget and one rate limit for the pair, through the real
openai SDK and raw HTTP; Redis stopping and coming back; an instance killed with -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from proxy.app import make_app
from proxy.clock import ManualClock
from proxy.config import Config

from ...redis_server import RedisServer
from ...servers import ServerThread
from ..conftest import CLIENT_KEY, UPSTREAM_KEY_ENV, Gateway, fetch
from ..processes import MOCK_CONFIG, Serve, write_config

# A made-up price high enough that a few cents buy a few dozen requests: $1 per 10,000 tokens.
PRICES = {"gpt-4o-mini": {"input_per_mtok": 100, "output_per_mtok": 100}}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}],
                        "max_tokens": 10}


def pair(gateway: Callable[..., Gateway], server: RedisServer, **sections: Any) -> tuple[Gateway, Gateway]:
    state = {"url": server.url, **sections.pop("state", {})}
    return gateway(state=state, **sections), gateway(state=state, **sections)


def redis_spent(server: RedisServer, expect: int | None = None) -> int:
    """The global budget's spend in Redis, once nothing is reserved any more (settles run in the
    background) and, with `expect`, once it reaches that (bounded wait)."""
    client = server.client()
    deadline = time.monotonic() + 10
    while True:
        keys = [k for k in client.scan_iter("oaigate:budget:*") if k.count(":") == 2]
        sm, rm = (int(v or 0) for v in client.hmget(keys[0], "sm", "rm")) if keys else (0, 0)
        if (rm == 0 and (expect is None or sm == expect)) or time.monotonic() > deadline:
            return sm
        time.sleep(0.02)


def spent(*gateways: Gateway) -> int:
    return sum(row["cost_microusd"] or 0 for gw in gateways for row in gw.rows())


def test_two_gateways_share_one_budget(gateway: Callable[..., Gateway], redis_server: RedisServer) -> None:
    budget = 0.05
    # both gateways and 200 SDK calls share this process's GIL: a generous timeout, so a starved event
    # loop does not pass for an outage (the outage test below uses the default)
    a, b = pair(gateway, redis_server, limits={"budget_usd": budget}, prices=PRICES, state={"timeout_s": 10})
    worst: list[int] = []

    async def burst() -> list[int | str]:
        clients = [openai.AsyncOpenAI(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0, timeout=30.0)
                   for gw in (a, b)]

        async def one(i: int) -> int | str:
            try:
                await clients[i % 2].chat.completions.create(**CHAT)
                return 200
            except openai.RateLimitError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                return str(body.get("type"))

        try:
            return await asyncio.gather(*(one(i) for i in range(200)))
        finally:
            for client in clients:
                await client.close()

    outcomes = asyncio.run(burst())
    served = outcomes.count(200)
    assert served > 5 and outcomes.count("insufficient_quota") == 200 - served
    rows = a.rows() + b.rows()
    assert len([r for r in rows if r["status"] == 200]) == served
    worst.append(max(r["cost_microusd"] for r in rows if r["status"] == 200))
    assert spent(a, b) <= budget * 1_000_000 + worst[0]  # the pair together, never more than one budget
    for gw in (a, b):  # both know the budget is spent
        with gw.client() as client, pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(**{**CHAT, "max_tokens": 200})
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert isinstance(refused.value.body, dict) and refused.value.body["type"] == "insufficient_quota"
    assert redis_spent(redis_server) == spent(a, b)  # Redis and the two ledgers agree
    statuses = [json.loads(fetch("GET", gw.root + "/oaigate/budgets").body)["budgets"][0] for gw in (a, b)]
    assert statuses[0]["spent_usd"] == statuses[1]["spent_usd"] == f"{spent(a, b) / 1e6:.6f}"
    assert a.healthz()["state"]["backend"] == "redis" and a.healthz()["state"]["mode"] == "shared"


def test_a_tight_rpm_is_one_limit_for_the_pair(tmp_path: Path, upstream_key: str, redis_server: RedisServer) -> None:
    clock = ManualClock()  # only read by the gateways (reject mode never sleeps): moved between bursts
    config = Config.model_validate({
        "upstream": {"base_url": "mock", "api_key_env": UPSTREAM_KEY_ENV},
        "limits": {"rpm": 5, "on_limit": "reject"}, "state": {"url": redis_server.url},
        "ledger": {"enabled": False}})
    servers = [ServerThread(lambda: make_app(config, clock=clock)).start() for _ in range(2)]
    try:
        body = json.dumps(CHAT).encode()

        def burst() -> list[int]:
            statuses: list[int] = []
            lock = threading.Lock()

            def one(i: int) -> None:
                reply = fetch("POST", servers[i % 2].url + "/v1/chat/completions", data=body,
                              headers={"Content-Type": "application/json"})
                with lock:
                    statuses.append(reply.status)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            return statuses

        for _window in range(2):
            statuses = burst()
            assert statuses.count(200) == 5 and statuses.count(429) == 11
            clock.advance(60.0)
    finally:
        for server in servers:
            server.stop()


def test_redis_stopping_gives_503_then_the_gateway_recovers(gateway: Callable[..., Gateway],
                                                            redis_server: RedisServer) -> None:
    a, b = pair(gateway, redis_server, limits={"budget_usd": 5.0}, prices=PRICES)
    local = gateway(state={"url": redis_server.url, "on_unavailable": "local"}, limits={"budget_usd": 5.0},
                    prices=PRICES)
    body = json.dumps(CHAT).encode()
    post = {"data": body, "headers": {"Content-Type": "application/json"}}
    assert fetch("POST", a.url + "/chat/completions", **post).status == 200
    redis_server.stop()
    started = time.monotonic()
    refused = fetch("POST", a.url + "/chat/completions", **post)
    assert time.monotonic() - started < 10  # never a hang (the bound is generous: it is not a speed test)
    assert refused.status == 503 and refused.headers["x-should-retry"] == "true"
    error = json.loads(refused.body)["error"]
    assert error["code"] == "state_unavailable" and "Redis" in error["message"]
    assert fetch("POST", b.url + "/chat/completions", **post).status == 503
    assert a.healthz()["state"]["available"] is False and a.healthz()["state"]["mode"] == "closed"
    assert fetch("POST", local.url + "/chat/completions", **post).status == 200  # enforces on its own
    assert local.healthz()["state"]["degraded_to_local"] is True
    redis_server.start()
    deadline = time.monotonic() + 20
    while fetch("POST", a.url + "/chat/completions", **post).status != 200:
        assert time.monotonic() < deadline, "the gateway did not recover when Redis came back"
        time.sleep(0.1)
    while local.healthz()["state"]["mode"] != "shared":
        assert time.monotonic() < deadline, "the local-mode gateway did not go back to shared state"
        time.sleep(0.1)
    assert local.healthz()["state"]["backlog"] == 0
    assert a.healthz()["state"]["latency_ms"] is not None
    # the spend the local-mode gateway settled while Redis was away reached Redis
    assert redis_spent(redis_server, expect=spent(a, b, local)) == spent(a, b, local)


def test_a_killed_instance_releases_its_reservations_after_the_ttl(
        tmp_path: Path, gateway: Callable[..., Gateway], redis_server: RedisServer) -> None:
    ttl = 6.0  # long enough that the survivor sees the held room refused first, even on a busy machine
    config = write_config(tmp_path, MOCK_CONFIG + f"""
[ledger]
path = "{tmp_path / 'killed.db'}"

[limits]
budget_usd = 0.05

[prices."gpt-4o-mini"]
input_per_mtok = 100
output_per_mtok = 100

[state]
url = "{redis_server.url}"
reservation_ttl_s = {ttl}
""")
    doomed = Serve(["--config", str(config), "--port", "0"], tmp_path)
    survivor = gateway(state={"url": redis_server.url, "reservation_ttl_s": ttl}, limits={"budget_usd": 0.05},
                       prices=PRICES)
    try:
        url = doomed.ready_url()
        body = json.dumps(CHAT).encode()
        assert fetch("POST", url + "/chat/completions", data=body,
                     headers={"Content-Type": "application/json"}).status == 200
        redis = redis_server.client()
        (key,) = [k for k in redis.scan_iter("oaigate:budget:*") if k.count(":") == 2]
        settled = int(redis.hget(key, "sm") or 0)
        assert settled > 0
        big = json.dumps({**CHAT, "max_tokens": 90}).encode()  # worst case about $0.01 each
        slow = {"Content-Type": "application/json", "x-mock-latency": "ttft_ms=60000"}

        def hang() -> None:
            with contextlib.suppress(aiohttp.ClientError):  # cut by the kill
                fetch("POST", url + "/chat/completions", data=big, headers=slow)

        hangers = [threading.Thread(target=hang, daemon=True) for _ in range(4)]
        for thread in hangers:
            thread.start()
        deadline = time.monotonic() + 20
        while int(redis.hget(key, "rm") or 0) < 30_000:  # all four reserved
            assert time.monotonic() < deadline, "the doomed instance never reserved"
            time.sleep(0.02)
        with survivor.client() as client, pytest.raises(openai.RateLimitError):  # the room is held...
            client.chat.completions.create(**{**CHAT, "max_tokens": 90})
        doomed.proc.send_signal(signal.SIGKILL)  # ...by a process that dies
        doomed.proc.wait(10)
        deadline = time.monotonic() + 30
        while True:  # once the TTL has passed, the dead instance's room is free again
            reply = fetch("POST", survivor.url + "/chat/completions", data=big,
                          headers={"Content-Type": "application/json"})
            if reply.status == 200:
                break
            assert reply.status == 429 and time.monotonic() < deadline, reply.body
            time.sleep(0.1)
        survivor.settle()
        deadline = time.monotonic() + 10
        while int(redis.hget(key, "sm") or 0) != settled + spent(survivor):  # its settle runs in the background
            assert time.monotonic() < deadline, "settled spend went missing"
            time.sleep(0.02)
    finally:
        if doomed.proc.poll() is None:
            doomed.proc.kill()
        doomed.stop()


def test_a_password_from_the_environment_and_never_shown(tmp_path: Path, gateway: Callable[..., Gateway],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "redis-SECRET-a81f"
    server = RedisServer(tmp_path / "locked", args=("--requirepass", secret)).start()
    try:
        monkeypatch.setenv("OAIGATE_TEST_REDIS_PASSWORD", secret)
        gw = gateway(state={"url": server.url, "password_env": "OAIGATE_TEST_REDIS_PASSWORD"},
                     limits={"budget_usd": 1.0}, prices=PRICES)
        with gw.client() as client:
            client.chat.completions.create(**CHAT)
        health = gw.healthz()["state"]
        assert health["mode"] == "shared" and secret not in json.dumps(health)
        in_url = gateway(state={"url": f"redis://:{secret}@127.0.0.1:{server.port}/0"}, limits={"budget_usd": 1.0},
                         prices=PRICES)
        assert in_url.healthz()["state"]["available"] and secret not in json.dumps(in_url.healthz())
        wrong = gateway(state={"url": f"redis://:wrong@127.0.0.1:{server.port}/0"}, limits={"budget_usd": 1.0},
                        prices=PRICES)
        with wrong.client() as client, pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(**CHAT)
        assert refused.value.status_code == 503 and secret not in str(refused.value.body)
    finally:
        server.stop()


def test_an_unset_password_variable_is_a_config_error(upstream_key: str) -> None:
    from proxy.config import ConfigError

    config = Config.model_validate({"state": {"url": "redis://127.0.0.1:1/0", "password_env": "OAIGATE_NO_SUCH_VAR"}})
    with pytest.raises(ConfigError, match="state.password_env: the environment variable OAIGATE_NO_SUCH_VAR"):
        make_app(config)


def test_without_a_state_url_the_state_is_in_process(gateway: Callable[..., Gateway]) -> None:
    assert gateway(limits={"budget_usd": 1.0}).healthz()["state"] == {"backend": "local"}


def test_a_restart_never_double_counts_and_an_empty_redis_is_seeded_from_the_ledger(
        tmp_path: Path, gateway: Callable[..., Gateway], redis_server: RedisServer) -> None:
    db = tmp_path / "shared.db"
    sections: dict[str, Any] = {"state": {"url": redis_server.url}, "limits": {"budget_usd": 1.0}, "prices": PRICES}

    def spent_by_redis(gw: Gateway) -> str:
        with gw.client() as client:  # a request refreshes this gateway's view of the shared account
            client.chat.completions.create(**{**CHAT, "max_tokens": 1})
        gw.settle()
        deadline = time.monotonic() + 10
        while True:  # its settle reaches Redis in the background, then the view shows it
            budget = json.loads(fetch("GET", gw.root + "/oaigate/budgets").body)["budgets"][0]
            if budget["reserved_usd"] == "0.000000" or time.monotonic() > deadline:
                return str(budget["spent_usd"])
            time.sleep(0.02)

    first = gateway(db=db, **sections)
    with first.client() as client:
        for _ in range(3):
            client.chat.completions.create(**CHAT)
    first.stop()
    second = gateway(db=db, **sections)  # reads the same ledger at start: Redis already has the counter
    shown = spent_by_redis(second)
    second.stop()
    assert shown == f"{spent(second) / 1e6:.6f}"  # the ledger's rows (both runs), counted once
    redis_server.client().flushall()  # Redis lost its data: the next gateway seeds it from the ledger
    third = gateway(db=db, **sections)
    shown = spent_by_redis(third)
    assert shown == f"{spent(third) / 1e6:.6f}"


class SlowLink:
    """A TCP relay to Redis that holds every command `delay_s` before passing it on (replies go back at
    once): Redis acts on a settle only that long after the gateway sent it."""

    def __init__(self, port: int, delay_s: float) -> None:
        self.target, self.delay_s = port, delay_s
        self.writers: list[asyncio.StreamWriter] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self.loop).result(10)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
            while data := await source.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                sink.write(data)
                await sink.drain()
            sink.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(pipe(reader, up_writer, self.delay_s), pipe(up_reader, writer, 0))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in self.writers:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            await self.server.wait_closed()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_client_that_has_its_answer_sees_its_spend_settled(gateway: Callable[..., Gateway],
                                                             redis_server: RedisServer) -> None:
    """The shared settle goes with the answer like the ledger row: once the SDK has an answer, nothing
    of that request is still reserved in Redis, so the next request (on either gateway) is never
    refused for a reservation that no request holds any more. Commands reach Redis 50 ms late here,
    and there is no ledger (its commit, which the answer waits for too, could hide a late settle)."""
    link = SlowLink(redis_server.port, 0.05)
    try:
        a, b = pair(gateway, redis_server, limits={"budget_usd": 1.0}, prices=PRICES, ledger={"enabled": False},
                    state={"url": link.url, "timeout_s": 10})
        client = redis_server.client()
        for n in range(6):
            with (a if n % 2 else b).client() as sdk:
                sdk.chat.completions.create(**CHAT)
            keys = [k for k in client.scan_iter("oaigate:budget:*") if k.count(":") == 2]
            assert keys and int(client.hget(keys[0], "rm") or 0) == 0, f"request {n}: reserved after its answer"
    finally:
        link.close()
