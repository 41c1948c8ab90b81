"""A virtual clock: the mock never reads the wall clock for anything it returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Sleep = Callable[[float], Awaitable[Any]]


class VirtualClock:
    """Seconds since the epoch, starting at a fixed instant and moved only by `advance`."""

    def __init__(self, start: int) -> None:
        self._now = float(start)

    def now(self) -> int:
        """The current virtual time, whole seconds."""
        return int(self._now)

    def rewind(self, start: int) -> None:
        """Back to `start`, as when the server began (for `/_mock/reset`)."""
        self._now = float(start)

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        if seconds < 0:
            raise ValueError("the virtual clock only moves forward")
        self._now += seconds
