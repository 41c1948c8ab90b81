"""The Conversations API: /v1/conversations (create, retrieve, update, delete) and its items (list with
`after`/`limit`/`order`, add, retrieve, delete), plus the state a response with `conversation` reads
and extends: its items come before the response's input, and its input and output items are appended
when it completes.

Ids are `conv_` + 48 hex digits from a PRNG seeded with `--seed`, the request and a counter of
conversations made since start (or reset), so the same calls in the same order give the same ids.
Items given without an id get one derived the same way. Bounded like every store: past `CAPACITY`
conversations the oldest is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...engine.control import on_reset
from ...engine.rng import RequestRandom
from ...engine.state import Call, endpoint
from ...engine.store import BoundedStore
from ...engine.validation import METADATA, Arr, Int, Obj, Str
from ...errors import MockError, invalid
from ..files.files import answer, query_int

CAPACITY = 1000
MAX_ITEMS_PER_ADD = 20


@dataclass(slots=True)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}


class ConversationStore(BoundedStore[Conversation]):
    def __init__(self, seed: int) -> None:
        super().__init__(CAPACITY)
        self.seed, self.count = seed, 0

    def random(self, *parts: Any) -> RequestRandom:
        self.count += 1
        return RequestRandom("oaigate-mock/conversation", self.seed, self.count, *parts)

    def clear(self) -> None:
        super().clear()
        self.count = 0


CONVERSATIONS = web.AppKey("conversations", ConversationStore)

_ITEMS = Arr(Obj(extra=True))
_CREATE = Obj({"items": _ITEMS, "metadata": METADATA})
_UPDATE = Obj({"metadata": METADATA}, required=("metadata",))
_ADD = Obj({"items": _ITEMS}, required=("items",))


def find(app: web.Application, conversation_id: str, param: str | None = None) -> Conversation:
    """The conversation, or OpenAI's 404."""
    conversation = app[CONVERSATIONS].get(conversation_id)
    if conversation is None:
        raise MockError(404, f"Conversation with id '{conversation_id}' not found.", param=param)
    return conversation


def _normal(items: list[dict[str, Any]], rnd: RequestRandom) -> list[dict[str, Any]]:
    """Input items as a conversation keeps them (ids, statuses and content parts), via the Responses API's
    own normalisation."""
    from .responses import normalize_items

    return normalize_items(items, rnd)


def _hex(prefix: str, rnd: RequestRandom) -> str:
    return f"{prefix}{rnd.getrandbits(192):048x}"


async def create(call: Call) -> web.StreamResponse:
    _CREATE.check(call.body, "")
    items = call.body.get("items") or []
    if len(items) > MAX_ITEMS_PER_ADD:
        raise invalid(f"Invalid 'items': array too long. Expected an array with maximum length {MAX_ITEMS_PER_ADD}, "
                      f"but got an array with length {len(items)} instead.", "items", "array_above_max_length")
    store = call.request.app[CONVERSATIONS]
    rnd = store.random(call.body)
    conversation = Conversation(_hex("conv_", rnd), call.clock.now(), call.body.get("metadata") or {},
                                _normal(items, rnd.child("items")))
    store.add(conversation.id, conversation)
    return await call.reply(conversation.card())


async def retrieve(request: web.Request) -> web.StreamResponse:
    return await answer(request, find(request.app, request.match_info["conversation_id"]).card())


async def update(call: Call) -> web.StreamResponse:
    _UPDATE.check(call.body, "")
    conversation = find(call.request.app, call.request.match_info["conversation_id"])
    conversation.metadata = call.body["metadata"] or {}
    return await call.reply(conversation.card())


async def delete(request: web.Request) -> web.StreamResponse:
    conversation = find(request.app, request.match_info["conversation_id"])
    request.app[CONVERSATIONS].remove(conversation.id)
    return await answer(request, {"id": conversation.id, "object": "conversation.deleted", "deleted": True})


def page(items: list[dict[str, Any]], request: web.Request, default_order: str = "desc") -> dict[str, Any]:
    """OpenAI's list of items for `after`, `limit` (1-100, default 20) and `order`."""
    limit = query_int(request, "limit", 20, Int(1, 100))
    order = request.query.get("order", default_order)
    Str(("asc", "desc")).check(order, "order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    start = 0
    if "after" in request.query:
        ids = [item.get("id") for item in ordered]
        start = ids.index(request.query["after"]) + 1 if request.query["after"] in ids else len(ordered)
    chosen = ordered[start:start + limit]
    return {"object": "list", "data": chosen, "first_id": chosen[0].get("id") if chosen else None,
            "last_id": chosen[-1].get("id") if chosen else None, "has_more": start + limit < len(ordered)}


async def list_items(request: web.Request) -> web.StreamResponse:
    conversation = find(request.app, request.match_info["conversation_id"])
    return await answer(request, page(conversation.items, request))


async def add_items(call: Call) -> web.StreamResponse:
    _ADD.check(call.body, "")
    conversation = find(call.request.app, call.request.match_info["conversation_id"])
    items = call.body["items"]
    if len(items) > MAX_ITEMS_PER_ADD:
        raise invalid(f"Invalid 'items': array too long. Expected an array with maximum length {MAX_ITEMS_PER_ADD}, "
                      f"but got an array with length {len(items)} instead.", "items", "array_above_max_length")
    added = _normal(items, call.request.app[CONVERSATIONS].random(conversation.id, call.body))
    conversation.items.extend(added)
    return await call.reply({"object": "list", "data": added, "first_id": added[0].get("id") if added else None,
                             "last_id": added[-1].get("id") if added else None, "has_more": False})


def _item(request: web.Request) -> tuple[Conversation, dict[str, Any]]:
    conversation = find(request.app, request.match_info["conversation_id"])
    item_id = request.match_info["item_id"]
    for item in conversation.items:
        if item.get("id") == item_id:
            return conversation, item
    raise MockError(404, f"Item with id '{item_id}' not found.")


async def retrieve_item(request: web.Request) -> web.StreamResponse:
    return await answer(request, _item(request)[1])


async def delete_item(request: web.Request) -> web.StreamResponse:
    conversation, item = _item(request)
    conversation.items.remove(item)
    return await answer(request, conversation.card())


def setup(app: web.Application, seed: int) -> None:
    app[CONVERSATIONS] = ConversationStore(seed)
    on_reset(app, app[CONVERSATIONS].clear)
    app.router.add_post("/v1/conversations", endpoint(create))
    app.router.add_get("/v1/conversations/{conversation_id}", retrieve)
    app.router.add_post("/v1/conversations/{conversation_id}", endpoint(update))
    app.router.add_delete("/v1/conversations/{conversation_id}", delete)
    app.router.add_get("/v1/conversations/{conversation_id}/items", list_items)
    app.router.add_post("/v1/conversations/{conversation_id}/items", endpoint(add_items))
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", retrieve_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", delete_item)
