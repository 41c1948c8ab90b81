"""The mock's memory of stored Responses: what GET, DELETE, `input_items` and `previous_response_id` read.

Bounded: past `capacity` responses the oldest is forgotten, so a long CI run cannot exhaust memory.
Each entry keeps its whole context (the predecessors' inputs and outputs, then its own input), as
OpenAI does, so a conversation continues even after an earlier response is deleted or evicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...engine.store import BoundedStore

if TYPE_CHECKING:
    from .background import Run

CAPACITY = 1000


@dataclass(frozen=True, slots=True)
class Stored:
    """A response object and the input items it was generated from, oldest first."""

    response: dict[str, Any]
    items: tuple[dict[str, Any], ...]
    background: Run | None = None


class ResponseStore(BoundedStore[Stored]):
    """Stored responses by id, oldest evicted first past `capacity`."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(capacity)

    def put(self, response: dict[str, Any], items: tuple[dict[str, Any], ...], background: Run | None = None) -> None:
        """Keep `response` with its input items (and its run, for a background one), replacing an earlier
        one with its id."""
        self.add(response["id"], Stored(response, items, background))

    def find_item(self, item_id: str) -> dict[str, Any] | None:
        """An input or output item of a stored response by its id (what an `item_reference` names)."""
        for stored in self:
            for item in (*stored.response["output"], *stored.items):
                if item.get("id") == item_id:
                    return item
        return None


RESPONSES = web.AppKey("responses", ResponseStore)
