"""Stored chat completions: what `store: true` keeps, and the API over it.

- `GET /v1/chat/completions`: the stored completions, `order` asc (default, oldest first) or desc,
  `limit` 1-100 (default 20), `after` an id (an unknown one gives an empty page), filtered by
  `model` and `metadata[KEY]=VALUE`.
- `GET /v1/chat/completions/{id}`, `POST` (replaces its `metadata`, the only field that can change),
  `DELETE`; `GET /v1/chat/completions/{id}/messages`: its request's messages, ids `{id}-{index}`,
  paginated like the list. An unknown id is a 404.

A stored completion is the response as it was answered (streamed ones as if not streamed) plus
what OpenAI echoes of the request (`metadata`, `tools`, `tool_choice`, `seed`, sampling parameters,
`request_id`). The latest `MAX_STORED` (at most `MAX_STORED_BYTES` of JSON) are kept, the oldest
forgotten first; `POST /_mock/reset` forgets them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.wire.jsoncodec import dumps

from ...engine import textgen
from ...engine.control import on_reset
from ...engine.state import Call, endpoint
from ...engine.store import BoundedStore
from ...engine.validation import METADATA, Int, Obj, Str
from ...errors import MockError
from ..files.files import answer, query_int

MAX_STORED = 1000
MAX_STORED_BYTES = 64 * 1024 * 1024
_ECHOED = ("tool_choice", "seed", "temperature", "top_p", "presence_penalty", "frequency_penalty", "tools",
           "response_format")
_METADATA_KEY = re.compile(r"metadata\[(.+)\]")
_UPDATE = Obj({"metadata": METADATA}, required=("metadata",))


@dataclass(slots=True)
class StoredChat:
    """A stored completion (with its echoed request fields) and its request's messages."""

    completion: dict[str, Any]
    messages: list[dict[str, Any]]
    size: int


STORED_CHATS = web.AppKey("stored_chats", BoundedStore[StoredChat])


def keep(app: web.Application, completion: dict[str, Any], body: dict[str, Any], request_id: str) -> None:
    """Store `completion`, answered to `body` with `store: true`."""
    record = {**completion, "request_id": request_id, **{k: body.get(k) for k in _ECHOED},
              "input_user": body.get("user"), "metadata": dict(body.get("metadata") or {})}
    messages = [_message(f"{completion['id']}-{index}", m) for index, m in enumerate(body["messages"])]
    app[STORED_CHATS].add(completion["id"], StoredChat(record, messages, len(dumps(record)) + len(dumps(messages))))


def _message(message_id: str, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    parts = [p for p in content if p.get("type") in ("text", "image_url")] if isinstance(content, list) else None
    rest = {k: v for k, v in message.items() if k not in ("role", "content", "name")}
    return {"id": message_id, "role": message["role"], "content": None if content is None else
            textgen.text_of_content(content), "name": message.get("name"), "content_parts": parts, **rest}


def _stored(request: web.Request) -> StoredChat:
    completion_id = request.match_info["completion_id"]
    chat = request.app[STORED_CHATS].get(completion_id)
    if chat is None:
        raise MockError(404, f"No chat completion found with id '{completion_id}'.")
    return chat


def _page(request: web.Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's list envelope for `items` (oldest first) under the request's `order`, `after`, `limit`."""
    limit = query_int(request, "limit", 20, Int(1, 100))
    order = request.query.get("order", "asc")
    Str(("asc", "desc")).check(order, "order")
    if order == "desc":
        items = items[::-1]
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


async def list_completions(request: web.Request) -> web.StreamResponse:
    model = request.query.get("model")
    wanted = {m.group(1): v for k, v in request.query.items() if (m := _METADATA_KEY.fullmatch(k))}
    chats = [c.completion for c in request.app[STORED_CHATS]
             if model in (None, c.completion["model"])
             and all(c.completion["metadata"].get(k) == v for k, v in wanted.items())]
    return await answer(request, _page(request, chats))


async def retrieve(request: web.Request) -> web.StreamResponse:
    return await answer(request, _stored(request).completion)


async def update(call: Call) -> web.StreamResponse:
    _UPDATE.check(call.body, "")
    chat = _stored(call.request)
    chat.completion["metadata"] = dict(call.body["metadata"] or {})
    return await call.reply(chat.completion)


async def delete(request: web.Request) -> web.StreamResponse:
    chat = _stored(request)
    request.app[STORED_CHATS].remove(chat.completion["id"])
    return await answer(request, {"object": "chat.completion.deleted", "id": chat.completion["id"], "deleted": True})


async def messages(request: web.Request) -> web.StreamResponse:
    return await answer(request, _page(request, _stored(request).messages))


def setup(app: web.Application) -> None:
    """Register the store and the stored-completions routes."""
    app[STORED_CHATS] = BoundedStore(MAX_STORED, MAX_STORED_BYTES, lambda chat: chat.size)
    on_reset(app, app[STORED_CHATS].clear)
    app.router.add_get("/v1/chat/completions", list_completions)
    app.router.add_get("/v1/chat/completions/{completion_id}", retrieve)
    app.router.add_post("/v1/chat/completions/{completion_id}", endpoint(update))
    app.router.add_delete("/v1/chat/completions/{completion_id}", delete)
    app.router.add_get("/v1/chat/completions/{completion_id}/messages", messages)
