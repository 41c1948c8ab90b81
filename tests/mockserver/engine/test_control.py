"""The `/_mock/` control API end to end: journal, reset (with hooks), virtual clock."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from aiohttp import web

from mockserver.app import make_app
from mockserver.engine.control import on_reset
from mockserver.settings import MockSettings
from tests.http import AUTH, call, conforms, error_of, post
from tests.servers import Held, ServerThread

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
_HOOK_CALLS: list[str] = []


def advance(server: ServerThread, seconds: float) -> int:
    """Move the server's virtual clock; returns the new time."""
    reply = call("POST", server.url + "/_mock/clock/advance", {"seconds": seconds})
    assert reply.status == 200, reply.body
    return reply.json()["now"]


def reset(server: ServerThread) -> None:
    assert call("POST", server.url + "/_mock/reset").status == 200


def journal(server: ServerThread) -> list[dict[str, Any]]:
    reply = call("GET", server.url + "/_mock/journal")
    assert reply.status == 200
    return reply.json()["data"]


def conforms_api(component: str, instance: Any) -> None:
    """Validate against the OpenAPI component with null fields left out: OpenAI sends null for unset
    `expires_at`, `output_file_id`, `*_at`, `errors`... (as the spec's own examples show), but the
    spec does not mark those fields nullable."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    conforms(component, strip(instance))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    def build() -> web.Application:
        app = make_app(MockSettings(journal_size=5))
        on_reset(app, lambda: _HOOK_CALLS.append("reset"))
        return app

    thread = ServerThread(build).start()
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def fresh(server: ServerThread) -> None:
    reset(server)


# --- journal ---------------------------------------------------------------------------------------


def test_journal_records_what_the_client_sent(server: ServerThread) -> None:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-secret", max_retries=0) as client:
        client.chat.completions.create(**CHAT, extra_headers={"x-trace": "t1"})
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="gpt-4o-mini", messages=[])
        client.models.list()
    entries = journal(server)
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/v1/chat/completions", 200), ("POST", "/v1/chat/completions", 400), ("GET", "/v1/models", 200)]
    first = entries[0]
    assert first["body"] == CHAT
    assert first["headers"]["x-trace"] == "t1" and first["headers"]["content-type"] == "application/json"
    assert "authorization" not in first["headers"] and "sk-secret" not in json.dumps(entries)
    assert entries[2]["body"] is None and entries[2]["query"] == {}
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)


def test_journal_keeps_unauthenticated_and_unknown_requests_and_query(server: ServerThread) -> None:
    error_of(post(server.url + "/v1/chat/completions", CHAT, headers={}), 401)
    assert call("GET", server.url + "/v1/files?limit=2&order=asc", headers=AUTH).status == 200
    assert call("GET", server.url + "/nowhere").status == 404
    entries = journal(server)
    assert entries[0]["status"] == 401 and entries[0]["body"] == CHAT
    assert entries[1]["query"] == {"limit": "2", "order": "asc"}
    assert entries[2]["path"] == "/nowhere" and entries[2]["status"] == 404


def test_journal_leaves_out_control_calls_and_non_json_bodies(server: ServerThread) -> None:
    advance(server, 1)
    journal(server)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        client.files.create(file=("a.txt", io.BytesIO(b"text")), purpose="user_data")
    (entry,) = journal(server)
    assert entry["path"] == "/v1/files" and entry["body"] is None and entry["body_bytes"] > 0
    assert entry["headers"]["content-type"].startswith("multipart/form-data")


def test_journal_is_bounded_and_can_be_cleared(server: ServerThread) -> None:
    for _ in range(7):
        post(server.url + "/v1/chat/completions", CHAT)
    entries = journal(server)
    assert len(entries) == 5
    assert [e["id"] for e in entries] == list(range(entries[0]["id"], entries[0]["id"] + 5))
    assert call("DELETE", server.url + "/_mock/journal").json() == {"object": "list", "data": []}
    assert journal(server) == []


@pytest.fixture
def held() -> Iterator[tuple[ServerThread, Held]]:
    sleep = Held()
    thread = ServerThread(lambda: make_app(MockSettings(), sleep=sleep)).start()
    yield thread, sleep
    sleep.release(thread)
    thread.stop()


def test_journal_has_status_and_body_as_soon_as_the_answer_starts(held: tuple[ServerThread, Held]) -> None:
    """A stream still going (or left by its client halfway) is journalled whole from its first byte on:
    whoever has seen any of an answer finds its status and body in the journal, not a null entry."""
    server, sleep = held
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        stream = client.chat.completions.create(**CHAT, stream=True,
                                                extra_headers={"x-mock-latency": "chunk_ms=60000"})
        first = next(iter(stream))  # the mock now waits (held) before its second chunk
        assert first.model == CHAT["model"]
        (entry,) = journal(server)
        assert (entry["status"], entry["body"]) == (200, {**CHAT, "stream": True})
        stream.close()  # the client leaves mid-stream; the mock's next write fails
    sleep.release(server)
    assert [(e["status"], e["body"]) for e in journal(server)] == [(200, {**CHAT, "stream": True})]


# --- reset -----------------------------------------------------------------------------------------


def test_reset_forgets_files_batches_faults_and_calls_hooks(server: ServerThread) -> None:
    fault = {**AUTH, "x-mock-fault": "500;times=1;id=reset-test"}
    assert post(server.url + "/v1/chat/completions", CHAT, headers=fault).status == 500
    assert post(server.url + "/v1/chat/completions", CHAT, headers=fault).status == 200
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        uploaded = client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
        before = len(_HOOK_CALLS)
        reply = call("POST", server.url + "/_mock/reset")
        assert reply.status == 200 and reply.json()["reset"] is True
        assert len(_HOOK_CALLS) == before + 1
        assert client.files.list().data == [] and client.batches.list().data == []
        again = client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    assert again.id == uploaded.id, "ids restart after a reset"
    assert journal(server)[-1]["path"] == "/v1/files"
    assert post(server.url + "/v1/chat/completions", CHAT, headers=fault).status == 500


# --- clock -----------------------------------------------------------------------------------------


def test_clock_moves_created_forward(server: ServerThread) -> None:
    now = call("GET", server.url + "/_mock/clock").json()
    assert now["start"] == MockSettings().clock_start and now["now"] >= now["start"]
    assert advance(server, 90.5) == int(now["now"] + 90.5)
    body = post(server.url + "/v1/chat/completions", CHAT).json()
    assert body["created"] == call("GET", server.url + "/_mock/clock").json()["now"]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"seconds": -1}', "seconds"),
        (b'{"seconds": "10"}', "seconds"),
        (b"{}", "seconds"),
        (b'{"seconds": 1, "to": 5}', None),
        (b"[1]", None),
        (b"not json", None),
    ],
)
def test_clock_advance_rejects_bad_bodies(server: ServerThread, raw: bytes, param: str | None) -> None:
    before = call("GET", server.url + "/_mock/clock").json()["now"]
    error = error_of(post(server.url + "/_mock/clock/advance", raw=raw, headers={}), 400)
    assert error["param"] == param
    assert call("GET", server.url + "/_mock/clock").json()["now"] == before


def test_control_api_needs_no_key_and_ignores_faults(server: ServerThread) -> None:
    assert call("GET", server.url + "/_mock/journal", headers={"x-mock-fault": "500"}).status == 200
    assert call("GET", server.url + "/_mock/nothing").status == 404


def test_reset_sets_the_clock_back_so_answers_repeat(server: ServerThread) -> None:
    first = post(server.url + "/v1/chat/completions", CHAT).json()
    advance(server, 3600)
    assert post(server.url + "/v1/chat/completions", CHAT).json()["created"] == first["created"] + 3600
    assert call("POST", server.url + "/_mock/reset").json()["now"] == MockSettings().clock_start
    assert post(server.url + "/v1/chat/completions", CHAT).json() == first
