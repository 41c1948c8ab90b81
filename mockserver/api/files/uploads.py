"""The Uploads API for large files: POST /v1/uploads (declare bytes, name, MIME type, purpose), add parts
(`/parts`, multipart `data`, each up to 64 MB), then `/complete` with the part ids in order (and an
optional MD5 of the whole) to get a File, or `/cancel`. An upload expires an hour after it is created
(virtual clock), as OpenAI's do. Ids come from `--seed`, the request and a counter, like files'.
"""

from __future__ import annotations

import builtins
import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...engine.control import on_reset
from ...engine.forms import read_form
from ...engine.rng import RequestRandom
from ...engine.state import CLOCK, SETTINGS, Call, endpoint
from ...engine.store import BoundedStore
from ...engine.validation import Arr, Int, Obj, Str
from ...errors import MockError, invalid
from .files import FILES, PURPOSES, answer

PART_BYTES = 64 * 1024 * 1024
UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
EXPIRY_S = 3600
CAPACITY = 1000

_CREATE = Obj({"bytes": Int(0, UPLOAD_BYTES), "filename": Str(), "mime_type": Str(), "purpose": Str(PURPOSES),
               "expires_after": Obj({"anchor": Str(("created_at",)), "seconds": Int(3600, 2_592_000)},
                                    required=("anchor", "seconds"))},
              required=("bytes", "filename", "mime_type", "purpose"))
_COMPLETE = Obj({"part_ids": Arr(Str()), "md5": Str()}, required=("part_ids",))


@dataclass(slots=True)
class Upload:
    id: str
    created_at: int
    bytes: int
    filename: str
    mime_type: str
    purpose: str
    expires_after_s: int | None
    parts: dict[str, builtins.bytes] = field(default_factory=dict)
    status: str = "pending"
    file: dict[str, Any] | None = None

    def card(self, now: int) -> dict[str, Any]:
        status = "expired" if self.status == "pending" and now >= self.created_at + EXPIRY_S else self.status
        return {"id": self.id, "object": "upload", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": status,
                "expires_at": self.created_at + EXPIRY_S, "file": self.file}


class UploadStore(BoundedStore[Upload]):
    def __init__(self, seed: int) -> None:
        super().__init__(CAPACITY)
        self.seed, self.count = seed, 0

    def random(self, *parts: Any) -> RequestRandom:
        self.count += 1
        return RequestRandom("oaigate-mock/upload", self.seed, self.count, *parts)

    def clear(self) -> None:
        super().clear()
        self.count = 0


UPLOADS = web.AppKey("uploads", UploadStore)


def _pending(request: web.Request) -> Upload:
    upload_id = request.match_info["upload_id"]
    upload = request.app[UPLOADS].get(upload_id)
    if upload is None:
        raise MockError(404, f"Upload with id '{upload_id}' not found.", param="upload_id")
    status = upload.card(request.app[CLOCK].now())["status"]
    if status != "pending":
        raise invalid(f"Upload {upload_id} is {status}, not pending.", "upload_id", "invalid_upload_state")
    return upload


async def create(call: Call) -> web.StreamResponse:
    _CREATE.check(call.body, "")
    settings = call.settings
    if call.body["bytes"] > settings.max_file_bytes:
        raise invalid(f"Invalid 'bytes': {call.body['bytes']} is more than this server accepts "
                      f"({settings.max_file_bytes}, `[mock] max_file_bytes`).", "bytes", "file_too_large")
    store = call.request.app[UPLOADS]
    rnd = store.random(call.body)
    expires = call.body.get("expires_after")
    upload = Upload("upload_" + rnd.token(24), call.clock.now(), call.body["bytes"], call.body["filename"],
                    call.body["mime_type"], call.body["purpose"], expires["seconds"] if expires else None)
    store.add(upload.id, upload)
    return await call.reply(upload.card(call.clock.now()))


async def add_part(request: web.Request) -> web.StreamResponse:
    upload = _pending(request)
    form = await read_form(request, {"data"}, set(), PART_BYTES)
    _, data = form.file("data")
    if sum(map(len, upload.parts.values())) + len(data) > upload.bytes:
        raise invalid(f"Upload {upload.id} would exceed its declared {upload.bytes} bytes with this part.", "data",
                      "upload_too_large")
    part_id = "part_" + request.app[UPLOADS].random(upload.id, hashlib.sha256(data).hexdigest()).token(24)
    upload.parts[part_id] = data
    now = request.app[CLOCK].now()
    return await answer(request, {"id": part_id, "object": "upload.part", "created_at": now, "upload_id": upload.id})


async def complete(call: Call) -> web.StreamResponse:
    _COMPLETE.check(call.body, "")
    upload = _pending(call.request)
    part_ids = call.body["part_ids"]
    for part_id in part_ids:
        if part_id not in upload.parts:
            raise invalid(f"Part {part_id} does not belong to upload {upload.id}.", "part_ids", "invalid_part")
    if len(set(part_ids)) != len(part_ids):
        raise invalid("Each part may be listed once in 'part_ids'.", "part_ids", "duplicate_part")
    data = b"".join(upload.parts[part_id] for part_id in part_ids)
    if len(data) != upload.bytes:
        raise invalid(f"The upload's parts hold {len(data)} bytes, but it was created for {upload.bytes} bytes.",
                      "part_ids", "upload_size_mismatch")
    if call.body.get("md5") and call.body["md5"].lower() != hashlib.md5(data, usedforsecurity=False).hexdigest():
        raise invalid("The MD5 checksum does not match the uploaded bytes.", "md5", "checksum_mismatch")
    stored = call.request.app[FILES].add(data, upload.filename, upload.purpose, upload.expires_after_s)
    upload.status, upload.file, upload.parts = "completed", stored.card(), {}
    return await call.reply(upload.card(call.clock.now()))


async def cancel(request: web.Request) -> web.StreamResponse:
    upload = _pending(request)
    upload.status, upload.parts = "cancelled", {}
    return await answer(request, upload.card(request.app[CLOCK].now()))


def setup(app: web.Application) -> None:
    app[UPLOADS] = UploadStore(app[SETTINGS].seed)
    on_reset(app, app[UPLOADS].clear)
    app.router.add_post("/v1/uploads", endpoint(create))
    app.router.add_post("/v1/uploads/{upload_id}/parts", add_part)
    app.router.add_post("/v1/uploads/{upload_id}/complete", endpoint(complete))
    app.router.add_post("/v1/uploads/{upload_id}/cancel", cancel)
