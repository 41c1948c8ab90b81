"""chains: how many tokens a stored response carries into a request that builds on it.

A Responses request with `previous_response_id` is billed for the whole stored conversation: the
previous response's prompt (which already holds its own chain) plus its output. The gateway keeps
that number per response id, in memory: filled live as each response it forwards finishes, and
rebuilt from the ledger (`object_id` with its `prompt_tokens + completion_tokens`) at start. The
estimate adds it to a chained request's prompt (see `estimate`).
"""

from __future__ import annotations

from collections import OrderedDict

from ..db.ledger import read_rows
from ..exchange import Exchange
from . import Stage

CHAIN_PATHS = frozenset({"/v1/responses", "/v1/responses/compact"})
MAX_KEPT = 1_000_000  # response ids remembered (oldest forgotten first: then bounded like an unknown id)


class Chains(Stage):
    """response id -> context tokens (that response's prompt + output)."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self._tokens: OrderedDict[str, int] = OrderedDict()
        self.max_kept = max_kept

    def context(self, response_id: str) -> int | None:
        return self._tokens.get(response_id)

    def remember(self, response_id: str, tokens: int) -> None:
        self._tokens[response_id] = tokens
        self._tokens.move_to_end(response_id)
        while len(self._tokens) > self.max_kept:
            self._tokens.popitem(last=False)

    async def finish(self, ex: Exchange) -> None:
        if (ex.method == "POST" and ex.path in CHAIN_PATHS and ex.object_id and ex.usage is not None
                and ex.status is not None and ex.status < 400):
            self.remember(ex.object_id, ex.usage.prompt + ex.usage.completion)

    def load_ledger(self, path: str) -> int:
        """Every response the ledger knows (once at start, off the event loop); how many."""
        rows = read_rows(
            path,
            "SELECT object_id, COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0) FROM requests "
            "WHERE object_id IS NOT NULL AND method = 'POST' AND endpoint IN ('/v1/responses', "
            "'/v1/responses/compact') AND status < 400 ORDER BY started_at DESC LIMIT ?",
            (self.max_kept,))
        for object_id, tokens in reversed(rows):
            self.remember(object_id, tokens)
        return len(rows)
