"""owners: with `[[keys]]`, a key sees only the objects it created through the gateway.

One upstream key serves every gateway key, so the upstream cannot tell alice's files from bob's: the
gateway does. Every object created through it (files, batches, stored responses and chat completions,
uploads, fine-tuning jobs, conversations, vector stores, assistants, threads, containers, videos, evals,
skills, voice consents, ChatKit sessions: `COLLECTIONS`) is recorded with the
key that created it, in the ledger (`object_id` and `key_name`, by `meter` and `ledger`) and in memory
here: loaded from the ledger at start (off the event loop) and updated the moment a creating answer is
seen (`chunk`, before the client holds the id), so a fast client's next request already finds it.

- A request naming an object in its path (`/v1/files/{id}/content`) or its JSON body
  (`previous_response_id`, `input_file_id`, `file_id`, `training_file`, `vector_store_ids`...) that is
  another key's, or that the gateway never saw created, gets the 404 OpenAI gives for a missing
  object (fail closed); nothing is sent upstream.
- A path with an id in a collection this module does not know (`/v1/<collection>/<id>...`) is refused
  the same way (`Invalid URL`): nobody could own what is in it. Only read-only catalogues
  (`/v1/models/{model}`) and a few fixed paths that only look like ids (`ENDPOINTS`) go through.
- List answers (`GET /v1/files`, `/v1/batches`, `/v1/chat/completions`, ...) keep only the caller's
  items (`filter_lists`, an aiohttp middleware: a stage cannot rewrite a body). A list answer without
  a length, which would be relayed as it arrives, is cut rather than relayed unfiltered.
- Files the upstream makes for an owned object (a batch's output and error files, a fine-tuning job's
  result files, an upload's file) belong to that object's owner from the moment an answer names them.
- Admin keys (`admin = true`) see and use everything. Without `[[keys]]` this stage is not in the
  pipeline and the middleware is not installed: nothing changes and nothing is spent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..config import Config
from ..db.ledger import read_rows, target
from ..errors import GatewayError, InvalidRequest, NotFound, UpstreamError
from ..exchange import Exchange, Slot
from ..wire.jsoncodec import JSONDecodeError, dumps, loads
from ..wire.sse import SSEParser
from . import Stage
from .meter import CREATING_PATHS

log = logging.getLogger("oaigate.owners")

READ_LIMIT = 1024 * 1024  # a creating answer relayed without a length is read up to this for its id


@dataclass(frozen=True, slots=True)
class Kind:
    """What OpenAI answers for a missing object of one kind: message (`{id}` filled in), param, code."""

    message: str
    param: str | None = None
    code: str | None = None

    def missing(self, object_id: str, param: str | None = None) -> NotFound:
        return NotFound(self.message.format(id=object_id), param=param or self.param, code=self.code)


FILE = Kind("No such File object: {id}", "id")
BATCH = Kind("No batch found with id '{id}'.", "batch_id")
RESPONSE = Kind("Response with id '{id}' not found.")
PREVIOUS_RESPONSE = Kind("Previous response with id '{id}' not found.", "previous_response_id",
                         "previous_response_not_found")
CHAT_COMPLETION = Kind("No chat completion found with id '{id}'.")
UPLOAD = Kind("No such Upload object: {id}", "upload_id")
FINE_TUNING_JOB = Kind("Could not find fine tune: {id}", "fine_tune_id", "fine_tune_not_found")
CONVERSATION = Kind("Conversation with id '{id}' not found.")
VECTOR_STORE = Kind("No vector store found with id '{id}'.")
ASSISTANT = Kind("No assistant found with id '{id}'.")
THREAD = Kind("No thread found with id '{id}'.")
CONTAINER = Kind("Container with id '{id}' not found.")
VIDEO = Kind("Video with id '{id}' not found.")
CHARACTER = Kind("Character with id '{id}' not found.")
EVAL = Kind("Eval with id '{id}' not found.")
SKILL = Kind("Skill with id '{id}' not found.")
VOICE_CONSENT = Kind("Voice consent with id '{id}' not found.")
CHATKIT_SESSION = Kind("ChatKit session with id '{id}' not found.")
CHATKIT_THREAD = Kind("ChatKit thread with id '{id}' not found.")
MODEL = Kind("The model '{id}' does not exist", "model", "model_not_found")

# `/v1/<collection>/<id>/...`: the collections whose objects have owners. Every collection of the OpenAPI
# description a key can create objects in (`POST /v1/<collection>`, then `GET /v1/<collection>/{id}`), and
# ChatKit threads (made by ChatKit clients, never through the gateway: only admin keys see them).
COLLECTIONS: dict[str, Kind] = {
    "files": FILE, "batches": BATCH, "responses": RESPONSE, "chat/completions": CHAT_COMPLETION,
    "uploads": UPLOAD, "fine_tuning/jobs": FINE_TUNING_JOB, "conversations": CONVERSATION,
    "vector_stores": VECTOR_STORE, "assistants": ASSISTANT, "threads": THREAD, "containers": CONTAINER,
    "videos": VIDEO, "videos/characters": CHARACTER, "evals": EVAL, "skills": SKILL,
    "audio/voice_consents": VOICE_CONSENT, "chatkit/sessions": CHATKIT_SESSION, "chatkit/threads": CHATKIT_THREAD,
}
# first segments whose collections are two segments long (`/v1/audio/speech`, `/v1/chat/completions`)
_TWO_SEGMENTS = frozenset({"chat", "fine_tuning", "audio", "chatkit", "images", "realtime"})
# operations where an id would be: `/v1/threads/runs` (a new thread and its run), `/v1/responses/compact`...
_OPERATIONS = {"threads": frozenset({"runs"}), "responses": frozenset({"input_tokens", "compact"}),
               "videos": frozenset({"edits", "extensions"})}
# Paths that look like `/v1/<collection>/<id>` but name no object; any other path with an id in a
# collection the gateway does not know is refused to non-admin keys (fail closed: nobody owns it)
ENDPOINTS = frozenset({"/v1/fine_tuning/alpha/graders/run", "/v1/fine_tuning/alpha/graders/validate",
                       "/v1/realtime/translations/client_secrets"})
# read-only catalogues: anybody reads `/v1/models/{model}`; deleting a fine-tuned model takes its job's owner
CATALOGUES: dict[str, Kind] = {"models": MODEL}
LIST_PATHS = frozenset("/v1/" + c for c in COLLECTIONS)  # GET on a collection lists it

# Body members naming an object (anywhere in the JSON, except under `annotations`: citations only describe)
REFERENCES: dict[str, Kind] = {
    "file_id": FILE, "file_ids": FILE, "input_file_id": FILE, "training_file": FILE, "validation_file": FILE,
    "previous_response_id": PREVIOUS_RESPONSE, "vector_store_id": VECTOR_STORE, "vector_store_ids": VECTOR_STORE,
    "assistant_id": ASSISTANT, "container_id": CONTAINER,
}
# A body that matches neither cannot hold a reference (a key can only be spelled out or \u-escaped)
_REFERENCE_HINT = re.compile(rb'"(?:file_ids?|input_file_id|training_file|validation_file|previous_response_id|'
                             rb'vector_store_ids?|assistant_id|conversation|container(?:_id)?|video)"\s*:|"type"\s*:\s*"file_id"')
_ESCAPE = re.compile(rb"\\u")
# Form fields naming an object, by path (an SDK sends `{"id": ...}` as `video[id]`). Such a form from a
# non-admin key is read whole up to `body.FORM_WHOLE_BYTES` to be checked; a larger one is refused.
FORM_REFERENCES: dict[str, dict[str, Kind]] = {
    "/v1/videos/edits": {"video": VIDEO, "video[id]": VIDEO},
    "/v1/videos/extensions": {"video": VIDEO, "video[id]": VIDEO},
    "/v1/audio/voices": {"consent": VOICE_CONSENT},
}
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(rb"(?im)^content-disposition:[^\r\n]*")
_FIELD_NAME = re.compile(rb';\s*name="([^"]*)"')


@dataclass(slots=True, eq=False)
class _Watch:
    """What the answer to one exchange is read for."""

    register: bool = False  # a creating request: its answer's `id` becomes the caller's
    derive: bool = False  # an answer that may name files the upstream made for an owned object
    must_filter: bool = False  # a list for a non-admin key: only whole bodies can be filtered
    upload_complete: bool = False
    new_thread: bool = False  # `POST /v1/threads/runs`: the run's thread is new, and the caller's
    record: bool = False  # a creating request `meter` does not record (a remix): the ledger keeps its id here
    sse: SSEParser | None = None
    raw: list[bytes] = field(default_factory=list)
    size: int = 0
    done: bool = False


class Unfilterable(Exception):
    """A list answer relayed without a length: it cannot be filtered before it reaches the client."""


def _children(item: dict[str, Any]) -> list[str]:
    """Ids of the files the upstream made for `item`: a batch's output and error files, a fine-tuning
    job's result files, a completed upload's file."""
    found = [item[k] for k in ("output_file_id", "error_file_id") if isinstance(item.get(k), str)]
    results = item.get("result_files")
    if isinstance(results, list):
        found += [r for r in results if isinstance(r, str)]
    made = item.get("file")
    if isinstance(made, dict) and isinstance(made.get("id"), str):
        found.append(made["id"])
    if item.get("object") == "fine_tuning.job" and isinstance(item.get("fine_tuned_model"), str):
        found.append(item["fine_tuned_model"])
    return found


def _form_fields(body: bytes, content_type: str) -> list[tuple[str, bytes]] | None:
    """The fields of a multipart form that are not files; None when it cannot be read plainly."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    fields: list[tuple[str, bytes]] = []
    for part in body.split(b"--" + found.group(1).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            return fields
        head, sep, value = part.partition(b"\r\n\r\n")
        disposition = _DISPOSITION.search(head)
        if disposition is None:
            return None
        name = _FIELD_NAME.search(disposition.group(0))
        if not sep or name is None or b"name*=" in disposition.group(0):
            return None
        if b"filename" not in disposition.group(0):
            fields.append((name.group(1).decode("utf-8", "replace"), value.removesuffix(b"\r\n")))
    return None  # no closing delimiter


def _decoded(body: bytes, encoding: str | None) -> bytes | None:
    """`body` without its content encoding (gzip or deflate, if the upstream compressed anyway); None
    when it cannot be decoded."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            return zlib.decompressobj(wbits=zlib.MAX_WBITS | 32).decompress(body, 64 * 1024 * 1024)
        except zlib.error:
            return None
    return None


_WATCH = Slot[_Watch]("owners")  # what this exchange's answer is read for


class Owners(Stage):
    """The registry of who owns what (object id -> key name), and the stage enforcing it."""

    def __init__(self, config: Config, authenticate: Stage) -> None:
        self.enabled = bool(config.keys)
        self.authenticate = authenticate
        self.ledger_path = target(config.ledger) if config.ledger.enabled else None
        self._owner: dict[str, str] = {}

    @property
    def stages(self) -> list[Stage]:
        """This stage when there are `[[keys]]`, else none: without keys it costs nothing at all."""
        return [self] if self.enabled else []

    # --- the registry ---------------------------------------------------------------------------

    def owner(self, object_id: object) -> str | None:
        return self._owner.get(object_id) if isinstance(object_id, str) else None

    def register(self, object_id: str, key: str | None) -> None:
        """`key` owns `object_id` unless somebody already does: an id is never handed to another key (a
        deterministic upstream, or a replayed fixture, answers the same request with the same id)."""
        if key is not None and object_id:
            self._owner.setdefault(object_id, sys.intern(key))

    def load_ledger(self, path: str) -> int:
        """Owners of the objects created through the gateway so far (once at start, off the event loop)."""
        rows = read_rows(path, "SELECT object_id, key_name FROM requests WHERE object_id IS NOT NULL "
                               "AND key_name IS NOT NULL ORDER BY started_at")
        for object_id, key_name in rows:
            self.register(object_id, key_name)
        return len(rows)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """`cleanup_ctx`: load the registry before serving (after the writer has migrated the ledger)."""
        if self.enabled and self.ledger_path is not None:
            count = await asyncio.to_thread(self.load_ledger, self.ledger_path)
            log.debug("owners: %d objects loaded from the ledger", count)
        yield

    def visible(self, ex: Exchange, object_id: str) -> bool:
        return ex.admin or self._owner.get(object_id) == ex.principal

    # --- the stage ------------------------------------------------------------------------------

    async def request(self, ex: Exchange) -> None:
        path = ex.path
        if not path.startswith("/v1/"):
            return
        segments = path[4:].split("/")
        two = "/".join(segments[:2])
        split = 2 if len(segments) > 1 and (segments[0].lower() in _TWO_SEGMENTS or two.lower() in COLLECTIONS) else 1
        collection = "/".join(segments[:split])
        rest = segments[split:]
        kind = COLLECTIONS.get(collection)
        operation = bool(rest) and rest[0] in _OPERATIONS.get(collection, ())
        if operation:
            rest = []
        if not ex.admin:
            self._check_form(ex, path, collection, kind)
            if kind is not None and rest and not self.visible(ex, rest[0]):
                raise kind.missing(rest[0])
            if kind is None and rest and path not in ENDPOINTS:
                catalogue = CATALOGUES.get(collection)
                if catalogue is None:  # nobody owns what is in it: fail closed
                    raise NotFound(f"Invalid URL ({ex.method} {path})")
                if ex.method not in ("GET", "HEAD") and not self.visible(ex, rest[0]):
                    raise catalogue.missing(rest[0])
            if ex.method in ("POST", "PUT", "PATCH") and (ex.body or ex.body_stream is not None):
                self._check_body(ex)
        if kind is None:
            return
        watch = _Watch()
        if operation:
            watch.register = ex.method == "POST" and (path in CREATING_PATHS or path == "/v1/threads/runs")
            watch.new_thread = ex.method == "POST" and path == "/v1/threads/runs"
        elif collection == "videos" and rest[1:] == ["remix"]:
            watch.register = watch.record = ex.method == "POST"  # a new video, the caller's
        elif not rest:
            if ex.method == "POST" and path in CREATING_PATHS:
                store = ex.json.get("store") if ex.json is not None else None
                watch.register = (store is True if collection == "chat/completions"
                                  else store is not False if collection == "responses" else True)
            elif ex.method == "GET" and not ex.admin:
                watch.must_filter = True
        if collection in ("batches", "fine_tuning/jobs"):
            watch.derive = True
        elif collection == "uploads" and rest[-1:] == ["complete"] and ex.method == "POST":
            watch.derive = watch.upload_complete = True
        if watch.register or watch.derive or watch.must_filter:
            ex.state.set(_WATCH, watch)

    @staticmethod
    def _check_form(ex: Exchange, path: str, collection: str, kind: Kind | None) -> None:
        """Only the canonical spelling of a path is let through for a non-admin key: an upstream or a
        proxy in front of it could resolve `//`, `.`/`..` (also `%2F..`, decoded here) or another case to
        an object this check never saw."""
        odd = "//" in path or "/." in path or "\\" in path or path.endswith("/")
        if odd or (kind is None and collection.lower() in COLLECTIONS):
            raise NotFound(f"Invalid URL ({ex.method} {path})")

    def _check_body(self, ex: Exchange) -> None:
        """Every object the JSON body refers to must be the caller's.

        What is checked is what goes upstream: a body whose references were spelled in a way parsers may
        read differently (a repeated member, a \\u-escaped name) is sent re-serialized, as checked. A
        body that names a reference but is not a JSON object the gateway can read is refused."""
        body = ex.json
        content_type = ex.headers.get("Content-Type", "")
        if body is None and content_type.startswith("multipart/"):
            self._check_form_fields(ex, content_type)
            return  # other form fields and file bytes (never scanned: up to 512 MB): no references in them
        hinted = len(_REFERENCE_HINT.findall(ex.body))
        escaped = b"\\" in ex.body and _ESCAPE.search(ex.body) is not None
        if not hinted and not escaped:
            return
        if body is None:  # what the upstream might still read (a BOM, a top-level array...) is not let through
            raise InvalidRequest("We could not parse the JSON body of your request. The OpenAI API expects a "
                                 "JSON payload, but what was sent was not valid JSON.")
        seen = 0
        videos = ex.path.startswith("/v1/videos")
        if ex.path.startswith("/v1/responses") and "conversation" in body:  # also input_tokens, compact
            seen += 1
            conversation = body["conversation"]
            if isinstance(conversation, dict):
                conversation = conversation.get("id")
            if isinstance(conversation, str) and not self.visible(ex, conversation):
                raise CONVERSATION.missing(conversation, "conversation")
        stack: list[Any] = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(item for item in node if isinstance(item, (dict, list)))
                continue
            if node.get("type") == "file_id":  # an eval run's source: `{"type": "file_id", "id": ...}`
                seen += 1
                if isinstance(node.get("id"), str) and not self.visible(ex, node["id"]):
                    raise FILE.missing(node["id"])
            for name, value in node.items():
                kind = REFERENCES.get(name)
                if name == "container":  # a code interpreter's: a container id, or what to make one with
                    seen += 1
                    if isinstance(value, str) and not self.visible(ex, value):
                        raise CONTAINER.missing(value, name)
                    if isinstance(value, (dict, list)):
                        stack.append(value)
                elif name == "video":  # `/v1/videos/edits`, `/v1/videos/extensions`: `{"id": ...}`
                    seen += 1
                    video = value.get("id") if videos and isinstance(value, dict) else None
                    if isinstance(video, str) and not self.visible(ex, video):
                        raise VIDEO.missing(video, name)
                elif kind is not None:
                    seen += 1
                    for object_id in (value if isinstance(value, list) else [value]):
                        if isinstance(object_id, str) and not self.visible(ex, object_id):
                            raise kind.missing(object_id, kind.param if kind is PREVIOUS_RESPONSE else name)
                elif name != "annotations" and isinstance(value, (dict, list)):
                    stack.append(value)
        if seen != hinted or (seen and escaped):
            ex.body = dumps(body)

    def _check_form_fields(self, ex: Exchange, content_type: str) -> None:
        references = FORM_REFERENCES.get(ex.path)
        if references is None:
            return
        fields = _form_fields(ex.body, content_type) if ex.body_stream is None else None
        if fields is None:
            raise InvalidRequest("The gateway could not read this form to check the objects it names: send it "
                                 "as JSON, or its fields in a plain multipart/form-data body under 16 MB.")
        for name, value in fields:
            kind = references.get(name)
            object_id = value.decode("utf-8", "replace")
            if kind is not None and not self.visible(ex, object_id):
                raise kind.missing(object_id, name.split("[")[0])

    def chunk(self, ex: Exchange, data: bytes) -> None:
        watch = ex.state.get(_WATCH)
        if watch is None or watch.done or ex.status is None or not 200 <= ex.status < 300:
            return
        headers = ex.upstream_headers or {}
        if ex.response_body is not None:  # a whole body, about to be sent
            watch.done = True
            body = _decoded(ex.response_body, headers.get("Content-Encoding"))
            if body is not None:
                self._read(ex, watch, body)
            return
        if watch.must_filter:  # cut before its first byte goes: fail closed
            ex.error_type = "unfilterable_list"
            log.warning("a list answer came without a length: it cannot be filtered for key %s and is cut",
                        ex.principal)
            raise Unfilterable("a list answer without a length cannot be filtered for this key")
        if "event-stream" in headers.get("Content-Type", ""):
            if watch.sse is None:
                watch.sse = SSEParser()
            for event in watch.sse.feed(data):
                if event.data.startswith(b"{"):
                    self._read_event(ex, watch, event.data)
                    return
            return
        watch.size += len(data)
        if watch.size > READ_LIMIT:
            watch.done = True
            return
        watch.raw.append(data)
        if data.rstrip().endswith(b"}"):  # maybe the end of a JSON answer relayed without a length
            body = _decoded(b"".join(watch.raw), headers.get("Content-Encoding"))
            try:
                payload = loads(body) if body is not None else None
            except JSONDecodeError:
                return
            watch.done = True
            self._act(ex, watch, payload)

    def _read(self, ex: Exchange, watch: _Watch, body: bytes) -> None:
        try:
            payload = loads(body)
        except JSONDecodeError:
            return
        self._act(ex, watch, payload)

    def _read_event(self, ex: Exchange, watch: _Watch, data: bytes) -> None:
        """The first event of a stream names the object (a chunk's `id`, or its `response`'s)."""
        watch.done = True
        try:
            payload = loads(data)
        except JSONDecodeError:
            return
        if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
            payload = payload["response"]
        self._act(ex, watch, payload)

    def _act(self, ex: Exchange, watch: _Watch, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        if watch.register and isinstance(payload.get("id"), str):
            self.register(payload["id"], ex.principal)
            if watch.record and ex.object_id is None:
                ex.object_id = payload["id"]
            if watch.new_thread and isinstance(payload.get("thread_id"), str):
                self.register(payload["thread_id"], ex.principal)
        if not watch.derive:
            return
        data = payload.get("data")
        items = data if payload.get("object") == "list" and isinstance(data, list) else [payload]
        for item in items:
            if not isinstance(item, dict):
                continue
            parent = self.owner(item.get("id"))
            if parent is None:
                continue
            for child in _children(item):
                self._owner.setdefault(child, parent)
                if watch.upload_complete and parent == ex.principal and ex.object_id is None:
                    ex.object_id = child  # completing an upload creates the file: the ledger keeps its owner

    async def finish(self, ex: Exchange) -> None:
        ex.state.pop(_WATCH)

    # --- list answers ---------------------------------------------------------------------------

    def filter_list(self, principal: str | None, response: web.Response) -> web.Response:
        """The list answer with only `principal`'s items; a 502 when it cannot be read (fail closed)."""
        raw = response.body
        body = _decoded(raw, response.headers.get("Content-Encoding")) if isinstance(raw, bytes) else None
        try:
            payload = loads(body) if body is not None else None
        except JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and "data" not in payload:
            return response  # no items to show or hide (an error envelope, say): nothing to filter
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            log.warning("a list answer could not be read to filter it; refused")
            return UpstreamError("The gateway could not read the upstream's list answer to show this key "
                                 "only its own objects.").response()
        kept = [item for item in payload["data"]
                if isinstance(item, dict) and principal is not None and self.owner(item.get("id")) == principal]
        payload["data"] = kept
        if "first_id" in payload:
            payload["first_id"] = kept[0].get("id") if kept else None
        if "last_id" in payload:
            payload["last_id"] = kept[-1].get("id") if kept else None
        response.headers.pop("Content-Encoding", None)
        response.headers.pop("Content-Length", None)
        response.body = dumps(payload)
        return response


OWNERS = web.AppKey("owners", Owners)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def filter_lists(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Installed with `[[keys]]` only: a non-admin key's `GET` of a list keeps only its own items."""
    response = await handler(request)
    if request.method != "GET" or request.path not in LIST_PATHS or response.status != 200:
        return response
    owners = request.app[OWNERS]
    caller = Exchange(request.method, request.path, request.query_string, request.headers, b"")
    try:
        await owners.authenticate.request(caller)
    except GatewayError as exc:  # cannot happen after a 200, but never relay a list unchecked
        return exc.response()
    if caller.admin:
        return response
    if not isinstance(response, web.Response) or response.prepared:
        return response  # relayed as it came: `Owners.chunk` cut it at its first byte, so none reached the client
    return owners.filter_list(caller.principal, response)


__all__ = ["LIST_PATHS", "OWNERS", "Owners", "filter_lists"]
