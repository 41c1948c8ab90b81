"""deadline: the one deadline of a request, `[upstream] timeout_s` from when its exchange started.

Everything after it counts against it: waiting in a rate limit's line, waiting for a pooled
connection, each attempt, the waits between retries and relaying the answer (`forward`).
"""

from __future__ import annotations

import time

from ..exchange import Exchange
from . import Stage


class Deadline(Stage):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def request(self, ex: Exchange) -> None:
        ex.deadline = time.monotonic() - (time.perf_counter() - ex.started) + self.timeout_s
