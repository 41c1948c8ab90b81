"""config.toml: one pydantic model per section, validated on load.

A mistake is reported as one `ConfigError` naming the file, the dotted key and the reason; the CLI
prints it and exits 2.
"""

from __future__ import annotations

import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mockserver.settings import MockSettings

from .wire.configfile import ConfigError, read_toml, validate
from .wire.pricing import PriceOverride

DEFAULT_PATH = Path("config.toml")

Period = Literal["day", "week", "month", "total"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(4141, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    allow_remote: bool = Field(False, description="Allow binding a non-loopback address with no [[keys]].")


class UpstreamConfig(Section):
    base_url: str = Field("mock", description='"mock" (the embedded mock server) or a URL ending in /v1.')
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the upstream key.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries after the first attempt.")
    timeout_s: float = Field(600.0, gt=0, description="Overall deadline for one request, retries included.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Deadline for opening a connection.")
    first_byte_timeout_s: float = Field(120.0, gt=0, description="Deadline for the upstream's response headers.")
    pass_through: bool = Field(False, description="Forward the client's own bearer token upstream.")


class LedgerConfig(Section):
    enabled: bool = Field(True, description="Write one row per request to the ledger.")
    path: str = Field("oaigate.db", description="SQLite file for the spend ledger.")
    log_bodies: bool = Field(False, description="Store request and response bodies (truncated).")
    synchronous: Literal["normal", "full"] = Field(
        "normal", description='"normal": a committed row survives the process being killed; "full": also '
        "power loss (one fsync per commit).")
    durable_wait_s: float = Field(
        1.0, ge=0, description="Longest a complete answer waits for its row to be committed before its last "
        "bytes go out (then it goes on, counted in /healthz); 0: do not wait.")


class MatchConfig(Section):
    ignore_fields: list[str] = Field(default_factory=list, description="Body fields left out of matching here.")


class FixturesConfig(Section):
    mode: Literal["live", "record", "replay", "record-missing"] = "live"
    dir: str = Field("fixtures", description="Folder holding recorded fixtures (one subfolder per cassette).")
    cassette: str = Field("default", description="Cassette used when a request names none.")
    ignore_fields: list[str] = Field(["user", "metadata"], description="Body fields left out of matching.")
    match: dict[str, MatchConfig] = Field(default_factory=dict, description="Per-path matching, by API path.")
    redact_fields: list[str] = Field(default_factory=list, description="Body fields never written to disk.")
    repeat: Literal["last", "fail"] = Field("last", description="After the recorded answers of a request run out.")
    miss_status: int = Field(404, ge=400, le=599, description="Status of a replay miss.")
    pace: bool = Field(False, description="Replay streams with their recorded timing (else full speed).")


class LimitFields(Section):
    budget_usd: float | None = Field(None, ge=0, description="Spend cap per period, USD.")
    budget_tokens: int | None = Field(None, gt=0, description="Token cap per period (prompt + completion).")
    budget_period: Period = Field("day", description="day | week | month | total; periods start at midnight.")
    rpm: int | None = Field(None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(None, gt=0, description="Tokens per minute (estimated at admission, then corrected).")
    concurrent: int | None = Field(None, gt=0, description="Requests in flight at once.")


class LimitsConfig(LimitFields):
    """Global limits, plus how every limit behaves."""

    on_limit: Literal["queue", "reject"] = Field("queue", description="Over a rate limit: wait in line or 429.")
    max_wait_s: float = Field(30.0, ge=0, description="Longest a queued request waits before a 429.")
    default_max_tokens: int = Field(
        4096, gt=0, description="Completion cap reserved (and sent upstream) when a budgeted request sets none.")
    timezone: str = Field("UTC", description="Where budget periods start at midnight (IANA name).")
    soft_threshold: float = Field(0.8, gt=0, le=1, description="Warn once per period past this share of a budget.")
    adaptive: bool = Field(True, description="Slow admission when the upstream says it is near its rate limit.")

    @model_validator(mode="after")
    def _known_timezone(self) -> LimitsConfig:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        return self


class ScopeSelector(Section):
    key: str | None = Field(None, description='A key name, or "*" for each caller separately; unset: all keys.')
    model: str | None = Field(None, description="A model name or glob (gpt-4o*); unset: all models.")

    @field_validator("model")
    @classmethod
    def _glob(cls, value: str | None) -> str | None:
        return None if value is None else check_glob(value)


class BudgetConfig(ScopeSelector):
    budget_usd: float | None = Field(None, ge=0)
    budget_tokens: int | None = Field(None, gt=0)
    budget_period: Period = "day"

    @model_validator(mode="after")
    def _has_limit(self) -> BudgetConfig:
        if self.budget_usd is None and self.budget_tokens is None:
            raise ValueError("set budget_usd or budget_tokens")
        return self


class RateLimitConfig(ScopeSelector):
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    concurrent: int | None = Field(None, gt=0)


class KeyConfig(LimitFields):
    name: str = Field(min_length=1)
    key: str | None = Field(None, min_length=1, description="The key itself (prefer key_env or key_sha256).")
    key_env: str | None = Field(None, min_length=1, description="Environment variable holding the key.")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 hex of the key.")
    admin: bool = Field(False, description="An operator's key: sees every key's objects and rows, may override "
                        "fixture modes per request.")

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        given = [n for n in ("key", "key_env", "key_sha256") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of key, key_env, key_sha256")
        return self


def check_glob(pattern: str) -> str:
    """A model name or fnmatch glob (`*`, `?`, `[...]`). An unclosed `[` is refused: fnmatch would
    silently match it as a literal character, which is never what was meant."""
    if pattern != pattern.strip():
        raise ValueError(f"model pattern {pattern!r} has leading or trailing spaces")
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "[":
            i += 1
            continue
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1
        end = pattern.find("]", j)
        if end == -1:
            raise ValueError(f"invalid glob {pattern!r}: the '[' at position {i} is never closed")
        i = end + 1
    return pattern


class RouteConfig(Section):
    """One `[[routes]]` entry: requests whose model matches go to this upstream (the first match wins)."""

    model: str = Field(min_length=1, description='A model name or fnmatch glob ("llama*", "gpt-4o*").')
    base_url: str = Field(min_length=1, description='"mock" (the embedded mock) or an OpenAI-compatible base URL.')
    api_key_env: str | None = Field(
        None, min_length=1, description="Environment variable holding this upstream's key (default: upstream's key on "
                    "upstream's own host, no key elsewhere).")
    name: str | None = Field(None, min_length=1, max_length=100,
                             description="How logs and the ledger's `upstream` column name it; default: scheme://host.")

    @field_validator("model")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_glob(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "mock":
            return value
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError('base_url must be "mock" or an http(s) URL such as http://127.0.0.1:11434/v1')
        return value


class PriceConfig(Section):
    input_per_mtok: Decimal = Field(ge=0, description="USD per million prompt tokens.")
    output_per_mtok: Decimal = Field(Decimal(0), ge=0, description="USD per million completion tokens.")
    cached_input_per_mtok: Decimal | None = Field(None, ge=0, description="USD per million cached prompt tokens.")


class Config(Section):
    """The whole file. Every section is optional."""

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    ledger: LedgerConfig = LedgerConfig()
    fixtures: FixturesConfig = FixturesConfig()
    limits: LimitsConfig = LimitsConfig()
    keys: list[KeyConfig] = []
    budgets: list[BudgetConfig] = []
    rate_limits: list[RateLimitConfig] = []
    prices: dict[str, PriceConfig] = {}
    routes: list[RouteConfig] = []
    aliases: dict[str, str] = Field(default_factory=dict, description="Model aliases: the name a client sends "
                                    "-> the model the gateway forwards (may itself be an alias).")
    mock: MockSettings = MockSettings()

    @field_validator("aliases")
    @classmethod
    def _no_alias_cycles(cls, aliases: dict[str, str]) -> dict[str, str]:
        for name, target in aliases.items():
            if not name or not target:
                raise ValueError("an alias and its target must be non-empty model names")
            chain = [name]
            while target in aliases:
                if target in chain:
                    raise ValueError("alias cycle: " + " -> ".join([*chain[chain.index(target):], target]))
                chain.append(target)
                target = aliases[target]
        return aliases

    def resolved_aliases(self) -> dict[str, str]:
        """Each alias mapped to the model its chain ends at (`a = "b"`, `b = "c"` gives a -> c, b -> c)."""
        resolved = {}
        for name, target in self.aliases.items():
            while target in self.aliases:
                target = self.aliases[target]
            resolved[name] = target
        return resolved

    def price_overrides(self) -> dict[str, PriceOverride]:
        """`[prices."model"]` tables as the price table takes them."""
        return {model: PriceOverride(p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok)
                for model, p in self.prices.items()}


def load_config(path: Path | None = None) -> Config:
    """Load `path`, or ./config.toml when present, else the built-in defaults."""
    if path is None:
        if not DEFAULT_PATH.is_file():
            return Config()
        path = DEFAULT_PATH
    return validate(Config, read_toml(path), str(path))


__all__ = ["Config", "ConfigError", "load_config"]
