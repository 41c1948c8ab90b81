"""Batch API jobs on a budgeted key: reserved at create, settled from the output file when they end,
released when they fail or are cancelled, the same after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from mockserver.app import make_app as make_mock
from mockserver.settings import MockSettings
from proxy.app import make_app
from proxy.clock import ManualClock
from proxy.config import Config
from proxy.wire.pricing import PriceTable
from proxy.wire.usage import Usage

from ..servers import ServerThread
from .conftest import UPSTREAM_KEY_ENV, Gateway, fetch, read_rows

TINY_KEY, BIG_KEY = "sk-tiny-0a1b", "sk-big-9z8y"


def keys(budget: float = 0.001) -> list[dict[str, Any]]:
    return [{"name": "tiny", "key": TINY_KEY, "budget_usd": budget}, {"name": "big", "key": BIG_KEY}]


def jsonl(lines: int, max_tokens: int = 20, text: str = "Tell me about rivers") -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_tokens": max_tokens,
                 "messages": [{"role": "user", "content": f"{text} {i}"}]}}).encode() + b"\n"
        for i in range(lines))


def budget_of(root: str, key: str = TINY_KEY) -> dict[str, Any]:
    (budget,) = json.loads(fetch("GET", root + "/oaigate/budgets", key=key).body)["budgets"]
    return budget


def create_batch(client: openai.OpenAI, data: bytes) -> Any:
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_a_batch_bigger_than_the_budget_is_refused_at_create(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=keys())
    with gw.client(TINY_KEY) as tiny, pytest.raises(openai.RateLimitError) as caught:
        create_batch(tiny, jsonl(500, max_tokens=50))
    assert caught.value.response.json()["error"]["code"] == "budget_exceeded"
    assert budget_of(gw.root)["reserved_usd"] == "0.000000"


def test_a_batch_is_reserved_then_settled_once_at_batch_prices_and_rebuilt_after_restart(
        gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    db = tmp_path / "batch.db"
    gw = gateway(keys=keys(0.01), db=db)
    lines = 20
    with gw.client(TINY_KEY) as tiny:
        batch = create_batch(tiny, jsonl(lines))
        held = budget_of(gw.root)
        assert float(held["reserved_usd"]) > 0 and held["spent_usd"] == "0.000000"
        for _ in range(10):  # the first GET finds it completed (instant pace); the others charge nothing more
            done = tiny.batches.retrieve(batch.id)
        assert done.status == "completed"
    rows = gw.rows(expect=13)
    (settled,) = [r for r in rows if r["method"] == "BATCH"]
    assert settled["object_id"] == batch.id and settled["key_name"] == "tiny"
    assert settled["prompt_tokens"] == done.usage.input_tokens
    assert settled["completion_tokens"] == done.usage.output_tokens
    full = PriceTable().cost_micros("gpt-4o-mini", Usage(done.usage.input_tokens, done.usage.output_tokens))
    assert settled["cost_microusd"] < full  # batch rates (half price)
    assert sum(r["cost_microusd"] or 0 for r in rows) == settled["cost_microusd"]
    live = budget_of(gw.root)
    assert live["reserved_usd"] == "0.000000" and live["spent_usd"] == f"{settled['cost_microusd'] / 1e6:.6f}"
    gw.stop()
    rebuilt = budget_of(gateway(keys=keys(0.01), db=db).root)
    assert (rebuilt["spent_usd"], rebuilt["spent_tokens"]) == (live["spent_usd"], live["spent_tokens"])


def test_a_cancelled_batch_releases_its_reservation(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=keys(0.01), mock={"batch_pace": "realistic", "batch_phase_s": 60, "batch_request_s": 60})
    with gw.client(TINY_KEY) as tiny:
        batch = create_batch(tiny, jsonl(5))
        assert float(budget_of(gw.root)["reserved_usd"]) > 0
        tiny.batches.cancel(batch.id)
        fetch("POST", _embedded_mock_root(gw) + "/_mock/clock/advance", key=None, json={"seconds": 120})
        assert tiny.batches.retrieve(batch.id).status == "cancelled"
    gw.rows(expect=5)
    status = budget_of(gw.root)
    assert status["reserved_usd"] == "0.000000" and status["spent_usd"] == "0.000000"


def _embedded_mock_root(gw: Gateway) -> str:
    from proxy.app import UPSTREAM

    return gw.server.app[UPSTREAM].base_url.removesuffix("/v1")


def test_a_failed_batch_create_releases_and_an_unreadable_input_is_refused(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=keys(0.01), upstream={"max_retries": 0})
    with gw.client(TINY_KEY) as tiny:
        with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as caught:  # 404: an ownership check
            tiny.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                                completion_window="24h")
        assert caught.value.status_code == 404 or caught.value.response.json()["error"]["code"] == "unestimable_request"
        upload = tiny.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
        with pytest.raises(openai.InternalServerError):  # the upstream fails the create: released
            tiny.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                extra_headers={"x-mock-fault": "500"})
        assert budget_of(gw.root)["reserved_usd"] == "0.000000"
        # lines for another endpoint: created, then failed at validation; the GET that sees it releases it
        batch = tiny.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        assert float(budget_of(gw.root)["reserved_usd"]) > 0
        assert tiny.batches.retrieve(batch.id).status == "failed"
    rows = gw.rows(expect=5)
    assert budget_of(gw.root)["reserved_usd"] == "0.000000"
    assert [r["cost_microusd"] for r in rows if r["method"] == "BATCH"] == [0]


def test_the_poll_settles_a_batch_nobody_looks_at_and_a_restart_keeps_it_reserved(
        tmp_path: Path, upstream_key: str) -> None:
    """A batch still running when the gateway restarts is reserved again; the poll (on a controlled
    clock) settles it when it ends, though no client ever retrieves it."""
    mock = ServerThread(lambda: make_mock(MockSettings(batch_pace="realistic", batch_phase_s=10,
                                                       batch_request_s=10))).start()
    db = tmp_path / "poll.db"
    config = Config.model_validate({
        "upstream": {"base_url": mock.url + "/v1", "api_key_env": UPSTREAM_KEY_ENV},
        "ledger": {"path": str(db)}, "keys": keys(0.01), "limits": {"batch_poll_s": 30}})
    clocks: list[ManualClock] = []

    def start() -> ServerThread:
        clock = ManualClock()
        clocks.append(clock)
        return ServerThread(lambda: make_app(config, clock=clock)).start()

    first = start()
    try:
        with openai.OpenAI(base_url=first.url + "/v1", api_key=TINY_KEY, max_retries=0) as tiny:
            batch = create_batch(tiny, jsonl(4))
        reserved = budget_of(first.url)["reserved_usd"]
        assert float(reserved) > 0
    finally:
        first.stop()
    second = start()
    try:
        assert budget_of(second.url)["reserved_usd"] == reserved  # looked up at start, reserved again
        fetch("POST", mock.url + "/_mock/clock/advance", key=None, json={"seconds": 3600})
        second.call(lambda: clocks[-1].advance(30))  # the poll's turn
        for _ in range(200):
            rows = [r for r in read_rows(db) if r["method"] == "BATCH"]
            if rows:
                break
            threading_wait(0.05)
        (settled,) = rows
        assert settled["object_id"] == batch.id and settled["cost_microusd"] > 0
        status = budget_of(second.url)
        assert status["reserved_usd"] == "0.000000"
        assert status["spent_usd"] == f"{settled['cost_microusd'] / 1e6:.6f}"
    finally:
        second.stop()
        mock.stop()


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def test_a_batch_on_a_key_without_budget_is_charged_once_in_the_ledger(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=keys())
    with gw.client(BIG_KEY) as big:
        batch = create_batch(big, jsonl(3))
        for _ in range(3):
            big.batches.retrieve(batch.id)
        big.batches.list()
    rows = gw.rows(expect=7)
    charged = [r for r in rows if r["cost_microusd"]]
    assert [(r["method"], r["object_id"], r["key_name"]) for r in charged] == [("BATCH", batch.id, "big")]


def test_gateways_restarting_over_one_ledger_settle_a_batch_once(tmp_path: Path, upstream_key: str) -> None:
    """Several processes on one ledger (`serve --workers`): only worker 0 resumes the batches the ledger
    shows open, and a settlement row has the batch's own id, so two resuming processes still leave one."""
    mock = ServerThread(lambda: make_mock(MockSettings(batch_pace="realistic", batch_phase_s=10,
                                                       batch_request_s=10))).start()
    db = tmp_path / "workers.db"
    config = Config.model_validate({
        "upstream": {"base_url": mock.url + "/v1", "api_key_env": UPSTREAM_KEY_ENV},
        "ledger": {"path": str(db)}, "keys": keys(0.01), "limits": {"batch_poll_s": 30}})
    first = ServerThread(lambda: make_app(config)).start()
    try:
        with openai.OpenAI(base_url=first.url + "/v1", api_key=TINY_KEY, max_retries=0) as tiny:
            batch = create_batch(tiny, jsonl(4))
    finally:
        first.stop()
    clocks = {index: ManualClock() for index in ("a", "b", "c")}
    resuming = [ServerThread(lambda: make_app(config, clock=clocks["a"])).start(),
                ServerThread(lambda: make_app(config, clock=clocks["b"])).start()]
    other = ServerThread(lambda: make_app(config, clock=clocks["c"], worker=1)).start()
    try:
        assert budget_of(other.url)["reserved_usd"] == "0.000000"  # worker 1 leaves the open batch to worker 0
        fetch("POST", mock.url + "/_mock/clock/advance", key=None, json={"seconds": 3600})
        for server, clock in zip([*resuming, other], clocks.values(), strict=True):
            server.call(lambda clock=clock: clock.advance(30))
        for _ in range(200):
            if all(budget_of(s.url)["reserved_usd"] == "0.000000" for s in resuming):
                break
            threading_wait(0.05)
    finally:
        for server in (*resuming, other):
            server.stop()
        mock.stop()
    rows = [r for r in read_rows(db) if r["method"] == "BATCH"]
    assert [(r["id"], r["object_id"]) for r in rows] == [("gw_settle_" + batch.id, batch.id)]
