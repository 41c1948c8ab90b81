"""state: where budgets, rate limits and the adaptive governor keep their counters.

The in-process backend is the default and is the books themselves (`budget.BudgetBook`'s accounts,
`ratelimit.RateLimiter`'s buckets): nothing to open, nothing shared. With `[state] url`, a
`RedisState` (`proxy.state.redis`) holds the counters instead, for every gateway process using that
Redis; the books keep their own accounts as a mirror of the last answer (for `/oaigate/budgets`,
`x-ratelimit-*` headers, and enforcement by this process alone while Redis is away with
`on_unavailable = "local"`).

Source of truth for "spent this period": Redis. The ledger only raises a counter Redis has lost (a
new Redis, or one restarted without its data): each gateway offers, on start, the spend its ledger
holds for the current periods and, whenever Redis comes back, the spend Redis last told it; Redis keeps
the larger of that and its own counter. An offer never adds, so a restart never counts a request
twice. Spend settled while Redis was away (local mode, or a settle that failed) is kept in memory and
added to Redis when it returns (after the offer, which leaves it out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import StateUnavailable
from ..exchange import Slot

if TYPE_CHECKING:
    from ..config import Config
    from .redis import RedisState, Reserve, Reserved


class Health(Protocol):
    """What `/healthz` shows of a state backend."""

    def health(self) -> dict[str, object]: ...


class Along(Protocol):
    """A request's budget reservation, prepared for the shared state but not sent: the rate limit's
    admission takes it along in the same script (`RedisState.reserve_and_admit`), one round trip for
    both, and hands the answer back (`resolve`, or `unavailable`); with no shared admission to ride
    with, `send` sends it alone. The reservation is always decided before the admission is tried."""

    call: Reserve
    sent: bool

    def resolve(self, answer: Reserved) -> None:
        """Take Redis's answer (raises `BudgetExceeded` when a budget refused)."""

    def unavailable(self) -> None:
        """Redis is away: reserve in this process alone (`on_unavailable = "local"`), else raise 503."""

    async def send(self) -> None:
        """Send it alone, unless it went already."""


ALONG = Slot[Along]("state.along")  # set by the budget stage, taken by the rate-limit stage


def check_config(config: Config, config_file: str) -> None:
    """Fail at build time (a `ConfigError`) when `[state] password_env` names an unset variable."""
    import os

    from ..wire.configfile import ConfigError

    name = config.state.password_env
    if config.state.url is not None and name is not None and os.environ.get(name) is None:
        raise ConfigError(config_file, "state.password_env", f"the environment variable {name} is not set")


def open_state(config: Config) -> RedisState | None:
    """The shared backend `config` asks for (not connected yet), or None for in-process state."""
    if config.state.url is None:
        return None
    from .redis import RedisState

    return RedisState.from_config(config)


__all__ = ["ALONG", "Along", "Health", "StateUnavailable", "check_config", "open_state"]
