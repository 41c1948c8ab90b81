"""The SQLite ledger: one row per request with the usage the SDK saw and its exact cost; the writer.

Rows are read with plain `sqlite3`, the way Datasette or a person would.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import threading
from collections.abc import Callable
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlite_utils
from aiohttp import web
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from proxy.db.reports import LedgerError
from proxy.db.schema import COLUMNS, SCHEMA_VERSION, connect
from proxy.db.writer import LedgerWriter
from proxy.wire.tokens import count_chat_prompt, count_text
from tests.servers import ServerThread

from .conftest import CLIENT_KEY, Gateway, fetch, ledger_locker, read_rows
from .processes import voluntary_switches

MESSAGES = [{"role": "user", "content": "Name two rivers in Europe and one in Africa."}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 30}


def genai_micros(model: str, prompt: int, completion: int) -> int:
    """The cost genai-prices computes, in whole micro-dollars (rounded up)."""
    price = calc_price(PriceUsage(input_tokens=prompt, output_tokens=completion), model_ref=model,
                       provider_id="openai").total_price
    return int((price * Decimal(1_000_000)).to_integral_value(ROUND_CEILING))


def query(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


# --- rows equal what the SDK saw -------------------------------------------------------------------

def test_rows_match_sdk_visible_usage_and_cost(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    seen = []
    with gw.client() as client:
        for i in range(4):
            raw = client.chat.completions.with_raw_response.create(
                **{**CHAT, "max_tokens": 10 + 10 * i, "messages": [{"role": "user", "content": f"Question {i}?"}]})
            completion = raw.parse()
            seen.append(("/v1/chat/completions", "gpt-4o-mini", completion.usage.prompt_tokens,
                         completion.usage.completion_tokens, raw.headers["x-request-id"]))
        raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "bb ccc"])
        embedding = raw.parse()
        seen.append(("/v1/embeddings", "text-embedding-3-small", embedding.usage.prompt_tokens, 0,
                     raw.headers["x-request-id"]))
    rows = gw.rows(expect=len(seen))
    assert len(rows) == len(seen) == 5
    assert [(r["endpoint"], r["model_served"], r["prompt_tokens"], r["completion_tokens"],
             r["upstream_request_id"]) for r in rows] == seen
    for row, (_, model, prompt, completion, _) in zip(rows, seen, strict=False):
        assert row["usage_source"] == "reported"
        assert row["cost_microusd"] == genai_micros(model, prompt, completion)
        assert row["cost_microusd"] > 0 or model.startswith("text-embedding")  # 4 tokens: $8e-8 rounds to 0
        assert row["model_requested"] == model and row["status"] == 200 and row["stream"] == 0
        assert row["method"] == "POST" and row["upstream"] == "mock" and row["attempts"] == 1
        assert row["cached_tokens"] == 0 and row["reasoning_tokens"] == 0
        assert row["error_type"] is None and row["fixture"] is None
        assert row["key_name"].startswith("anon-")
        assert row["latency_ms"] > 0 and 0 < row["ttfb_ms"] <= row["latency_ms"]
        assert 0 <= row["overhead_ms"] <= row["latency_ms"]
        assert row["started_at"].endswith("Z") and row["started_at"] <= row["finished_at"]
        assert row["request_body"] is None and row["response_body"] is None  # log_bodies is off
    assert len({r["id"] for r in rows}) == 5


def test_cost_of_a_big_request_is_exact_integer_micro_dollars(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with gw.client() as client:
        completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "w " * 3000}],
                                                    max_tokens=200)
    (row,) = gw.rows(expect=1)
    usage = completion.usage
    expected = (Decimal(usage.prompt_tokens) * Decimal("2.5") + Decimal(usage.completion_tokens) * 10) / 1_000_000
    assert row["cost_microusd"] == int((expected * 1_000_000).to_integral_value(ROUND_CEILING))
    assert isinstance(row["cost_microusd"], int)


def test_log_bodies_stores_truncated_bodies(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(ledger={"log_bodies": True})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}], "max_tokens": 3}
    fetch("POST", gw.url + "/chat/completions", json=CHAT)
    fetch("POST", gw.url + "/chat/completions", json=big)
    small_row, big_row = gw.rows(expect=2)
    assert json.loads(small_row["request_body"]) == CHAT
    assert json.loads(small_row["response_body"])["object"] == "chat.completion"
    assert big_row["request_body"].endswith("…[truncated]") and len(big_row["request_body"]) < 70_000


# --- usage the upstream did not report -----------------------------------------------------------

def _no_usage_upstream() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for piece in ("The Danube", ", the Rhine", " and the Nile."):
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")  # never a usage chunk, whatever was asked
            await response.write_eof()
            return response
        completion = {"id": "c", "object": "chat.completion", "created": 1, "model": body["model"],
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "The Danube, the Rhine and the Nile."}}]}
        return web.json_response(completion)  # no "usage" member, like some OpenAI-compatible servers

    async def chunked_with_usage(request: web.Request) -> web.StreamResponse:
        """A JSON answer with usage, sent chunked (no Content-Length), as Go servers do for big bodies."""
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        payload = json.dumps({"object": "list", "model": "text-embedding-3-small",
                              "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
                              "usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode()
        await response.write(payload[:20])
        await response.write(payload[20:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", chunked_with_usage)
    return app


def test_missing_usage_is_estimated_never_free(gateway: Callable[..., Gateway],
                                               upstream: Callable[[web.Application], ServerThread]) -> None:
    gw = gateway(upstream(_no_usage_upstream()).url + "/v1")
    with gw.client() as client:
        completion = client.chat.completions.create(**CHAT)
        assert completion.usage is None  # relayed untouched: the gateway does not invent usage for the client
        with client.chat.completions.create(**CHAT, stream=True) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream)
    json_row, stream_row = gw.rows(expect=2)
    prompt = count_chat_prompt(MESSAGES, "gpt-4o-mini")
    completion_tokens = count_text("The Danube, the Rhine and the Nile.", "gpt-4o-mini")
    assert text == "The Danube, the Rhine and the Nile."
    for row in (json_row, stream_row):
        assert row["usage_source"] == "estimated"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion_tokens)
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["cost_microusd"] == genai_micros("gpt-4o-mini", prompt, completion_tokens) > 0
    spend = query(gw.db, "SELECT * FROM spend_by_model")
    assert spend[0]["estimated_requests"] == 2


def test_usage_in_a_chunked_json_answer_is_reported(gateway: Callable[..., Gateway],
                                                    upstream: Callable[[web.Application], ServerThread]) -> None:
    gw = gateway(upstream(_no_usage_upstream()).url + "/v1")
    reply = fetch("POST", gw.url + "/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
    assert reply.status == 200 and json.loads(reply.body)["usage"]["prompt_tokens"] == 7
    (row,) = gw.rows(expect=1)
    assert (row["usage_source"], row["prompt_tokens"], row["model_served"]) == ("reported", 7, "text-embedding-3-small")
    assert row["cost_microusd"] == genai_micros("text-embedding-3-small", 7, 0)


def test_unknown_model_costs_null_and_overrides_price_it(gateway: Callable[..., Gateway]) -> None:
    chat = {**CHAT, "model": "my-local-llama"}
    plain = gateway(mock={"models": ["my-local-llama"]})
    priced = gateway(mock={"models": ["my-local-llama"]},
                     prices={"my-local-llama": {"input_per_mtok": "1.25", "output_per_mtok": "5"}})
    for gw in (plain, priced):
        with gw.client() as client:
            client.chat.completions.create(**chat)
            client.chat.completions.create(**chat)  # the second lookup hits the cache: same answer
    rows = plain.rows(expect=2)
    assert [r["cost_microusd"] for r in rows] == [None, None]
    assert all(r["prompt_tokens"] > 0 and r["usage_source"] == "reported" for r in rows)
    (spend,) = query(plain.db, "SELECT * FROM spend_by_model")
    assert (spend["model"], spend["requests"], spend["unpriced_requests"], spend["simulated_microusd"]) == \
        ("my-local-llama", 2, 2, None)  # unknown, never $0
    assert spend["cost_microusd"] == 0  # the mock answered: nothing was really spent
    for row in priced.rows(expect=2):
        expected = (Decimal(row["prompt_tokens"]) * Decimal("1.25") + Decimal(row["completion_tokens"]) * 5)
        assert row["cost_microusd"] == int(expected.to_integral_value(ROUND_CEILING)) > 0


# --- views, schema, file format ------------------------------------------------------------------

def test_spend_views_sum_the_rows(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    calls = [("sk-alice", "gpt-4o-mini"), ("sk-alice", "gpt-4o"), ("sk-bob", "gpt-4o-mini"), ("sk-bob", "gpt-4o-mini")]
    for key, model in calls:
        with gw.client(key=key) as client:
            client.chat.completions.create(**{**CHAT, "model": model})
    fetch("GET", gw.url + "/models", key="sk-bob")  # a row with no usage: counted, costs nothing
    rows = gw.rows(expect=5)
    assert len(rows) == 5

    def sums(group: str) -> dict[Any, tuple[int, int, int, int]]:
        out: dict[Any, list[int]] = {}
        for r in rows:
            acc = out.setdefault(r[group], [0, 0, 0, 0])
            acc[0] += 1
            acc[1] += r["prompt_tokens"] or 0
            acc[2] += r["completion_tokens"] or 0
            acc[3] += r["cost_microusd"] or 0
        return {k: tuple(v) for k, v in out.items()}

    def view(name: str, column: str) -> dict[Any, tuple[int, int, int, int]]:
        found = query(gw.db, f"SELECT * FROM {name}")
        assert all(not r["cost_microusd"] for r in found)  # all answered by the mock: simulated, none real
        return {r[column]: (r["requests"], r["prompt_tokens"] or 0, r["completion_tokens"] or 0,
                            r["simulated_microusd"] or 0) for r in found}

    assert {r["simulated"] for r in rows} == {1}

    by_key = view("spend_by_key", "key_name")
    assert by_key == sums("key_name") and len(by_key) == 2
    by_model = view("spend_by_model", "model")
    assert by_model == sums("model_served") and set(by_model) == {"gpt-4o-mini", "gpt-4o", None}
    assert by_model["gpt-4o-mini"][0] == 3 and by_model["gpt-4o"][0] == 1
    (day,) = query(gw.db, "SELECT * FROM spend_by_day")
    assert day["day"] == rows[0]["started_at"][:10]
    assert day["requests"] == 5 and day["simulated_microusd"] == sum(r["cost_microusd"] or 0 for r in rows) > 0
    assert day["cost_microusd"] == day["cost_usd"] == 0


def test_schema_version_wal_and_plain_sqlite(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    fetch("POST", gw.url + "/chat/completions", json=CHAT)
    gw.rows(expect=1)
    conn = sqlite3.connect(gw.db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
        assert columns == list(COLUMNS)
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        assert views >= {"spend_by_day", "spend_by_model", "spend_by_key"}
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    finally:
        conn.close()
    gw.stop()
    again = connect(str(gw.db))  # reopening migrates nothing and keeps the rows
    try:
        assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert again.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this oaigate"):
        connect(str(db))


def test_stopping_the_gateway_flushes_every_row(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    for _ in range(20):
        fetch("POST", gw.url + "/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
    gw.stop()  # no settle: the shutdown itself drains and flushes
    assert len(read_rows(gw.db)) == 20


def test_ledger_disabled_writes_nothing(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(ledger={"enabled": False})
    with gw.client() as client:
        assert client.chat.completions.create(**CHAT).usage is not None
    assert gw.healthz()["ledger"] is None
    assert "oaigate_requests_total" in fetch("GET", gw.root + "/metrics", key=None).body.decode()
    gw.stop()
    assert not gw.db.exists()


# --- the writer under pressure -------------------------------------------------------------------

def test_locked_database_never_blocks_requests(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(ledger={"durable_wait_s": 0.1})  # each answer waits this long for its row, then goes on
    fetch("GET", gw.url + "/models")
    assert len(gw.rows(expect=1)) == 1
    lock = ledger_locker(gw.db)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("INSERT INTO requests (id, started_at, endpoint, status) VALUES ('lock', 'x', 'x', 0)")
        with gw.client(timeout=5.0) as client:
            for _ in range(6):
                assert client.chat.completions.create(**CHAT).choices  # answered while the ledger is locked
        for _ in range(500):  # the finish hooks run just after each response: wait for the 6th row
            health = gw.healthz()["ledger"]
            if health["backlog"] == 6:
                break
            threading.Event().wait(0.01)
        assert health["backlog"] == 6 and health["written"] == 1  # the rows wait, the requests did not
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    rows = gw.rows(expect=7)
    assert len(rows) == 7 and [r["endpoint"] for r in rows].count("/v1/chat/completions") == 6
    assert "lock" not in {r["id"] for r in rows}
    health = gw.healthz()["ledger"]
    assert (health["backlog"], health["written"], health["dropped"]) == (0, 7, 0)


def _row(i: int) -> dict[str, Any]:
    return {"id": f"r{i}", "started_at": "2025-01-01T00:00:00.000Z", "endpoint": "/v1/x", "status": 200,
            "prompt_tokens": i}


def test_writer_survives_a_locked_database_and_counts_drops(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    writer = LedgerWriter(str(db), max_queue=10)
    writer.start()
    lock = ledger_locker(db)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        lock.execute("INSERT INTO requests (id, started_at, endpoint, status) VALUES ('lock', 'x', 'x', 0)")
        for i in range(50):
            writer.submit(_row(i))  # never blocks, whatever the database does
        assert writer.dropped >= 30  # at most the batch in hand and a full queue are kept
        assert writer.written == 0
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    assert writer.flush(10)
    writer.close()
    rows = read_rows(db)
    assert writer.written + writer.dropped == 50
    assert len(rows) == writer.written > 0
    assert sorted(r["prompt_tokens"] for r in rows) == sorted({r["prompt_tokens"] for r in rows})


def test_writer_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = LedgerWriter(str(tmp_path / "q.db"), max_queue=3)
    for i in range(5):
        writer.submit(_row(i))  # not started yet: nothing drains the queue
    assert (writer.dropped, writer.backlog) == (2, 3)
    writer.start()
    assert writer.flush(10)
    writer.close()
    assert writer.written == 3
    assert [r["id"] for r in read_rows(tmp_path / "q.db")] == ["r0", "r1", "r2"]


def test_writer_backlog_never_undercounts_rows_being_taken(tmp_path: Path) -> None:
    """`flush()` trusts `backlog`: while the writer thread moves rows from its queue into a batch,
    the rows must still count, or `flush()` returns before they are written."""
    writer = LedgerWriter(str(tmp_path / "b.db"))
    seen: list[int] = []

    class Watched(collections.deque):  # type: ignore[type-arg]
        def popleft(self) -> Any:
            item = super().popleft()
            seen.append(writer.backlog)
            return item

    writer._queue = Watched()  # white-box: the writer's queue is a deque
    for i in range(5):
        writer.submit(_row(i))
    writer.start()
    assert writer.flush(10)
    writer.close()
    assert len(seen) == 5 and min(seen) >= 5, seen
    assert len(read_rows(tmp_path / "b.db")) == 5


def test_writer_commits_a_batch_larger_than_one_insert_statement_whole(tmp_path: Path) -> None:
    """A batch is written as multi-row INSERTs of at most `ROWS_PER_STATEMENT` rows: a backlog of more
    than two statements' worth commits in one batch, every row with every column as submitted."""
    from proxy.db.writer import ROWS_PER_STATEMENT

    db = tmp_path / "big.db"
    writer = LedgerWriter(str(db))
    count = 2 * ROWS_PER_STATEMENT + 7
    rows = [{**_row(i), "latency_ms": i / 7, "model_served": f"m{i}", "request_body": "é" * (i % 5)}
            for i in range(count)]
    for row in rows:
        writer.submit(row)
    writer.start()  # all queued before the thread runs: one batch
    assert writer.flush(10)
    writer.close()
    assert (writer.written, writer.batches) == (count, 1)
    written = {row["id"]: row for row in read_rows(db)}
    assert len(written) == count
    for row in rows:
        assert {k: written[row["id"]][k] for k in row} == row


def test_writer_group_commit_rows_queued_during_a_commit_go_in_the_next_batch(tmp_path: Path) -> None:
    """A submit wakes the writer (no tick: `interval_s` is a minute); rows that arrive while it commits
    batch N are committed together as batch N+1; each waiter returns once its row is readable."""
    db = tmp_path / "g.db"
    writer = LedgerWriter(str(db), interval_s=60.0)
    writer.start()
    lock = ledger_locker(db)

    async def run() -> list[bool]:
        lock.execute("BEGIN EXCLUSIVE")  # batch 1 cannot commit until this ends
        first = writer.submit(_row(0))
        for _ in range(500):
            if writer._in_flight == 1 and not writer._queue:  # white-box: batch 1 taken, now blocked
                break
            await asyncio.sleep(0.01)
        assert writer._in_flight == 1
        rest = [writer.submit(_row(i)) for i in range(1, 100)]
        waits = [asyncio.ensure_future(writer.wait_written(t, 10.0)) for t in [first, *rest]]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waits) and writer.written == 0
        lock.execute("ROLLBACK")
        return list(await asyncio.gather(*waits))

    try:
        assert asyncio.run(run()) == [True] * 100
    finally:
        lock.close()
    assert (writer.written, writer.batches, writer.durability_timeouts) == (100, 2, 0)
    assert len(read_rows(db)) == 100  # committed: another connection sees them
    writer.close()


def test_writer_wait_is_bounded_and_counted(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = LedgerWriter(str(db))
    writer.start()
    lock = ledger_locker(db)

    async def run() -> tuple[bool, bool]:
        lock.execute("BEGIN EXCLUSIVE")
        ticket = writer.submit(_row(1))
        assert ticket is not None
        missed = await writer.wait_written(ticket, 0.05)
        lock.execute("ROLLBACK")
        return missed, await writer.wait_written(ticket, 10.0)

    try:
        assert asyncio.run(run()) == (False, True)
    finally:
        lock.close()
    assert writer.durability_timeouts == 1 and writer.written == 1
    writer.close()


@pytest.mark.parametrize(("synchronous", "pragma"), [("normal", 1), ("full", 2)])
def test_synchronous_setting_reaches_the_writer_connection(tmp_path: Path, synchronous: str, pragma: int) -> None:
    conn = connect(str(tmp_path / "s.db"), synchronous)
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


# --- volume -------------------------------------------------------------------------------------

def test_2000_requests_at_concurrency_50_leave_exactly_2000_rows(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    total, concurrency = 2000, 50

    async def run() -> list[int]:
        limit = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def one(i: int) -> int:
                async with limit:
                    body = {**CHAT, "messages": [{"role": "user", "content": f"Request number {i}"}], "max_tokens": 8}
                    async with session.post(gw.url + "/chat/completions", json=body, headers=headers) as response:
                        await response.read()
                        return response.status

            return await asyncio.gather(*(one(i) for i in range(total)))

    statuses = asyncio.run(run())
    assert statuses == [200] * total
    rows = gw.rows(expect=total, timeout=30)
    assert len(rows) == total
    assert len({r["id"] for r in rows}) == total
    assert all(r["usage_source"] == "reported" and r["cost_microusd"] > 0 for r in rows)
    assert gw.healthz()["ledger"]["dropped"] == 0
    gw.stop()
    assert len(read_rows(gw.db)) == total  # and nothing more after the shutdown flush


def test_a_creating_request_records_the_object_it_made(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with gw.client() as client:
        response = client.responses.create(model="gpt-4o-mini", input="Say hi.")
        streamed = None
        with client.responses.stream(model="gpt-4o-mini", input="Say hi again.") as stream:
            for event in stream:
                if event.type == "response.created":
                    streamed = event.response.id
        upload = client.files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch")
        client.responses.retrieve(response.id)
        stored = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                store=True)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    rows = {(r["method"], r["endpoint"], r["stream"]): r["object_id"] for r in gw.rows(expect=6)}
    chats = [r["object_id"] for r in gw.rows() if r["endpoint"] == "/v1/chat/completions"]
    assert chats == [stored.id, None]  # a chat completion is an object only when stored
    assert rows[("POST", "/v1/responses", 0)] == response.id
    assert rows[("POST", "/v1/responses", 1)] == streamed is not None
    assert rows[("POST", "/v1/files", 0)] == upload.id
    assert rows[("GET", f"/v1/responses/{response.id}", 0)] is None  # a read creates nothing


def test_mock_traffic_is_simulated_spend_apart_from_real(gateway: Callable[..., Gateway],
                                                          upstream: Callable[[web.Application], ServerThread],
                                                          tmp_path: Path) -> None:
    from click.testing import CliRunner

    from proxy.cli import cli

    async def real(request: web.Request) -> web.Response:  # an OpenAI-compatible upstream that is not the mock
        return web.json_response({"id": "chatcmpl-real", "object": "chat.completion", "created": 1,
                                  "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "hi"}}],
                                  "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", real)
    db = tmp_path / "shared.db"
    for gw in (gateway(db=db), gateway(upstream(app).url + "/v1", db=db)):
        fetch("POST", gw.url + "/chat/completions", json=CHAT)
        gw.rows(expect=1)
        gw.stop()
    rows = {r["upstream"]: r for r in query(db, "SELECT * FROM requests")}
    mock_row = rows.pop("mock")
    (real_row,) = rows.values()
    assert (mock_row["simulated"], real_row["simulated"]) == (1, 0)
    result = CliRunner().invoke(cli, ["spend", "--db", str(db), "--by", "upstream", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["total"]["cost_microusd"] == real_row["cost_microusd"] > 0
    assert report["total"]["simulated_microusd"] == mock_row["cost_microusd"] > 0
    by_upstream = {r["upstream"]: r for r in report["rows"]}
    assert by_upstream["mock"]["cost_microusd"] == 0 and by_upstream["mock"]["requests"] == 1
    table = CliRunner().invoke(cli, ["spend", "--db", str(db)]).output
    assert "simulated" in table and f"${real_row['cost_microusd'] / 1e6:.6f}" in table


def test_writer_waits_that_gave_up_do_not_pile_up_during_an_outage(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A database locked for a long time: every answer gives up waiting after its timeout, and the
    given-up waits are let go, not kept until the database comes back."""
    import proxy.db.writer as writer_module

    monkeypatch.setattr(writer_module, "_COMPACT_WAITERS", 10)
    db = tmp_path / "o.db"
    writer = LedgerWriter(str(db))
    writer.start()
    lock = ledger_locker(db)

    async def run() -> list[bool]:
        lock.execute("BEGIN EXCLUSIVE")
        results = []
        for i in range(40):
            ticket = writer.submit(_row(i))
            assert ticket is not None
            results.append(await writer.wait_written(ticket, 0.001))
        assert len(writer._waiters) <= 11  # white-box: the waiters the writer would tell
        lock.execute("ROLLBACK")
        results.append(await writer.wait_written(writer.accepted, 10.0))
        return results

    try:
        assert asyncio.run(run()) == [False] * 40 + [True]
    finally:
        lock.close()
    assert writer.durability_timeouts == 40 and writer.written == 40
    writer.close()


def test_the_object_id_index_holds_only_rows_that_created_an_object(tmp_path: Path) -> None:
    """Schema v6: a ledger made by an older oaigate keeps its rows; its object_id index becomes partial
    and the owner and chain lookups still use it."""
    from proxy.db.schema import MIGRATIONS

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:5], start=1):  # a v5 ledger, as the last release left it
        step(sqlite_utils.Database(conn))
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO requests (id, started_at, endpoint, status, object_id) VALUES "
                 "('a', '2026-01-01', '/v1/files', 200, 'file-1'), ('b', '2026-01-01', '/v1/embeddings', 200, NULL)")
    conn.close()
    migrated = connect(str(db))
    (sql,) = migrated.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_requests_object_id'").fetchone()
    assert "WHERE object_id IS NOT NULL" in sql
    plan = " ".join(str(r) for r in migrated.execute(
        "EXPLAIN QUERY PLAN SELECT key_name FROM requests WHERE object_id = ?", ("file-1",)))
    assert "idx_requests_object_id" in plan
    assert migrated.execute("SELECT id, object_id FROM requests ORDER BY id").fetchall() == [("a", "file-1"),
                                                                                              ("b", None)]
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    migrated.close()


def test_the_wal_is_checkpointed_by_its_own_thread_not_by_a_commit(tmp_path: Path) -> None:
    """Commits never checkpoint (short of the backstop): the checkpointer thread copies the WAL into
    the database once rows came in, and does nothing while none do."""
    from proxy.db.writer import AUTOCHECKPOINT_PAGES

    db = tmp_path / "c.db"
    writer = LedgerWriter(str(db), checkpoint_s=0.02)
    writer.start()
    for i in range(300):
        writer.submit(_row(i))
    assert writer.flush(10)
    for _ in range(500):
        if writer.checkpoints:
            break
        threading.Event().wait(0.01)
    assert writer.checkpoints >= 1
    idle = writer.checkpoints
    threading.Event().wait(0.2)  # no new rows: no new checkpoint
    assert writer.checkpoints == idle
    writer.close()
    assert len(read_rows(db)) == 300
    writer_conn = writer._connect()
    assert writer_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == AUTOCHECKPOINT_PAGES
    writer_conn.close()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread switches from /proc")
def test_an_idle_ledger_never_wakes_its_threads(tmp_path: Path) -> None:
    """With no rows coming in, the writer and the checkpointer sleep until there is work: no timer wakes
    them (each wake costs CPU; a gateway idling on a laptop should cost none). Rows still go in at once,
    and are checkpointed, after any time asleep."""
    db = tmp_path / "i.db"
    writer = LedgerWriter(str(db), checkpoint_s=0.01)
    writer.start()
    try:
        writer.submit(_row(0))
        assert writer.flush(10)
        for _ in range(500):  # the checkpoint of that commit, then both threads asleep
            if writer.checkpoints:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.05)
        threads = (writer._thread, writer._checkpointer)
        tasks = [Path(f"/proc/self/task/{thread.native_id}") for thread in threads]
        before = [voluntary_switches(task) for task in tasks]
        threading.Event().wait(0.3)  # 30 checkpoint intervals
        assert [voluntary_switches(task) for task in tasks] == before
        checkpoints = writer.checkpoints
        writer.submit(_row(1))
        assert writer.flush(10)
        for _ in range(500):
            if writer.checkpoints > checkpoints:
                break
            threading.Event().wait(0.01)
        assert writer.checkpoints == checkpoints + 1
    finally:
        writer.close()
    assert not writer._thread.is_alive() and not writer._checkpointer.is_alive()
    assert len(read_rows(db)) == 2
