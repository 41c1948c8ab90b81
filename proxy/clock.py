"""Time for the gateway's limits: wall time for budget periods, monotonic time and sleep for rate
limits. Tests pass a `ManualClock` and move time explicitly instead of sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time


class Clock:
    """The real clock."""

    def wall(self) -> float:
        """Seconds since the epoch (UTC)."""
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock(Clock):
    """A clock that moves only when `advance` is called; sleepers wake when their time comes."""

    def __init__(self, wall: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._offset = 0.0
        self._wall0 = wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def wall(self) -> float:
        return self._wall0 + self._offset

    def monotonic(self) -> float:
        return self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._offset + seconds, next(self._order), future))
        await future

    @property
    def sleeping(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come (call from the loop's thread)."""
        self._offset += seconds
        while self._sleepers and self._sleepers[0][0] <= self._offset:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
