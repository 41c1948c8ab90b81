"""/v1/files: multipart upload, list, retrieve, content download and delete, kept in a bounded store.

Ids are `file-` + 22 letters and digits drawn from a PRNG seeded with the `--seed`, the SHA-256 of
the content, the filename, the purpose and a counter of files created since start (or reset): the
same uploads in the same order give the same ids on every run, and uploading identical bytes twice
gives two ids. Files of purpose `batch` expire after 30 days of virtual time unless `expires_after`
says otherwise, like OpenAI's; an expired file is gone. Content is not checked at upload beyond the
`.jsonl` name for `batch` (OpenAI accepts malformed lines and reports them when a batch validates).
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from ...engine.clock import VirtualClock
from ...engine.control import on_reset
from ...engine.faults import PACING, Pacing
from ...engine.rng import RequestRandom
from ...engine.state import CLOCK, SETTINGS, SLEEP
from ...engine.store import BoundedStore, StateDir
from ...engine.streaming import send_json
from ...engine.validation import Int, Str
from ...errors import MockError, invalid, readable
from ...settings import MockSettings

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_BYTES = 200 * 1024 * 1024
BATCH_FILE_EXPIRY_S = 30 * 86_400
MAX_FILES_LISTED = 10_000
_FIELD_BYTES = 4096
_CHUNK = 256 * 1024
_NO_DOWNLOAD = ("assistants",)
_CONTENT_TYPES = {".jsonl": "application/jsonl"}
_RECORD_FIELDS = ("id", "filename", "purpose", "created_at", "expires_at")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its metadata and bytes."""

    id: str
    filename: str
    purpose: str
    created_at: int
    expires_at: int | None
    data: bytes

    def card(self) -> dict[str, Any]:
        """The File object OpenAI returns, fields in its order."""
        return {"id": self.id, "bytes": len(self.data), "created_at": self.created_at, "filename": self.filename,
                "object": "file", "purpose": self.purpose, "status": "processed", "expires_at": self.expires_at,
                "status_details": None}

    @property
    def content_type(self) -> str:
        suffix = "." + self.filename.rpartition(".")[2].lower() if "." in self.filename else ""
        return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(self.filename)[0] or "application/octet-stream"


class FileStore:
    """Every file, uploaded or produced by a batch; bounded by `max_files` and `max_stored_bytes`, and
    kept in `state_dir/files/` (metadata JSON and bytes) when that is set."""

    def __init__(self, settings: MockSettings, clock: VirtualClock) -> None:
        self._seed, self._clock = settings.seed, clock
        self._files: BoundedStore[StoredFile] = BoundedStore(settings.max_files, settings.max_stored_bytes,
                                                             lambda f: len(f.data))
        self._count = 0
        self._folder = StateDir(settings.state_dir) if settings.state_dir else None
        if self._folder is not None:
            self._load(self._folder)

    def add(self, data: bytes, filename: str, purpose: str, expires_after_s: int | None = None) -> StoredFile:
        """Store a new file created now; the oldest files are evicted past the bounds."""
        self._count += 1
        token = RequestRandom("oaigate-mock/file", self._seed, hashlib.sha256(data).hexdigest(), filename, purpose,
                              self._count).token(22)
        now = self._clock.now()
        stored = StoredFile("file-" + token, filename, purpose, now,
                            None if expires_after_s is None else now + expires_after_s, data)
        evicted = self._files.add(stored.id, stored)
        if self._folder is not None:
            record = {name: getattr(stored, name) for name in _RECORD_FIELDS}
            self._folder.save("files", stored.id, {**record, "seq": self._count}, data)
            for old in evicted:
                self._folder.drop("files", old.id)
        return stored

    def find(self, file_id: str) -> StoredFile | None:
        """The live file, if any."""
        stored = self._files.get(file_id)
        if stored is not None and stored.expires_at is not None and stored.expires_at <= self._clock.now():
            self._forget(file_id)
            return None
        return stored

    def get(self, file_id: str, param: str = "id") -> StoredFile:
        """The live file, or OpenAI's 404."""
        stored = self.find(file_id)
        if stored is None:
            raise MockError(404, f"No such File object: {file_id}", param=param)
        return stored

    def list(self) -> list[StoredFile]:
        """Live files, oldest first."""
        return [f for f in self._files if self.find(f.id) is not None]

    def delete(self, file_id: str) -> None:
        self._forget(self.get(file_id).id)

    def reset(self) -> None:
        self._files.clear()
        self._count = 0
        if self._folder is not None:
            self._folder.clear("files")

    def _forget(self, file_id: str) -> None:
        self._files.remove(file_id)
        if self._folder is not None:
            self._folder.drop("files", file_id)

    def _load(self, folder: StateDir) -> None:
        def build(record: dict[str, Any], data: bytes | None) -> StoredFile:
            return StoredFile(**{name: record[name] for name in _RECORD_FIELDS}, data=data or b"")

        for seq, stored in folder.load("files", build):
            for old in self._files.add(stored.id, stored):
                folder.drop("files", old.id)
            self._count = max(self._count, seq)


FILES = web.AppKey("files", FileStore)


class Listed(Protocol):
    @property
    def id(self) -> str: ...

    def card(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Listed)


def query_int(request: web.Request, name: str, default: int, rule: Int) -> int:
    """An integer query parameter, checked by `rule` with OpenAI's wording."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"Invalid type for '{name}': expected an integer, but got a string instead.", name,
                      "invalid_type") from None
    rule.check(value, name)
    return value


def following(items: Iterable[T], after: str | None) -> list[T]:
    """The items after the one with id `after` (none when no item has it), for cursor pagination."""
    items = list(items)
    if after is None:
        return items
    ids = [item.id for item in items]
    return items[ids.index(after) + 1:] if after in ids else []


def list_page(items: list[T], limit: int) -> dict[str, Any]:
    """OpenAI's list envelope for the first `limit` of `items`."""
    data = [item.card() for item in items[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(items) > limit}


async def answer(request: web.Request, body: Any) -> web.StreamResponse:
    """A JSON answer paced by `x-mock-latency` like every /v1 answer."""
    return await send_json(request, body, headers={}, pacing=request.get(PACING, Pacing()), chunks=1,
                           sleep=request.app[SLEEP])


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes, or None as soon as they exceed `limit` (nothing larger is buffered)."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def _too_large(size: str, limit: int) -> MockError:
    return MockError(413, f"File too large: {size} bytes; the maximum file size is {limit} bytes.", param="file",
                     code="file_too_large")


async def _read_form(request: web.Request, limit: int) -> tuple[dict[str, str], tuple[str, bytes] | None]:
    """The text fields and the `(filename, bytes)` of the `file` part of a multipart upload."""
    if request.content_type != "multipart/form-data":
        raise invalid(f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data.")
    fields: dict[str, str] = {}
    upload = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid("Invalid multipart/form-data body: nested multipart parts are not supported.")
            name, filename = part.name or "", part.filename
            if name == "file":
                if filename is None:
                    raise invalid("Invalid 'file': expected a file upload, but got a text field.", "file",
                                  "invalid_type")
                data = await _read_part(part, limit)
                if data is None:
                    raise _too_large(f"more than {limit}", limit)
                upload = (readable(filename), data)
            elif name in ("purpose", "expires_after[anchor]", "expires_after[seconds]"):
                data = await _read_part(part, _FIELD_BYTES)
                if data is None:
                    raise invalid(f"Invalid '{name}': value too long.", name, "invalid_value")
                fields[name] = data.decode("utf-8", "replace")
            else:
                raise invalid(f"Unrecognized request argument supplied: {name}")
    # Malformed framing (ValueError), a part header line too long or broken (HttpProcessingError), a bad
    # `_charset_` part (RuntimeError); aiohttp only warns about a bad Content-Disposition, which raises where
    # warnings are errors.
    except (ValueError, HttpProcessingError, RuntimeError, BadContentDispositionHeader, BadContentDispositionParam):
        raise invalid("Could not parse the multipart/form-data body of your request.") from None
    return fields, upload


def _expiry(fields: dict[str, str], purpose: str) -> int | None:
    """Seconds until the new file expires, from `expires_after[...]` or the purpose's default."""
    given = {k: fields[f"expires_after[{k}]"] for k in ("anchor", "seconds") if f"expires_after[{k}]" in fields}
    if not given:
        return BATCH_FILE_EXPIRY_S if purpose == "batch" else None
    for key in ("anchor", "seconds"):
        if key not in given:
            raise invalid(f"Missing required parameter: 'expires_after.{key}'.", f"expires_after.{key}",
                          "missing_required_parameter")
    Str(("created_at",)).check(given["anchor"], "expires_after.anchor")
    try:
        seconds = int(given["seconds"])
    except ValueError:
        raise invalid("Invalid type for 'expires_after.seconds': expected an integer, but got a string instead.",
                      "expires_after.seconds", "invalid_type") from None
    Int(3600, 2_592_000).check(seconds, "expires_after.seconds")
    return seconds


async def create(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    fields, upload = await _read_form(request, settings.max_file_bytes)
    if upload is None:
        raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    if "purpose" not in fields:
        raise invalid("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter")
    purpose = fields["purpose"]
    Str(PURPOSES).check(purpose, "purpose")
    filename, data = upload
    expires_after_s = _expiry(fields, purpose)
    if purpose == "batch":
        if not filename.lower().endswith(".jsonl"):
            raise invalid("Invalid file format for Batch API. Must be .jsonl")
        if len(data) > BATCH_FILE_BYTES:
            raise invalid(f"Batch input files can be up to {BATCH_FILE_BYTES} bytes (200 MB); this one has "
                          f"{len(data)}.", "file", "file_too_large")
    if len(data) > settings.max_stored_bytes:
        raise _too_large(str(len(data)), settings.max_stored_bytes)
    stored = request.app[FILES].add(data, filename, purpose, expires_after_s)
    return await answer(request, stored.card())


async def list_files(request: web.Request) -> web.StreamResponse:
    limit = query_int(request, "limit", MAX_FILES_LISTED, Int(1, MAX_FILES_LISTED))
    order = request.query.get("order", "desc")
    Str(("asc", "desc")).check(order, "order")
    purpose = request.query.get("purpose")
    files = [f for f in request.app[FILES].list() if purpose is None or f.purpose == purpose]
    if order == "desc":
        files.reverse()
    return await answer(request, list_page(following(files, request.query.get("after")), limit))


async def retrieve(request: web.Request) -> web.StreamResponse:
    return await answer(request, request.app[FILES].get(request.match_info["file_id"]).card())


async def content(request: web.Request) -> web.StreamResponse:
    stored = request.app[FILES].get(request.match_info["file_id"])
    if stored.purpose in _NO_DOWNLOAD:
        raise invalid(f"Not allowed to download files of purpose: {stored.purpose}")
    pacing = request.get(PACING, Pacing())
    if pacing.ttft_s:
        await request.app[SLEEP](pacing.ttft_s)
    return web.Response(body=stored.data, content_type=stored.content_type)


async def delete(request: web.Request) -> web.StreamResponse:
    file_id = request.match_info["file_id"]
    request.app[FILES].delete(file_id)
    return await answer(request, {"id": file_id, "object": "file", "deleted": True})


def setup(app: web.Application) -> None:
    """Register the store and the /v1/files routes."""
    app[FILES] = FileStore(app[SETTINGS], app[CLOCK])
    on_reset(app, app[FILES].reset)
    app.router.add_post("/v1/files", create)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve)
    app.router.add_delete("/v1/files/{file_id}", delete)
    app.router.add_get("/v1/files/{file_id}/content", content)
