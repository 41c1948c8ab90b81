"""Stateful endpoints are deterministic too: two fresh mocks given the same sequence of requests answer
byte for byte the same (ids from `--seed`, the request and counters; times from the virtual clock)."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
from hypothesis import given, settings
from hypothesis import strategies as st

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.servers import ServerThread


def _session(seed: int, text: str) -> list[bytes]:
    server = ServerThread(lambda: make_app(MockSettings(seed=seed))).start()
    answers: list[bytes] = []
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as client:
            def keep(raw: Any) -> Any:
                answers.append(raw.http_response.content)
                return json.loads(raw.http_response.content)

            conversation = keep(client.conversations.with_raw_response.create(items=[
                {"type": "message", "role": "user", "content": text}]))
            keep(client.responses.with_raw_response.create(model="gpt-4o", input=text,
                                                           conversation=conversation["id"]))
            keep(client.conversations.items.with_raw_response.list(conversation["id"]))
            queued = keep(client.responses.with_raw_response.create(model="gpt-4o", input=text, background=True))
            keep(client.responses.with_raw_response.cancel(queued["id"]))
            data = (json.dumps({"messages": [{"role": "user", "content": text}]}) + "\n").encode()
            upload = keep(client.uploads.with_raw_response.create(bytes=len(data), filename="t.jsonl",
                                                                  mime_type="application/jsonl", purpose="fine-tune"))
            part = keep(client.uploads.parts.with_raw_response.create(upload["id"], data=io.BytesIO(data)))
            done = keep(client.uploads.with_raw_response.complete(upload["id"], part_ids=[part["id"]]))
            job = keep(client.fine_tuning.jobs.with_raw_response.create(model="gpt-4o-mini",
                                                                        training_file=done["file"]["id"]))
            keep(client.fine_tuning.jobs.with_raw_response.retrieve(job["id"]))
            keep(client.fine_tuning.jobs.with_raw_response.list_events(job["id"]))
    finally:
        server.stop()
    return answers


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 1000), st.text(min_size=1, max_size=60))
def test_the_same_sequence_gives_the_same_bytes(seed: int, text: str) -> None:
    first = _session(seed, text)
    assert first == _session(seed, text)
    assert len(first) == 11
