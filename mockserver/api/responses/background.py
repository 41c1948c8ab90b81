"""Background responses (`background: true`): answered `queued`, then `in_progress`, then `completed`
on the virtual clock, and cancellable until they complete (`POST /v1/responses/{id}/cancel`).

The answer is generated when the request arrives (so it is the same as a foreground one); only what a
retrieve shows of it moves. `[mock] background_pace = "instant"` (default): the first retrieve finds it
completed, as the Batch API's instant pace does, so SDK polling loops end without moving the clock;
`"realistic"`: `background_phase_s` virtual seconds queued, as many in progress, then completed
(move the clock with `POST /_mock/clock/advance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import invalid

if TYPE_CHECKING:
    from ...engine.state import Call
    from ...settings import MockSettings


@dataclass(slots=True)
class Run:
    """Where a background response is: when it was created, whether a retrieve saw it (instant pace), when
    it was cancelled."""

    created: int
    seen: bool = False
    cancelled_at: int | None = None

    def status(self, now: int, settings: MockSettings) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if settings.background_pace == "instant":
            return "completed" if self.seen else "queued"
        elapsed = now - self.created
        if elapsed < settings.background_phase_s:
            return "queued"
        return "in_progress" if elapsed < 2 * settings.background_phase_s else "completed"


def start(call: Call, response: dict[str, Any]) -> Run:
    return Run(call.clock.now())


def view(response: dict[str, Any], run: Run, now: int, settings: MockSettings, *,
         retrieving: bool = False) -> dict[str, Any]:
    """The response as a retrieve at virtual time `now` shows it."""
    if retrieving and settings.background_pace == "instant" and run.cancelled_at is None:
        run.seen = True
    status = run.status(now, settings)
    if status == "completed":
        if settings.background_pace == "realistic" and response["completed_at"] is not None:
            return {**response, "completed_at": run.created + 2 * settings.background_phase_s}
        return response
    return {**response, "status": status, "output": [], "usage": None, "completed_at": None,
            "incomplete_details": None}


def cancel(response: dict[str, Any], run: Run, now: int, settings: MockSettings) -> dict[str, Any]:
    """Cancel a queued or running response (again: the same answer); a finished one is a 400."""
    if run.status(now, settings) == "completed":
        raise invalid("Cannot cancel a completed response.", None)
    if run.cancelled_at is None:
        run.cancelled_at = now
    return view(response, run, now, settings)
