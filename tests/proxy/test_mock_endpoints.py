"""The mock's newer endpoints through `oaigate` (mock upstream, no budgets): the SDK's own methods for
background cancel, input token counts, conversations, uploads, fine-tuning and `models.delete`,
images and audio get the same answers through the gateway as from the mock, and are in the ledger."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable

from tests.http import conforms

from .conftest import Gateway

EXAMPLES = b"".join(json.dumps({"messages": [{"role": "user", "content": f"Q{i}"},
                                             {"role": "assistant", "content": f"A{i}"}]}).encode() + b"\n"
                    for i in range(3))


def test_responses_state_endpoints_through_the_gateway(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with gw.client() as client:
        queued = client.responses.create(model="gpt-5.4", input="Write a poem", background=True)
        assert queued.status == "queued"
        cancelled = client.responses.with_raw_response.cancel(queued.id)
        conforms("Response", {k: v for k, v in json.loads(cancelled.http_response.content).items() if k != "usage"})
        assert cancelled.parse().status == "cancelled"
        counted = client.responses.input_tokens.count(model="gpt-5.4", input="How many tokens is this?")
        made = client.responses.create(model="gpt-5.4", input="How many tokens is this?")
        assert made.usage is not None and counted.input_tokens == made.usage.input_tokens
        conversation = client.conversations.create(metadata={"via": "gateway"})
        client.responses.create(model="gpt-4o", input="Hello", conversation=conversation.id)
        assert len(list(client.conversations.items.list(conversation.id))) == 2
    rows = gw.rows(expect=6)
    assert {r["endpoint"] for r in rows} >= {"/v1/responses", "/v1/responses/input_tokens", "/v1/conversations"}


def test_files_fine_tuning_and_media_through_the_gateway(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    with gw.client() as client:
        upload = client.uploads.create(bytes=len(EXAMPLES), filename="t.jsonl", mime_type="application/jsonl",
                                       purpose="fine-tune")
        part = client.uploads.parts.create(upload.id, data=io.BytesIO(EXAMPLES))
        done = client.uploads.complete(upload.id, part_ids=[part.id])
        assert done.file is not None
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=done.file.id)
        model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
        assert model is not None and model.startswith("ft:gpt-4o-mini:")
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Q1"}])
        assert chat.model == model
        assert client.models.delete(model).deleted is True
        image = client.images.generate(model="gpt-image-1", prompt="A kite", size="1024x1024")
        assert image.data is not None and base64.b64decode(image.data[0].b64_json or "")[:4] == b"\x89PNG"
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there", response_format="wav")
        assert speech.content[:4] == b"RIFF"
        heard = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", speech.content))
        assert heard.text
    rows = gw.rows(expect=10)
    assert all(r["status"] == 200 for r in rows)
