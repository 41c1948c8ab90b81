"""/v1/files end to end: the real openai SDK (sync and async) and raw multipart HTTP against the mock."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator

import openai
import pytest

from mockserver.api.files.files import BATCH_FILE_EXPIRY_S
from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import AUTH, Reply, error_of, post
from tests.mockserver.engine.test_control import advance, call, conforms_api, reset
from tests.servers import ServerThread

START = MockSettings().clock_start


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    thread = ServerThread(lambda: make_app(MockSettings())).start()
    yield thread
    thread.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[openai.OpenAI]:
    reset(server)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def multipart(fields: dict[str, str], files: dict[str, tuple[str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type; a file without a name is sent as a plain field."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def upload_raw(url: str, fields: dict[str, str], files: dict[str, tuple[str | None, bytes]]) -> Reply:
    body, content_type = multipart(fields, files)
    return post(url + "/v1/files", raw=body, headers={**AUTH, "Content-Type": content_type})


def test_upload_retrieve_download_delete(client: openai.OpenAI) -> None:
    data = b'{"custom_id": "a"}\n'
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    assert uploaded.id.startswith("file-") and len(uploaded.id) == 27
    assert (uploaded.bytes, uploaded.filename, uploaded.purpose, uploaded.status) == (len(data), "requests.jsonl",
                                                                                      "batch", "processed")
    assert uploaded.created_at == START and uploaded.expires_at == START + BATCH_FILE_EXPIRY_S
    raw = client.files.with_raw_response.retrieve(uploaded.id)
    conforms_api("OpenAIFile", raw.http_response.json())
    assert raw.parse() == uploaded
    content = client.files.content(uploaded.id)
    assert content.content == data and content.response.headers["content-type"] == "application/jsonl"
    deleted = client.files.with_raw_response.delete(uploaded.id)
    conforms_api("DeleteFileResponse", deleted.http_response.json())
    assert deleted.http_response.json() == {"id": uploaded.id, "object": "file", "deleted": True}
    for action in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as info:
            action(uploaded.id)
        assert info.value.body["message"] == f"No such File object: {uploaded.id}"  # type: ignore[index]


def test_list_orders_filters_and_paginates(client: openai.OpenAI) -> None:
    made = [client.files.create(file=(f"f{i}.txt", io.BytesIO(b"x" * i)), purpose=purpose)
            for i, purpose in enumerate(["user_data", "assistants", "user_data", "vision", "user_data"])]
    ids = [f.id for f in made]
    listed = client.files.with_raw_response.list()
    conforms_api("ListFilesResponse", listed.http_response.json())
    assert [f.id for f in listed.parse().data] == ids[::-1]
    assert [f.id for f in client.files.list(order="asc", limit=2)] == ids  # auto-paging with `after`
    page = client.files.list(order="asc", limit=2)
    assert (page.has_more, [f.id for f in page.data]) == (True, ids[:2])
    assert [f.id for f in client.files.list(purpose="user_data", order="asc")] == ids[0::2]
    assert client.files.list(after="file-unknown").data == []
    empty = client.files.with_raw_response.list(purpose="evals").http_response.json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(("query", "param"), [("limit=0", "limit"), ("limit=10001", "limit"),
                                              ("limit=ten", "limit"), ("order=up", "order")])
def test_list_rejects_bad_parameters(server: ServerThread, query: str, param: str) -> None:
    assert error_of(call("GET", f"{server.url}/v1/files?{query}", headers=AUTH), 400)["param"] == param


def test_ids_are_deterministic_and_distinct(client: openai.OpenAI, server: ServerThread) -> None:
    first = client.files.create(file=("a.txt", io.BytesIO(b"same")), purpose="user_data")
    second = client.files.create(file=("a.txt", io.BytesIO(b"same")), purpose="user_data")
    assert first.id != second.id
    reset(server)
    assert client.files.create(file=("a.txt", io.BytesIO(b"same")), purpose="user_data").id == first.id


def test_async_sdk(server: ServerThread) -> None:
    reset(server)

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
            made = await client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
            text = (await client.files.content(made.id)).text
            assert text == "{}\n"
            return [f.id async for f in client.files.list()]

    assert len(asyncio.run(main())) == 1


def test_expiry(client: openai.OpenAI, server: ServerThread) -> None:
    short = client.files.create(file=("a.txt", io.BytesIO(b"a")), purpose="user_data",
                                expires_after={"anchor": "created_at", "seconds": 3600})
    kept = client.files.create(file=("b.txt", io.BytesIO(b"b")), purpose="user_data")
    assert short.expires_at == short.created_at + 3600 and kept.expires_at is None
    advance(server, 3600)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(short.id)
    assert [f.id for f in client.files.list()] == [kept.id]


@pytest.mark.parametrize(
    ("fields", "files", "param", "fragment"),
    [
        ({"purpose": "batch"}, {}, "file", "Missing required parameter: 'file'."),
        ({}, {"file": ("a.jsonl", b"{}")}, "purpose", "Missing required parameter: 'purpose'."),
        ({"purpose": "batches"}, {"file": ("a.jsonl", b"{}")}, "purpose", "Invalid value: 'batches'."),
        ({"purpose": "batch"}, {"file": ("a.json", b"{}")}, None, "Invalid file format for Batch API. Must be .jsonl"),
        ({"purpose": "batch"}, {"file": (None, b"{}")}, "file", "expected a file upload"),
        ({"purpose": "batch", "colour": "red"}, {"file": ("a.jsonl", b"{}")}, None, "Unrecognized request argument"),
        ({"purpose": "user_data", "expires_after[anchor]": "created_at"}, {"file": ("a", b"")},
         "expires_after.seconds", "Missing required parameter"),
        ({"purpose": "user_data", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
         {"file": ("a", b"")}, "expires_after.seconds", "below minimum value"),
        ({"purpose": "user_data", "expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
         {"file": ("a", b"")}, "expires_after.anchor", "Invalid value: 'now'."),
    ],
)
def test_upload_errors(server: ServerThread, fields: dict[str, str], files: dict[str, tuple[str | None, bytes]],
                       param: str | None, fragment: str) -> None:
    error = error_of(upload_raw(server.url, fields, files), 400)
    assert error["param"] == param and fragment in error["message"]


def test_upload_needs_multipart(server: ServerThread) -> None:
    error = error_of(post(server.url + "/v1/files", {"purpose": "batch"}), 400)
    assert "expected multipart/form-data" in error["message"]
    garbage = post(server.url + "/v1/files", raw=b"--x\r\nnonsense",
                   headers={**AUTH, "Content-Type": "multipart/form-data; boundary=y"})
    assert "multipart" in error_of(garbage, 400)["message"]


def test_downloading_assistants_files_is_refused(client: openai.OpenAI) -> None:
    made = client.files.create(file=("notes.txt", io.BytesIO(b"n")), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="Not allowed to download files of purpose: assistants"):
        client.files.content(made.id)


def test_size_limits_and_eviction() -> None:
    server = ServerThread(lambda: make_app(MockSettings(max_file_bytes=1000, max_files=3,
                                                        max_stored_bytes=1500))).start()
    try:
        error = error_of(upload_raw(server.url, {"purpose": "user_data"}, {"file": ("big", b"x" * 1001)}), 413)
        assert (error["param"], error["code"]) == ("file", "file_too_large")
        with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:

            def add(size: int) -> str:
                return client.files.create(file=("f.txt", io.BytesIO(b"x" * size)), purpose="user_data").id

            ids = [add(size) for size in (10, 20, 30, 40)]
            assert [f.id for f in client.files.list(order="asc")] == ids[1:], "past max_files the oldest go"
            ids += [add(1000), add(500)]
            assert [f.id for f in client.files.list(order="asc")] == ids[-2:], "past max_stored_bytes too"
    finally:
        server.stop()
