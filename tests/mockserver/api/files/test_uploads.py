"""End to end with the `openai` SDK: the Uploads API (create, add parts, complete → a File; cancel),
including the SDK's own chunked-upload helper, with answers checked against the OpenAPI description."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import conforms
from tests.mockserver.engine.test_control import advance, conforms_api
from tests.servers import ServerThread

DATA = b"".join(f'{{"messages": [{{"role": "user", "content": "line {i}"}}]}}\n'.encode() for i in range(300))


@pytest.fixture
def sdk(mock_server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock_server.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def test_parts_complete_into_a_file_with_the_bytes_in_order(sdk: openai.OpenAI) -> None:
    raw = sdk.uploads.with_raw_response.create(bytes=len(DATA), filename="train.jsonl",
                                               mime_type="application/jsonl", purpose="fine-tune")
    upload = json.loads(raw.http_response.content)
    conforms("Upload", upload)
    assert upload["status"] == "pending" and upload["file"] is None
    halves = [DATA[: len(DATA) // 2], DATA[len(DATA) // 2:]]
    raw_parts = [sdk.uploads.parts.with_raw_response.create(upload["id"], data=io.BytesIO(half)) for half in halves]
    parts = [json.loads(p.http_response.content) for p in raw_parts]
    for part in parts:
        conforms("UploadPart", part)
    done_raw = sdk.uploads.with_raw_response.complete(upload["id"], part_ids=[p["id"] for p in parts],
                                                     md5=hashlib.md5(DATA).hexdigest())
    done = json.loads(done_raw.http_response.content)
    conforms_api("Upload", done)  # the File's `expires_at: null`, as OpenAI sends it
    assert done["status"] == "completed" and done["file"]["bytes"] == len(DATA)
    assert sdk.files.content(done["file"]["id"]).content == DATA
    with pytest.raises(openai.BadRequestError):  # completed: no more parts
        sdk.uploads.parts.create(upload["id"], data=io.BytesIO(b"x"))


def test_the_sdks_chunked_helper_works(sdk: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(DATA)
    done = sdk.uploads.upload_file_chunked(file=path, mime_type="application/jsonl", purpose="batch",
                                           part_size=4096)
    assert done.status == "completed" and done.file is not None
    assert sdk.files.content(done.file.id).content == DATA


def test_a_size_mismatch_or_bad_checksum_is_400(sdk: openai.OpenAI) -> None:
    upload = sdk.uploads.create(bytes=10, filename="a.txt", mime_type="text/plain", purpose="assistants")
    part = sdk.uploads.parts.create(upload.id, data=io.BytesIO(b"12345"))
    with pytest.raises(openai.BadRequestError) as short:
        sdk.uploads.complete(upload.id, part_ids=[part.id])
    assert short.value.code == "upload_size_mismatch"
    with pytest.raises(openai.BadRequestError) as over:
        sdk.uploads.parts.create(upload.id, data=io.BytesIO(b"1234567"))
    assert over.value.code == "upload_too_large"
    rest = sdk.uploads.parts.create(upload.id, data=io.BytesIO(b"67890"))
    with pytest.raises(openai.BadRequestError) as bad_md5:
        sdk.uploads.complete(upload.id, part_ids=[part.id, rest.id], md5="0" * 32)
    assert bad_md5.value.code == "checksum_mismatch"
    assert sdk.uploads.complete(upload.id, part_ids=[part.id, rest.id]).status == "completed"


def test_cancel_and_expiry() -> None:
    server = ServerThread(lambda: make_app(MockSettings())).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as sdk:
            _cancel_and_expire(sdk, server)
    finally:
        server.stop()


def _cancel_and_expire(sdk: openai.OpenAI, mock_server: ServerThread) -> None:
    upload = sdk.uploads.create(bytes=3, filename="a.txt", mime_type="text/plain", purpose="assistants")
    assert sdk.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        sdk.uploads.complete(upload.id, part_ids=[])
    later = sdk.uploads.create(bytes=3, filename="b.txt", mime_type="text/plain", purpose="assistants")
    advance(mock_server, 3600)
    with pytest.raises(openai.BadRequestError) as expired:
        sdk.uploads.parts.create(later.id, data=io.BytesIO(b"abc"))
    assert "expired" in expired.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.uploads.cancel("upload_nope")


def test_bad_create_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.uploads.create(bytes=3, filename="a.txt", mime_type="text/plain", purpose="nonsense")  # type: ignore[arg-type]
    assert bad.value.param == "purpose"
