"""With `[[keys]]`, a key sees only what it created through the gateway; an admin key sees everything.

One upstream key serves every gateway key, so the upstream cannot tell alice's files from bob's: the
gateway answers another key's object with OpenAI's own 404, filters list answers, and checks the ids
a request body refers to. Each test runs its own mock upstream, so no other test's objects show up.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from mockserver.app import make_app as make_mock
from tests.servers import ServerThread

from .conftest import Gateway, fetch

ALICE, BOB, ROOT = "sk-alice-0a1b2c", "sk-bob-3d4e5f", "sk-root-6a7b8c"
KEYS = [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}, {"name": "root", "key": ROOT, "admin": True}]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
BATCH_LINE = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT})


@pytest.fixture
def mock(upstream: Callable[[web.Application], ServerThread]) -> str:
    """A fresh mock upstream of its own; its `/v1` base URL."""
    return upstream(make_mock()).url + "/v1"


@pytest.fixture
def gw(gateway: Callable[..., Gateway], mock: str) -> Gateway:
    return gateway(mock, keys=KEYS)


@pytest.fixture
def sdk(gw: Gateway) -> Iterator[Callable[[str], openai.OpenAI]]:
    """`sdk(KEY)`: the real SDK on the gateway with that key (closed at the end)."""
    clients: list[openai.OpenAI] = []

    def make(key: str) -> openai.OpenAI:
        clients.append(gw.client(key=key))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _upload(client: openai.OpenAI, name: str = "data.jsonl", purpose: str = "batch") -> str:
    return client.files.create(file=(name, BATCH_LINE.encode() + b"\n", "application/jsonl"), purpose=purpose).id


def _not_found(call: Callable[[], Any], message: str, param: str | None = None, code: str | None = None) -> None:
    """`call` fails with OpenAI's 404 envelope, `message` exactly."""
    with pytest.raises(openai.NotFoundError) as err:
        call()
    error = err.value.response.json()["error"]
    assert error == {"message": message, "type": "invalid_request_error", "param": param, "code": code}


# --- objects in the path ---------------------------------------------------------------------------

def test_bob_cannot_retrieve_download_or_delete_alices_file(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob = sdk(ALICE), sdk(BOB)
    file_id = _upload(alice)
    missing = f"No such File object: {file_id}"
    _not_found(lambda: bob.files.retrieve(file_id), missing, "id")
    _not_found(lambda: bob.files.content(file_id), missing, "id")
    _not_found(lambda: bob.files.delete(file_id), missing, "id")
    assert alice.files.retrieve(file_id).id == file_id  # still there: bob's delete never reached the upstream
    assert alice.files.content(file_id).content.startswith(b'{"custom_id"')
    assert alice.files.delete(file_id).deleted


def test_an_unknown_id_and_another_keys_id_look_the_same(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob = sdk(ALICE), sdk(BOB)
    file_id = _upload(alice)
    with pytest.raises(openai.NotFoundError) as theirs:
        bob.files.retrieve(file_id)
    with pytest.raises(openai.NotFoundError) as nobodys:
        bob.files.retrieve("file-doesnotexist000000000")
    assert theirs.value.response.json()["error"]["message"].replace(file_id, "ID") == \
        nobodys.value.response.json()["error"]["message"].replace("file-doesnotexist000000000", "ID")


def test_bob_cannot_read_alices_stored_response_nor_chain_onto_it(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob = sdk(ALICE), sdk(BOB)
    first = alice.responses.create(model="gpt-4o-mini", input="Name a colour.")
    _not_found(lambda: bob.responses.retrieve(first.id), f"Response with id '{first.id}' not found.")
    _not_found(lambda: bob.responses.input_items.list(first.id), f"Response with id '{first.id}' not found.")
    _not_found(lambda: bob.responses.delete(first.id), f"Response with id '{first.id}' not found.")
    _not_found(lambda: bob.responses.create(model="gpt-4o-mini", input="And another?", previous_response_id=first.id),
               f"Previous response with id '{first.id}' not found.", "previous_response_id",
               "previous_response_not_found")
    chained = alice.responses.create(model="gpt-4o-mini", input="And another?", previous_response_id=first.id)
    assert alice.responses.retrieve(chained.id).id == chained.id
    own = bob.responses.create(model="gpt-4o-mini", input="Name a number.")
    assert bob.responses.retrieve(own.id).id == own.id


def test_a_streamed_response_is_owned_before_the_stream_ends(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob = sdk(ALICE), sdk(BOB)
    with alice.responses.create(model="gpt-4o-mini", input="Count to three.", stream=True) as stream:
        created = next(e for e in stream if e.type == "response.created")
        response_id = created.response.id
        # bob is refused while alice's stream is still open
        _not_found(lambda: bob.responses.retrieve(response_id), f"Response with id '{response_id}' not found.")
        for _ in stream:
            pass
    assert alice.responses.retrieve(response_id).id == response_id


def test_bob_cannot_read_alices_stored_chat_completion(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob = sdk(ALICE), sdk(BOB)
    stored = alice.chat.completions.create(**CHAT, store=True)
    message = f"No chat completion found with id '{stored.id}'."
    _not_found(lambda: bob.chat.completions.retrieve(stored.id), message)
    _not_found(lambda: bob.chat.completions.messages.list(stored.id), message)
    _not_found(lambda: bob.chat.completions.delete(stored.id), message)
    bobs = bob.chat.completions.create(**{**CHAT, "messages": [{"role": "user", "content": "Say bye."}]}, store=True)
    assert [c.id for c in bob.chat.completions.list()] == [bobs.id]
    # the mock is deterministic: bob repeating alice's exact request gets her id back, and it stays hers
    assert bob.chat.completions.create(**CHAT, store=True).id == stored.id
    _not_found(lambda: bob.chat.completions.retrieve(stored.id), message)
    assert [c.id for c in alice.chat.completions.list()] == [stored.id]
    assert alice.chat.completions.retrieve(stored.id).id == stored.id


def test_batches_bob_cannot_use_alices_file_or_see_her_batch(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, bob, root = sdk(ALICE), sdk(BOB), sdk(ROOT)
    file_id = _upload(alice)
    _not_found(lambda: bob.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h"),
               f"No such File object: {file_id}", "input_file_id")
    batch = alice.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    missing = f"No batch found with id '{batch.id}'."
    _not_found(lambda: bob.batches.retrieve(batch.id), missing, "batch_id")
    _not_found(lambda: bob.batches.cancel(batch.id), missing, "batch_id")
    assert [b.id for b in bob.batches.list()] == []
    done = alice.batches.retrieve(batch.id)  # the mock completes a batch at its first retrieve
    assert done.status == "completed" and done.output_file_id
    # the output file the upstream made for alice's batch is alice's
    assert b'"custom_id"' in alice.files.content(done.output_file_id).content
    _not_found(lambda: bob.files.content(done.output_file_id), f"No such File object: {done.output_file_id}", "id")
    assert [b.id for b in alice.batches.list()] == [batch.id]
    assert [b.id for b in root.batches.list()] == [batch.id]


# --- lists -----------------------------------------------------------------------------------------

def test_file_lists_show_only_the_callers_files_and_the_admin_sees_all(sdk: Callable[[str], openai.OpenAI],
                                                                        gw: Gateway) -> None:
    alice, bob, root = sdk(ALICE), sdk(BOB), sdk(ROOT)
    alices = {_upload(alice, "a1.jsonl"), _upload(alice, "a2.jsonl")}
    bobs = {_upload(bob, "b1.jsonl")}
    assert {f.id for f in bob.files.list()} == bobs
    assert {f.id for f in alice.files.list()} == alices
    assert {f.id for f in root.files.list()} == alices | bobs
    # the envelope stays valid: first/last ids name the items kept
    page = json.loads(fetch("GET", gw.url + "/files?order=asc", key=BOB).body)
    assert [f["id"] for f in page["data"]] == list(bobs)
    assert (page["object"], page["first_id"], page["last_id"]) == ("list", *bobs, *bobs)
    assert "has_more" in page
    empty = json.loads(fetch("GET", gw.url + "/files?purpose=assistants", key=BOB).body)
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], None, None)


def test_the_admin_can_use_everyones_objects(sdk: Callable[[str], openai.OpenAI]) -> None:
    alice, root = sdk(ALICE), sdk(ROOT)
    file_id = _upload(alice)
    response = alice.responses.create(model="gpt-4o-mini", input="Hi")
    assert root.files.retrieve(file_id).id == file_id
    assert root.files.content(file_id).content.startswith(b'{"custom_id"')
    assert root.responses.retrieve(response.id).id == response.id
    chained = root.responses.create(model="gpt-4o-mini", input="More", previous_response_id=response.id)
    assert chained.id
    _not_found(lambda: alice.responses.retrieve(chained.id), f"Response with id '{chained.id}' not found.")


def test_objects_the_gateway_never_saw_created_are_hidden_from_non_admins(
        sdk: Callable[[str], openai.OpenAI], mock: str) -> None:
    with openai.OpenAI(base_url=mock, api_key="sk-direct", max_retries=0) as direct:  # around the gateway
        file_id = _upload(direct)
    alice, root = sdk(ALICE), sdk(ROOT)
    _not_found(lambda: alice.files.retrieve(file_id), f"No such File object: {file_id}", "id")
    assert file_id not in {f.id for f in alice.files.list()}
    assert root.files.retrieve(file_id).id == file_id
    assert file_id in {f.id for f in root.files.list()}


def test_ownership_survives_a_gateway_restart(gateway: Callable[..., Gateway], mock: str, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    first = gateway(mock, keys=KEYS, db=db)
    with first.client(key=ALICE) as alice:
        file_id = _upload(alice)
        response_id = alice.responses.create(model="gpt-4o-mini", input="Hi").id
    first.rows(expect=2)
    first.stop()
    second = gateway(mock, keys=KEYS, db=db)
    with second.client(key=ALICE) as alice, second.client(key=BOB) as bob:
        _not_found(lambda: bob.files.retrieve(file_id), f"No such File object: {file_id}", "id")
        _not_found(lambda: bob.responses.retrieve(response_id), f"Response with id '{response_id}' not found.")
        assert file_id not in {f.id for f in bob.files.list()}
        assert alice.files.retrieve(file_id).id == file_id
        assert {f.id for f in alice.files.list()} == {file_id}
        assert alice.responses.retrieve(response_id).id == response_id


def test_without_keys_nothing_changes(gateway: Callable[..., Gateway], mock: str) -> None:
    gw = gateway(mock)
    with gw.client(key="sk-one") as one, gw.client(key="sk-two") as two:
        file_id = _upload(one)
        assert two.files.retrieve(file_id).id == file_id
        assert file_id in {f.id for f in two.files.list()}


@pytest.mark.parametrize("path", ["/files/{bob}%2F..%2F{alice}", "/files/{bob}/../{alice}", "/files//{alice}",
                                  "/FILES/{alice}", "/files/{alice}/", "/files/./{alice}", "/Files"])
def test_odd_paths_do_not_get_around_ownership(sdk: Callable[[str], openai.OpenAI], gw: Gateway, path: str) -> None:
    alice_file, bob_file = _upload(sdk(ALICE)), _upload(sdk(BOB))
    reply = fetch("GET", gw.url + path.format(alice=alice_file, bob=bob_file), key=BOB)
    assert reply.status == 404
    assert b'"bytes"' not in reply.body and b'"filename"' not in reply.body  # no file object, no list
    assert set(json.loads(reply.body)["error"]) == {"message", "type", "param", "code"}


def test_operations_in_a_collection_are_not_mistaken_for_ids(gateway: Callable[..., Gateway], echo: str) -> None:
    routed = gateway(echo, keys=KEYS)  # the echo upstream answers any path
    for path in ("/responses/input_tokens", "/responses/compact", "/threads/runs"):
        reply = fetch("POST", routed.url + path, key=BOB, json={"model": "gpt-4o-mini", "input": "hi"})
        assert reply.status == 200 and json.loads(reply.body)["path"] == "/v1" + path
    reply = fetch("POST", routed.url + "/responses/not_an_operation", key=BOB, json={})
    assert reply.status == 404


# --- ids inside request bodies ---------------------------------------------------------------------

def test_file_ids_inside_a_body_are_checked(sdk: Callable[[str], openai.OpenAI], gw: Gateway) -> None:
    alice_file = _upload(sdk(ALICE))
    escaped = json.dumps({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": alice_file}]}]}).replace("file_id", "\\u0066ile_id").encode()
    for body in (
        json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": alice_file}}]}]}).encode(),
        escaped,
    ):
        path = "/chat/completions" if b"messages" in body else "/responses"
        reply = fetch("POST", gw.url + path, key=BOB, data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 404, reply.body
        error = json.loads(reply.body)["error"]
        assert error["message"] == f"No such File object: {alice_file}" and error["param"] == "file_id"
    reply = fetch("POST", gw.url + "/responses", key=BOB, json={"model": "gpt-4o-mini", "input": "Hi",
                                                                 "conversation": {"id": "conv_never_seen"}})
    assert reply.status == 404
    assert json.loads(reply.body)["error"] == {"message": "Conversation with id 'conv_never_seen' not found.",
                                               "type": "invalid_request_error", "param": "conversation",
                                               "code": None}
    assert [row["attempts"] for row in gw.rows(expect=4)[-3:]] == [0, 0, 0]  # nothing reached the upstream


def test_what_is_checked_is_what_goes_upstream(gateway: Callable[..., Gateway], mock: str, echo: str) -> None:
    """A repeated member or an escaped name could be read one way here and another way upstream (a
    parser keeping the first of two members): what goes upstream is what was checked."""
    gw = gateway(mock, keys=KEYS, routes=[{"model": "echo", "base_url": echo}])  # "echo": what arrived
    with gw.client(key=ALICE) as alice, gw.client(key=BOB) as bob:
        alices = alice.responses.create(model="gpt-4o-mini", input="Name a colour.").id
        bobs = bob.responses.create(model="gpt-4o-mini", input="Name a number.").id
    start = '{"model": "echo", "input": "And another?", '
    for body in (start + f'"previous_response_id": "{alices}", "previous_response_id": "{bobs}"}}',
                 start + f'"previous_response_id": "{alices}", "previous_resp\\u006fnse_id": "{bobs}"}}'):
        reply = fetch("POST", gw.url + "/responses", key=BOB, data=body.encode(),
                      headers={"Content-Type": "application/json"})
        assert reply.status == 200, reply.body
        sent = base64.b64decode(json.loads(reply.body)["body_b64"])
        first_wins = json.loads(sent, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
        assert first_wins["previous_response_id"] == bobs and alices.encode() not in sent
    reply = fetch("POST", gw.url + "/responses", key=BOB, headers={"Content-Type": "application/json"},
                  data=f'\ufeff{start}"previous_response_id": "{alices}"}}'.encode())
    assert reply.status == 400 and alices.encode() not in reply.body


# --- a list answer the gateway cannot filter -------------------------------------------------------

def test_a_list_without_a_length_is_filtered_too(gateway: Callable[..., Gateway],
                                                upstream: Callable[[web.Application], ServerThread]) -> None:
    """A JSON answer sent chunked (no Content-Length) is read whole like any other, so it is filtered."""
    secret = b'{"object":"list","data":[{"id":"file-of-somebody-else","object":"file"}],"has_more":false}'

    async def chunked_list(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(secret[:20])
        await response.write(secret[20:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/files", chunked_list)
    gw = gateway(upstream(app).url + "/v1", keys=KEYS)
    reply = fetch("GET", gw.url + "/files", key=BOB)
    assert reply.status == 200 and json.loads(reply.body)["data"] == []
    assert b"file-of-somebody-else" in fetch("GET", gw.url + "/files", key=ROOT).body
    assert [row["error_type"] for row in gw.rows(expect=2)] == [None, None]


# --- /metrics, /healthz, /oaigate/budgets ----------------------------------------------------------

def test_metrics_need_a_key_when_keys_exist(gateway: Callable[..., Gateway], gw: Gateway, mock: str) -> None:
    for key in (None, "sk-wrong"):
        reply = fetch("GET", gw.root + "/metrics", key=key)
        assert reply.status == 401
        assert json.loads(reply.body)["error"]["code"] == "invalid_api_key"
    assert b"oaigate_requests" in fetch("GET", gw.root + "/metrics", key=BOB).body
    public = gateway(mock, keys=KEYS, server={"metrics_public": True})
    assert fetch("GET", public.root + "/metrics", key=None).status == 200
    assert fetch("GET", gateway(mock).root + "/metrics", key=None).status == 200  # no keys: open as before


def test_healthz_shows_details_only_to_a_key(gateway: Callable[..., Gateway], gw: Gateway, mock: str) -> None:
    for key in (None, "sk-wrong"):
        reply = fetch("GET", gw.root + "/healthz", key=key)
        assert reply.status == 200 and json.loads(reply.body) == {"status": "ok"}
    detailed = json.loads(fetch("GET", gw.root + "/healthz", key=BOB).body)
    assert detailed["status"] == "ok" and "ledger" in detailed and "upstream" in detailed
    open_ = json.loads(fetch("GET", gateway(mock).root + "/healthz", key=None).body)
    assert "ledger" in open_ and "upstream" in open_


def test_budgets_show_a_key_only_its_own(gateway: Callable[..., Gateway], mock: str) -> None:
    keys = [{**KEYS[0], "budget_usd": 1.0}, {**KEYS[1], "budget_usd": 2.0}, KEYS[2]]
    gw = gateway(mock, keys=keys, limits={"budget_usd": 100.0},
                 budgets=[{"key": "*", "budget_usd": 0.5}, {"key": "bob", "model": "gpt-4o*", "budget_usd": 0.25}])

    def scopes(key: str) -> list[tuple[str, str]]:
        reply = fetch("GET", gw.root + "/oaigate/budgets", key=key)
        assert reply.status == 200, reply.body
        return sorted((b["scope"], b["limit_usd"]) for b in json.loads(reply.body)["budgets"])

    # her own budget and her share of the per-key one; not the global one, not bob's
    assert scopes(ALICE) == [("key:alice", "0.500000"), ("key:alice", "1.000000")]
    assert scopes(BOB) == [("key:bob", "0.500000"), ("key:bob", "2.000000"), ("key:bob model:gpt-4o*", "0.250000")]
    everything = scopes(ROOT)
    assert {("global", "100.000000"), ("key:alice", "1.000000"), ("key:bob", "2.000000"),
            ("key:bob model:gpt-4o*", "0.250000"), ("key:alice", "0.500000")} <= set(everything)
    assert fetch("GET", gw.root + "/oaigate/budgets", key=None).status == 401


# --- uploads and fine-tuning (the mock has neither: a small upstream that keeps what it is sent) ----

def _objects_app() -> web.Application:
    """Uploads, files and fine-tuning jobs, as OpenAI shapes them, numbered in order of creation."""
    made: dict[str, dict[str, Any]] = {}

    def new(prefix: str, **fields: Any) -> dict[str, Any]:
        object_id = f"{prefix}{len(made) + 1}"
        made[object_id] = {"id": object_id, **fields}
        return made[object_id]

    async def create_upload(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(new("upload_", object="upload", status="pending", filename=body["filename"],
                                     bytes=body["bytes"], purpose=body["purpose"], created_at=1, expires_at=2))

    async def complete_upload(request: web.Request) -> web.Response:
        upload = made[request.match_info["id"]]
        upload["status"] = "completed"
        upload["file"] = new("file-up", object="file", bytes=upload["bytes"], created_at=1,
                             filename=upload["filename"], purpose=upload["purpose"], status="processed")
        return web.json_response(upload)

    async def get_object(request: web.Request) -> web.Response:
        found = made.get(request.match_info["id"])
        return web.json_response(found) if found else web.json_response({"error": {
            "message": "not found", "type": "invalid_request_error", "param": None, "code": None}}, status=404)

    async def create_job(request: web.Request) -> web.Response:
        body = await request.json()
        result = new("file-result", object="file", bytes=1, created_at=1, filename="step_metrics.csv",
                     purpose="fine-tune-results", status="processed")
        job = new("ftjob-", object="fine_tuning.job", model=body["model"], training_file=body["training_file"],
                  status="queued", created_at=1, result_files=[], hyperparameters={}, organization_id="org-1",
                  seed=0, validation_file=None, error=None, fine_tuned_model=None, finished_at=None,
                  trained_tokens=None)
        job["_result"] = result["id"]
        return web.json_response({k: v for k, v in job.items() if k != "_result"})

    async def get_job(request: web.Request) -> web.Response:
        job = made[request.match_info["id"]]
        job.update(status="succeeded", result_files=[job["_result"]], fine_tuned_model=f"ft:{job['model']}:{job['id']}")
        return web.json_response({k: v for k, v in job.items() if k != "_result"})

    async def delete_model(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "object": "model", "deleted": True})

    app = web.Application()
    app.router.add_post("/v1/uploads", create_upload)
    app.router.add_post("/v1/uploads/{id}/complete", complete_upload)
    app.router.add_get("/v1/files/{id}", get_object)
    app.router.add_post("/v1/fine_tuning/jobs", create_job)
    app.router.add_get("/v1/fine_tuning/jobs/{id}", get_job)
    app.router.add_delete("/v1/models/{id}", delete_model)
    return app


def test_uploads_and_fine_tuning_jobs_are_owned(gateway: Callable[..., Gateway], tmp_path: Path,
                                                upstream: Callable[[web.Application], ServerThread]) -> None:
    base = upstream(_objects_app()).url + "/v1"
    db = tmp_path / "objects.db"
    gw = gateway(base, keys=KEYS, db=db)
    with gw.client(key=ALICE) as alice, gw.client(key=BOB) as bob:
        upload = alice.uploads.create(bytes=10, filename="train.jsonl", mime_type="text/jsonl", purpose="fine-tune")
        _not_found(lambda: bob.uploads.complete(upload.id, part_ids=[]), f"No such Upload object: {upload.id}",
                   "upload_id")
        file_id = alice.uploads.complete(upload.id, part_ids=[]).file.id
        assert alice.files.retrieve(file_id).id == file_id  # the file the upload made is alice's
        _not_found(lambda: bob.files.retrieve(file_id), f"No such File object: {file_id}", "id")
        _not_found(lambda: bob.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id),
                   f"No such File object: {file_id}", "training_file")
        job = alice.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
        _not_found(lambda: bob.fine_tuning.jobs.retrieve(job.id), f"Could not find fine tune: {job.id}",
                   "fine_tune_id", "fine_tune_not_found")
        done = alice.fine_tuning.jobs.retrieve(job.id)
        (result,) = done.result_files
        assert alice.files.retrieve(result).id == result  # the job's result file is alice's too
        _not_found(lambda: bob.files.retrieve(result), f"No such File object: {result}", "id")
        model = done.fine_tuned_model  # and so is its model: only she may delete it
        _not_found(lambda: bob.models.delete(model), f"The model '{model}' does not exist", "model", "model_not_found")
        assert alice.models.delete(model).deleted
    gw.rows(expect=13)
    gw.stop()
    again = gateway(base, keys=KEYS, db=db)  # the uploaded file stays alice's after a restart
    with again.client(key=ALICE) as alice, again.client(key=BOB) as bob:
        assert alice.files.retrieve(file_id).id == file_id
        _not_found(lambda: bob.files.retrieve(file_id), f"No such File object: {file_id}", "id")


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/octet-stream"])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_json_body_dressed_as_an_upload_is_still_checked(sdk: Callable[[str], openai.OpenAI], gw: Gateway,
                                                            content_type: str, chunked: bool) -> None:
    """An upstream that ignores Content-Type parses the JSON anyway: so does the gateway (found in review)."""
    first = sdk(ALICE).responses.create(model="gpt-4o-mini", input="my secret is 42")
    body = json.dumps({"model": "gpt-4o-mini", "input": "what is my secret?", "previous_response_id": first.id})
    reply = fetch("POST", gw.url + "/responses", key=BOB, data=body.encode(), chunked=chunked or None,
                  headers={"Content-Type": content_type})
    assert reply.status == 404, reply.body
    assert json.loads(reply.body)["error"]["code"] == "previous_response_not_found"


# --- every collection a key can create objects in (a small upstream that keeps what it is sent) ----

PREFIXES = {"containers": "cntr_", "videos": "video_", "videos/characters": "char_", "evals": "eval_",
            "skills": "skill_", "audio/voice_consents": "cons_", "chatkit/sessions": "cksess_"}


def _collections_app() -> web.Application:
    """Any collection of PREFIXES: POST creates, GET lists or retrieves, DELETE deletes; a video's remix, edit
    or extension is a new video. Anything else is answered with the path it was sent to."""
    made: dict[str, dict[str, Any]] = {}

    async def handle(request: web.Request) -> web.Response:
        tail = request.path.removeprefix("/v1/")
        parts = tail.split("/")
        collection = next((c for c in sorted(PREFIXES, key=len, reverse=True)
                           if tail == c or tail.startswith(c + "/")), None)
        rest = tail[len(collection) + 1:].split("/") if collection and tail != collection else []
        if collection and request.method == "POST" and (not rest or rest[1:] == ["remix"]
                                                        or rest in (["edits"], ["extensions"])):
            object_id = f"{PREFIXES[collection]}{len(made) + 1}"
            made[object_id] = {"id": object_id, "object": collection.rsplit("/", 1)[-1].rstrip("s")}
            return web.json_response(made[object_id])
        if collection and request.method == "GET" and not rest:
            prefix = PREFIXES[collection]
            return web.json_response({"object": "list", "data": [o for k, o in made.items() if k.startswith(prefix)],
                                      "has_more": False})
        if collection and rest and rest[0] in made:
            return web.json_response(made[rest[0]])
        if collection:
            return web.json_response({"error": {"message": "not found", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=404)
        return web.json_response({"id": "resp_1", "object": "response", "path": request.path, "parts": parts})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
def objects_gw(gateway: Callable[..., Gateway], upstream: Callable[[web.Application], ServerThread]) -> Gateway:
    return gateway(upstream(_collections_app()).url + "/v1", keys=KEYS)


def _refused(reply: Any, message: str, param: str | None = None) -> None:
    assert reply.status == 404, reply.body
    assert json.loads(reply.body)["error"] == {"message": message, "type": "invalid_request_error",
                                               "param": param, "code": None}


@pytest.mark.parametrize(("collection", "message"), [
    ("containers", "Container with id '{id}' not found."),
    ("videos", "Video with id '{id}' not found."),
    ("videos/characters", "Character with id '{id}' not found."),
    ("evals", "Eval with id '{id}' not found."),
    ("skills", "Skill with id '{id}' not found."),
    ("audio/voice_consents", "Voice consent with id '{id}' not found."),
])
def test_every_collection_a_key_creates_in_is_owned(objects_gw: Gateway, collection: str, message: str) -> None:
    url = f"{objects_gw.url}/{collection}"
    made = json.loads(fetch("POST", url, key=ALICE, json={"name": "alice's"}).body)["id"]
    _refused(fetch("GET", f"{url}/{made}", key=BOB), message.format(id=made))
    _refused(fetch("DELETE", f"{url}/{made}", key=BOB), message.format(id=made))
    _refused(fetch("GET", f"{url}/{made}/content", key=BOB), message.format(id=made))
    assert json.loads(fetch("GET", f"{url}/{made}", key=ALICE).body)["id"] == made
    assert json.loads(fetch("GET", f"{url}/{made}", key=ROOT).body)["id"] == made
    if collection not in ("videos/characters",):  # no list there
        assert json.loads(fetch("GET", url, key=BOB).body)["data"] == []
        assert [o["id"] for o in json.loads(fetch("GET", url, key=ALICE).body)["data"]] == [made]
    rows = objects_gw.rows(expect=8)
    assert rows[0]["object_id"] == made and rows[0]["key_name"] == "alice"


def test_containers_with_the_sdk_and_a_remixed_video_is_its_callers(objects_gw: Gateway) -> None:
    with objects_gw.client(key=ALICE) as alice, objects_gw.client(key=BOB) as bob:
        container = alice.containers.create(name="alice's")
        _not_found(lambda: bob.containers.retrieve(container.id), f"Container with id '{container.id}' not found.")
        assert [c.id for c in bob.containers.list()] == []
        assert [c.id for c in alice.containers.list()] == [container.id]
    video = json.loads(fetch("POST", objects_gw.url + "/videos", key=ALICE, json={"prompt": "a cat"}).body)["id"]
    _refused(fetch("POST", f"{objects_gw.url}/videos/{video}/remix", key=BOB, json={"prompt": "a dog"}),
             f"Video with id '{video}' not found.")
    remix = json.loads(fetch("POST", f"{objects_gw.url}/videos/{video}/remix", key=ALICE,
                             json={"prompt": "a dog"}).body)["id"]
    assert json.loads(fetch("GET", f"{objects_gw.url}/videos/{remix}", key=ALICE).body)["id"] == remix
    _refused(fetch("GET", f"{objects_gw.url}/videos/{remix}", key=BOB), f"Video with id '{remix}' not found.")
    for path in ("/videos/edits", "/videos/extensions"):
        _refused(fetch("POST", objects_gw.url + path, key=BOB, json={"video": {"id": video}, "prompt": "x"}),
                 f"Video with id '{video}' not found.", "video")
    owned = {row["object_id"]: row["key_name"] for row in objects_gw.rows(expect=11) if row["object_id"]}
    assert owned == {container.id: "alice", video: "alice", remix: "alice"}  # the ledger keeps the remix's owner


def test_a_collection_the_gateway_does_not_know_is_refused_to_non_admins(gateway: Callable[..., Gateway],
                                                                          echo: str) -> None:
    routed = gateway(echo, keys=KEYS)  # the echo upstream answers any path
    for method, path in (("GET", "/things/thing_1"), ("DELETE", "/things/thing_1/parts/2"),
                         ("POST", "/realtime/calls/rtc_1/accept"), ("GET", "/chatkit/threads/cthr_1")):
        reply = fetch(method, routed.url + path, key=BOB, json={} if method == "POST" else None)
        assert reply.status == 404, (path, reply.body)
        assert set(json.loads(reply.body)["error"]) == {"message", "type", "param", "code"}
        assert fetch(method, routed.url + path, key=ROOT).status == 200  # the admin may
    for method, path in (("GET", "/models/gpt-4o-mini"), ("POST", "/things"), ("POST", "/images/generations"),
                         ("POST", "/audio/speech"), ("POST", "/fine_tuning/alpha/graders/run"),
                         ("POST", "/realtime/client_secrets"), ("POST", "/embeddings")):
        reply = fetch(method, routed.url + path, key=BOB, json={})
        assert reply.status == 200 and json.loads(reply.body)["path"] == "/v1" + path, (path, reply.body)


def test_container_references_in_a_body_are_checked(objects_gw: Gateway) -> None:
    container = json.loads(fetch("POST", objects_gw.url + "/containers", key=ALICE, json={"name": "a"}).body)["id"]
    for tool in ({"type": "code_interpreter", "container": container},
                 {"type": "shell", "environment": {"type": "container_reference", "container_id": container}}):
        body = {"model": "gpt-4o-mini", "input": "Run it.", "tools": [tool]}
        param = "container" if "container" in tool else "container_id"
        _refused(fetch("POST", objects_gw.url + "/responses", key=BOB, json=body),
                 f"Container with id '{container}' not found.", param)
        assert fetch("POST", objects_gw.url + "/responses", key=ALICE, json=body).status == 200
    auto = {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-not-bobs"]}}
    _refused(fetch("POST", objects_gw.url + "/responses", key=BOB,
                   json={"model": "gpt-4o-mini", "input": "Run it.", "tools": [auto]}),
             "No such File object: file-not-bobs", "file_ids")


def test_an_eval_runs_file_source_is_checked(objects_gw: Gateway) -> None:
    eval_id = json.loads(fetch("POST", objects_gw.url + "/evals", key=BOB, json={"name": "bob's"}).body)["id"]
    for spaced in (False, True):
        body = json.dumps({"name": "run", "data_source": {"type": "jsonl", "source": {
            "type": "file_id", "id": "file-not-bobs"}}}, separators=(",", ":") if not spaced else None)
        _refused(fetch("POST", f"{objects_gw.url}/evals/{eval_id}/runs", key=BOB, data=body.encode(),
                       headers={"Content-Type": "application/json"}), "No such File object: file-not-bobs", "id")
    assert fetch("POST", f"{objects_gw.url}/evals/{eval_id}/runs", key=ROOT, json={"data_source": {
        "type": "jsonl", "source": {"type": "file_id", "id": "file-not-bobs"}}}).status == 200


def test_references_in_form_fields_are_checked(objects_gw: Gateway) -> None:
    import io

    import aiohttp

    consent = json.loads(fetch("POST", objects_gw.url + "/audio/voice_consents", key=ALICE, json={}).body)["id"]
    video = json.loads(fetch("POST", objects_gw.url + "/videos", key=ALICE, json={"prompt": "a cat"}).body)["id"]

    def voice(size: int = 10) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("name", "mine")
        form.add_field("consent", consent)
        form.add_field("audio_sample", io.BytesIO(b"\0" * size), filename="sample.wav", content_type="audio/wav")
        return form

    def edit(field: str) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("prompt", "a dog")
        form.add_field(field, video)
        form.add_field("padding", b"x", filename="x.bin", content_type="application/octet-stream")
        return form

    _refused(fetch("POST", objects_gw.url + "/audio/voices", key=BOB, data=voice()),
             f"Voice consent with id '{consent}' not found.", "consent")
    for field in ("video[id]", "video"):
        _refused(fetch("POST", objects_gw.url + "/videos/edits", key=BOB, data=edit(field)),
                 f"Video with id '{video}' not found.", "video")
    assert fetch("POST", objects_gw.url + "/audio/voices", key=ALICE, data=voice()).status == 200
    assert fetch("POST", objects_gw.url + "/videos/edits", key=ALICE, data=edit("video[id]")).status == 200
    # past the 1 MB other uploads stream from, such a form is still read whole and checked
    _refused(fetch("POST", objects_gw.url + "/audio/voices", key=BOB, data=voice(2 * 1024 * 1024)),
             f"Voice consent with id '{consent}' not found.", "consent")

    async def chunked() -> Any:  # no length: streamed, so it cannot be checked, so it is refused
        yield (f'--b0und\r\nContent-Disposition: form-data; name="consent"\r\n\r\n{consent}\r\n'
               '--b0und--\r\n').encode()

    streamed = fetch("POST", objects_gw.url + "/audio/voices", key=BOB, data=chunked(),
                     headers={"Content-Type": "multipart/form-data; boundary=b0und"})
    assert streamed.status == 400 and consent.encode() not in streamed.body


def test_the_paths_answered_without_a_closer_look_pass_the_full_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.app

    common = proxy.app._COMMON_PATHS
    monkeypatch.setattr(proxy.app, "_COMMON_PATHS", frozenset())
    assert not any(proxy.app.odd_path(path) for path in common)
