"""What `batches` and `pending` share: objects whose cost is known only when they end upstream.

Each keeps the open ones in `open`, looks them up on a clock (`Poller`), and writes a settlement row
(its own `method`, the object's id in `object_id`) when one ends, so at start the ones created and
not settled yet are found again in the ledger (`unsettled`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..clock import Clock
from ..db.ledger import read_rows


class Poller:
    """Calls `poll_once` every `poll_s` (on `clock`) while anything is `open`, from `start` to `stop`;
    an exception in one round is logged, and the next round comes all the same."""

    clock: Clock
    poll_s: float
    open: dict[str, Any]
    log: logging.Logger
    _poller: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        raise NotImplementedError

    async def _poll(self) -> None:
        while True:
            await self.clock.sleep(self.poll_s)
            if self.open:
                try:
                    await self.poll_once()
                except Exception:  # the poll must outlive one bad answer
                    self.log.exception("poll of open %s failed", type(self).__name__)

    async def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)


def unsettled(path: str, columns: str, created: str, settle_method: str) -> list[tuple[Any, ...]]:
    """Rows (`columns`) of the creating requests matching `created` whose object has no settlement row
    (`method = settle_method`) yet; none when there is no ledger. Read-only, off the event loop."""
    return read_rows(
        path, f"SELECT {columns} FROM requests WHERE {created} AND object_id IS NOT NULL AND object_id NOT IN "
        "(SELECT object_id FROM requests WHERE method = ? AND object_id IS NOT NULL)", (settle_method,))
