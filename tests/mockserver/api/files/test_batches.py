"""/v1/batches end to end with the real openai SDK, a polling loop on the virtual clock, and raw HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Batch

from mockserver.app import make_app
from mockserver.engine.dispatch import run_line
from mockserver.settings import MockSettings
from tests.http import AUTH, conforms, error_of, post
from tests.mockserver.engine.test_control import advance, call, conforms_api, reset
from tests.servers import ServerThread

START = MockSettings().clock_start
TERMINAL = ("completed", "failed", "expired", "cancelled")
CHAT_URL = "/v1/chat/completions"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def jsonl(url: str, bodies: list[Any]) -> bytes:
    return b"".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}).encode() + b"\n"
                    for i, body in enumerate(bodies))


def submit(client: openai.OpenAI, data: bytes, endpoint: Any = CHAT_URL, **extra: Any) -> Batch:
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    raw = client.batches.with_raw_response.create(input_file_id=uploaded.id, endpoint=endpoint,
                                                  completion_window="24h", **extra)
    conforms_api("Batch", raw.http_response.json())
    return raw.parse()


def wait(client: openai.OpenAI, server: ServerThread, batch_id: str, step: float = 1.0) -> Batch:
    """Poll like a client would, moving the virtual clock instead of sleeping."""
    for _ in range(1000):
        raw = client.batches.with_raw_response.retrieve(batch_id)
        conforms_api("Batch", raw.http_response.json())
        batch = raw.parse()
        if batch.status in TERMINAL:
            return batch
        advance(server, step)
    raise AssertionError(f"batch {batch_id} never finished")


def records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    stored = client.files.retrieve(file_id)
    assert stored.purpose == "batch_output"
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def running(settings: MockSettings) -> Iterator[ServerThread]:
    thread = ServerThread(lambda: make_app(settings)).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    yield from running(MockSettings())


@pytest.fixture(scope="module")
def realistic() -> Iterator[ServerThread]:
    yield from running(MockSettings(batch_pace="realistic", batch_phase_s=60, batch_request_s=10))


@pytest.fixture(scope="module")
def expiring() -> Iterator[ServerThread]:
    yield from running(MockSettings(batch_expire=True))


def sdk(server: ServerThread) -> openai.OpenAI:
    reset(server)
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def client(server: ServerThread) -> Iterator[openai.OpenAI]:
    with sdk(server) as c:
        yield c


# --- the happy path --------------------------------------------------------------------------------


def test_chat_batch_matches_direct_calls(client: openai.OpenAI, server: ServerThread, tmp_path: Path) -> None:
    bodies = [chat("hello there"), chat("plan a trip", n=2, max_tokens=5), chat("logprobs", logprobs=True),
              chat("x", messages=[]), chat("streamed", stream=True)]
    (tmp_path / "requests.jsonl").write_bytes(jsonl(CHAT_URL, bodies))
    with open(tmp_path / "requests.jsonl", "rb") as fh:
        uploaded = client.files.create(file=fh, purpose="batch")
    created = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT_URL, completion_window="24h",
                                    metadata={"job": "nightly"})
    assert (created.status, created.created_at, created.metadata) == ("validating", START, {"job": "nightly"})
    assert created.request_counts is not None and created.request_counts.total == 0
    batch = wait(client, server, created.id)
    assert batch.status == "completed" and batch.model == "gpt-4o-mini"
    assert batch.in_progress_at == batch.finalizing_at == batch.completed_at == START
    assert batch.expires_at == START + 86_400 and batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 3, 2)
    outputs, failures = records(client, batch.output_file_id), records(client, batch.error_file_id)
    assert [r["custom_id"] for r in outputs] == ["req-0", "req-1", "req-2"]
    assert [r["custom_id"] for r in failures] == ["req-3", "req-4"]
    input_tokens = output_tokens = 0
    for record in outputs:
        direct = post(server.url + CHAT_URL, bodies[int(record["custom_id"][4:])])
        assert record["id"].startswith("batch_req_") and record["error"] is None
        assert record["response"]["status_code"] == 200
        assert record["response"]["body"] == direct.json(), "the same body a direct call answers"
        assert record["response"]["request_id"] == direct.headers["x-request-id"].removeprefix("req_")
        conforms("CreateChatCompletionResponse", record["response"]["body"])
        input_tokens += direct.json()["usage"]["prompt_tokens"]
        output_tokens += direct.json()["usage"]["completion_tokens"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)
    bad, streamed = (r["response"] for r in failures)
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "messages"
    assert streamed["status_code"] == 400 and streamed["body"]["error"]["param"] == "stream"
    for failure in failures:
        conforms("ErrorResponse", failure["response"]["body"])
        assert failure["error"] is None and len(failure["response"]["request_id"]) == 32


@pytest.mark.parametrize(
    ("url", "body", "component"),
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8},
         "CreateEmbeddingResponse"),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 8},
         "CreateCompletionResponse"),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": "I will kill it"},
         "CreateModerationResponse"),
    ],
)
def test_other_endpoints(client: openai.OpenAI, server: ServerThread, url: str, body: dict[str, Any],
                         component: str) -> None:
    batch = wait(client, server, submit(client, jsonl(url, [body]), url).id)
    assert batch.status == "completed" and batch.error_file_id is None
    (record,) = records(client, batch.output_file_id)
    assert record["response"]["body"] == post(server.url + url, body).json()
    conforms(component, record["response"]["body"])


def test_unknown_model_fails_every_line(client: openai.OpenAI, server: ServerThread) -> None:
    batch = wait(client, server, submit(client, jsonl(CHAT_URL, [chat("a", model="gpt-9"),
                                                                  chat("b", model="gpt-9")])).id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert batch.request_counts is not None and batch.request_counts.failed == 2
    failures = records(client, batch.error_file_id)
    assert {r["response"]["status_code"] for r in failures} == {404}
    assert failures[0]["response"]["body"]["error"]["code"] == "model_not_found"


def test_async_sdk_polling_loop(server: ServerThread) -> None:
    reset(server)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
            uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(CHAT_URL, [chat("hi")]))),
                                                 purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT_URL,
                                                completion_window="24h")
            while batch.status not in TERMINAL:
                batch = await client.batches.retrieve(batch.id)
            assert batch.output_file_id is not None
            text = (await client.files.content(batch.output_file_id)).text
            return [json.loads(line)["custom_id"] for line in text.splitlines()]

    assert asyncio.run(main()) == ["req-0"]


# --- validation ------------------------------------------------------------------------------------

GOOD = json.dumps({"custom_id": "a", "method": "POST", "url": CHAT_URL, "body": chat("hi")})


def line(**fields: Any) -> str:
    return json.dumps({"custom_id": "b", "method": "POST", "url": CHAT_URL, "body": chat("yo"), **fields})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "\n{not json\n", [("invalid_json_line", 2, None)]),
        (GOOD + "\n[1, 2]\n", [("invalid_json_line", 2, None)]),
        (GOOD + "\n" + GOOD + "\n", [("duplicate_custom_id", 2, "custom_id")]),
        (GOOD + "\n" + line(url="/v1/embeddings"), [("url_mismatch", 2, "url")]),
        (GOOD + "\n" + line(body=chat("yo", model="gpt-4o")), [("model_mismatch", 2, "body.model")]),
        (GOOD + "\n" + line(method="GET"), [("invalid_value", 2, "method")]),
        (GOOD + "\n" + line(body="text"), [("invalid_type", 2, "body")]),
        ('{"method": "POST"}\n\n' + line(custom_id=7), [("missing_required_parameter", 1, "custom_id"),
                                                         ("invalid_type", 3, "custom_id")]),
        ("\n \n", [("empty_file", None, None)]),
    ],
)
def test_invalid_input_fails_the_batch(client: openai.OpenAI, server: ServerThread, text: str,
                                       expected: list[tuple[str, int | None, str | None]]) -> None:
    batch = wait(client, server, submit(client, text.encode()).id)
    assert batch.status == "failed" and batch.failed_at == START and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == expected
    assert batch.output_file_id is None and batch.error_file_id is None


def test_too_many_requests(client: openai.OpenAI, server: ServerThread) -> None:
    batch = wait(client, server, submit(client, b"{}\n" * 50_001).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["too_many_tasks"]


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"input_file_id": None}, 400, "input_file_id"),
        ({"endpoint": "/v1/chat"}, 400, "endpoint"),
        ({"endpoint": "/v1/images/generations"}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"metadata": {"k": 1}}, 400, "metadata.k"),
        ({"input_file_id": "file-missing"}, 404, "input_file_id"),
        ({"input_file_id": "USER_DATA"}, 400, "input_file_id"),
        ({"colour": "red"}, 400, None),
    ],
)
def test_create_errors(client: openai.OpenAI, server: ServerThread, change: dict[str, Any], status: int,
                       param: str | None) -> None:
    batch_file = client.files.create(file=("a.jsonl", io.BytesIO(GOOD.encode())), purpose="batch")
    other = client.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")
    body = {"input_file_id": batch_file.id, "endpoint": CHAT_URL, "completion_window": "24h", **change}
    if body["input_file_id"] == "USER_DATA":
        body["input_file_id"] = other.id
    body = {k: v for k, v in body.items() if v is not None}
    assert error_of(post(server.url + "/v1/batches", body), status)["param"] == param


# --- cancel, pace, expiry --------------------------------------------------------------------------


def test_cancel(client: openai.OpenAI, server: ServerThread) -> None:
    batch = submit(client, jsonl(CHAT_URL, [chat("a")]))
    cancelling = client.batches.cancel(batch.id)
    assert (cancelling.status, cancelling.cancelling_at) == ("cancelling", START)
    cancelled = wait(client, server, batch.id)
    assert (cancelled.status, cancelled.cancelled_at, cancelled.output_file_id) == ("cancelled", START, None)
    assert client.batches.cancel(batch.id).status == "cancelled"
    done = wait(client, server, submit(client, jsonl(CHAT_URL, [chat("b")])).id)
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'completed'"):
        client.batches.cancel(done.id)
    for action in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError, match="No batch found with id 'batch_nope'"):
            action("batch_nope")


def test_realistic_pace(realistic: ServerThread) -> None:
    with sdk(realistic) as client:
        t0 = client.files.create(file=("x.txt", io.BytesIO(b"x")), purpose="user_data").created_at
        batch = submit(client, jsonl(CHAT_URL, [chat(f"q{i}") for i in range(4)]))

        def observe(seconds: float) -> tuple[str, int, int]:
            advance(realistic, seconds)
            b = client.batches.retrieve(batch.id)
            assert b.request_counts is not None
            return b.status, b.request_counts.total, b.request_counts.completed

        assert observe(59) == ("validating", 0, 0)
        assert observe(1) == ("in_progress", 4, 0)
        assert observe(25) == ("in_progress", 4, 2)
        assert observe(15) == ("finalizing", 4, 4)
        assert observe(59)[0] == "finalizing"
        done = wait(client, realistic, batch.id, step=1)
        assert (done.status, done.in_progress_at, done.finalizing_at, done.completed_at) == (
            "completed", t0 + 60, t0 + 100, t0 + 160)
        created = [r["response"]["body"]["created"] for r in records(client, done.output_file_id)]
        assert created == [t0 + 70, t0 + 80, t0 + 90, t0 + 100], "each line runs at the time it was due"


def test_realistic_cancel_keeps_partial_results(realistic: ServerThread) -> None:
    with sdk(realistic) as client:
        batch = submit(client, jsonl(CHAT_URL, [chat(f"q{i}") for i in range(4)]))
        advance(realistic, 60 + 25)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.request_counts is not None
        assert cancelling.request_counts.completed == 2
        advance(realistic, 59)
        assert client.batches.retrieve(batch.id).status == "cancelling"
        done = wait(client, realistic, batch.id)
        assert done.status == "cancelled" and done.error_file_id is None
        assert [r["custom_id"] for r in records(client, done.output_file_id)] == ["req-0", "req-1"]


def test_expiry(expiring: ServerThread) -> None:
    with sdk(expiring) as client:
        batch = submit(client, jsonl(CHAT_URL, [chat(f"q{i}") for i in range(4)]))
        stalled = client.batches.retrieve(batch.id)
        assert stalled.status == "in_progress" and stalled.request_counts is not None
        assert stalled.request_counts.completed == 2
        advance(expiring, 86_399)
        assert client.batches.retrieve(batch.id).status == "in_progress"
        expired = wait(client, expiring, batch.id)
        assert (expired.status, expired.expired_at) == ("expired", START + 86_400)
        assert expired.request_counts is not None
        assert (expired.request_counts.completed, expired.request_counts.failed) == (2, 2)
        assert [r["custom_id"] for r in records(client, expired.output_file_id)] == ["req-0", "req-1"]
        failures = records(client, expired.error_file_id)
        assert [(r["custom_id"], r["response"], r["error"]["code"]) for r in failures] == [
            ("req-2", None, "batch_expired"), ("req-3", None, "batch_expired")]


def test_output_expiry(client: openai.OpenAI, server: ServerThread) -> None:
    batch = submit(client, jsonl(CHAT_URL, [chat("a")]),
                   output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = wait(client, server, batch.id)
    assert done.output_file_id is not None
    assert client.files.retrieve(done.output_file_id).expires_at == START + 3600


# --- listing ---------------------------------------------------------------------------------------


def test_list_paginates_newest_first(client: openai.OpenAI, server: ServerThread) -> None:
    ids = [submit(client, jsonl(CHAT_URL, [chat(str(i))])).id for i in range(3)]
    raw = client.batches.with_raw_response.list(limit=2)
    page = raw.http_response.json()
    conforms_api("ListBatchesResponse", page)
    assert [b["id"] for b in page["data"]] == ids[:0:-1] and page["has_more"] is True
    assert {b["status"] for b in page["data"]} == {"completed"}, "listing observes the batches too"
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]
    assert [b.id for b in client.batches.list(after=ids[1])] == ids[:1]
    assert error_of(call("GET", server.url + "/v1/batches?limit=101", headers=AUTH), 400)["param"] == "limit"


# --- persistence -----------------------------------------------------------------------------------


def test_state_dir_survives_a_restart(tmp_path: Path) -> None:
    settings = MockSettings(state_dir=str(tmp_path))
    first = ServerThread(lambda: make_app(settings)).start()
    try:
        with sdk(first) as client:
            done = wait(client, first, submit(client, jsonl(CHAT_URL, [chat("a")])).id)
            waiting = submit(client, jsonl(CHAT_URL, [chat("b")]))
            advance(first, 500)
            files = client.files.list().data
    finally:
        first.stop()
    (tmp_path / "files" / "file-junk.json").write_text("{")  # skipped with a warning in the log
    second = ServerThread(lambda: make_app(settings)).start()
    try:
        with openai.OpenAI(base_url=second.url + "/v1", api_key="k", max_retries=0) as client:
            assert client.files.list().data == files
            assert client.batches.retrieve(done.id) == done
            assert done.output_file_id is not None
            assert records(client, done.output_file_id)[0]["custom_id"] == "req-0"
            resumed = client.batches.retrieve(waiting.id)
            assert resumed.status == "completed" and resumed.completed_at == START + 500, "the clock resumes"
            newer = client.files.create(file=("c.txt", io.BytesIO(b"c")), purpose="user_data")
            assert newer.id not in {f.id for f in files}
        reset(second)
    finally:
        second.stop()
    kept = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")}
    assert kept == {"clock/clock.json"}, "a reset forgets files and batches but not the time"


# --- dispatch without HTTP -------------------------------------------------------------------------


def test_run_line_answers_like_the_endpoint() -> None:
    app = make_app(MockSettings())

    async def main() -> None:
        ok = await run_line(app, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "a",
                                                            "dimensions": 2})
        assert ok.status == 200 and len(ok.body["data"][0]["embedding"]) == 2 and len(ok.request_id or "") == 32
        missing = await run_line(app, "POST", "/v1/nothing", {})
        assert missing.status == 404 and missing.body["error"]["message"] == "Invalid URL (POST /v1/nothing)"
        wrong_method = await run_line(app, "GET", "/v1/embeddings", {})
        assert wrong_method.status == 404 and wrong_method.request_id is None

    asyncio.run(main())
