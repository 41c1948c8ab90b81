"""config.toml: one pydantic model per section, validated on load.

A mistake is reported as one `ConfigError` naming the file, the dotted key and the reason; the CLI
prints it and exits 2.
"""

from __future__ import annotations

import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mockserver.settings import MockSettings

from .wire.configfile import ConfigError, read_toml, resolve_paths, validate
from .wire.pricing import PriceOverride

DEFAULT_PATH = Path("config.toml")
# (section, key) of every file or folder a config file names: relative ones resolve against its folder
PATH_KEYS = (("ledger", "path"), ("fixtures", "dir"), ("cache", "path"))
MOCK_PATH_KEYS = (("mock", "fixtures"), ("mock", "state_dir"), ("mock", "rules_file"))

Period = Literal["day", "week", "month", "total"]
FixtureMode = Literal["live", "record", "replay", "record-missing"]
FIXTURE_MODES: tuple[FixtureMode, ...] = get_args(FixtureMode)  # the one list of fixtures modes


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(4141, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    allow_remote: bool = Field(False, description="Allow binding a non-loopback address with no [[keys]].")
    admin_key_env: str | None = Field(None, description="Environment variable holding an operator's key (named "
                                      "`admin`): with [[keys]], it sees every key's rows, objects and budgets.")
    metrics_public: bool = Field(False, description="With [[keys]], serve /metrics to callers without a key "
                                 "(for a scraper); /metrics always answers anyone when there are no [[keys]].")
    header_timeout_s: float = Field(30.0, gt=0, description="A request's line and headers must arrive within this "
                                    "(slowloris); idle keep-alive connections are not affected.")
    max_connections: int = Field(1024, gt=0, description="Client connections open at once; past it, new ones get a "
                                 "503 and are closed until one ends.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="On SIGTERM/SIGINT, how long requests in flight may "
                                    "finish (in total) before they are cut.")
    max_json_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest request body that is not a file "
                                "upload (JSON, text...), after decoding; larger ones get 413 before being read.")
    max_upload_bytes: int = Field(513 * 1024 * 1024, gt=0, description="Largest multipart/form-data or "
                                  "application/octet-stream body (OpenAI's 512 MB file limit plus multipart framing).")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest wait for the next piece of a request body "
                                  "(an idle timeout, not a total one); then 408.")
    workers: int = Field(1, ge=1, le=256, description="Gateway processes on the one port (SO_REUSEPORT), "
                         "supervised; with more than 1, budgets and rate limits need [state] url.")


def check_base_url(value: str) -> str:
    """`"mock"` or an http(s) URL with a host; a mistake gets a hint ("did you mean mock?", a missing
    scheme)."""
    if value == "mock":
        return value
    if value.strip().lower() in ("mock", "mok", "moc", "mocks", "mock:", "embedded"):
        raise ValueError('not an upstream: did you mean "mock" (the embedded mock server)?')
    parsed = urlsplit(value)
    if not parsed.scheme or "://" not in value:
        if "." in value.split("/")[0] or value.startswith(("localhost", "127.")):
            shown = value.rsplit("@", 1)[-1]  # never echo credentials
            raise ValueError(f"the URL has no scheme: did you mean https://{shown}?")
        raise ValueError('not "mock" or an http(s) URL such as https://api.openai.com/v1')
    if parsed.scheme not in ("http", "https"):
        raise ValueError("the upstream must be an http(s) URL such as https://api.openai.com/v1")
    if not parsed.hostname:
        raise ValueError("the URL names no host: use one such as http://127.0.0.1:8000/v1")
    return value


def lacks_api_version(base_url: str) -> bool:
    """True for a URL whose path names no API version (`/v1`, `/v1beta`, `/openai/v1`...): requests would
    go to `HOST/chat/completions`, which OpenAI-compatible servers do not serve."""
    if base_url == "mock":
        return False
    return not any(part[:1] == "v" and part[1:2].isdigit() for part in urlsplit(base_url).path.split("/"))


class UpstreamConfig(Section):
    base_url: str = Field("mock", description='"mock" (the embedded mock server) or a URL ending in /v1.')
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the upstream key.")
    require_key: bool = Field(False, description="Refuse to start when a real upstream's key variable is unset "
                              "(default: a warning).")
    max_retries: int = Field(2, ge=0, le=10, description="Retries after the first attempt.")
    timeout_s: float = Field(600.0, gt=0, description="Overall deadline for one request, retries included.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Deadline for opening a connection.")
    first_byte_timeout_s: float = Field(120.0, gt=0, description="Deadline for the upstream's response headers.")
    pass_through: bool = Field(False, description="Forward the client's own bearer token (and its OpenAI-Organization "
                               "and OpenAI-Project headers) upstream.")
    organization: str | None = Field(None, min_length=1, description="OpenAI-Organization header sent with the "
                                     "upstream key (clients cannot set it, except with pass_through).")
    project: str | None = Field(None, min_length=1, description="OpenAI-Project header sent with the upstream key "
                                "(clients cannot set it, except with pass_through).")
    pool_size: int = Field(256, gt=0, description="Connections to the upstreams at once; past it, requests "
                           "wait for one (within their timeout_s).")
    forward_headers: list[str] = Field(default_factory=list, description="Client headers forwarded upstream besides "
                                       "the built-in list: names or globs (x-trace-id, x-team-*).")

    @field_validator("forward_headers")
    @classmethod
    def _forwardable(cls, names: list[str]) -> list[str]:
        from .upstream import never_forwarded

        for name in names:
            if never_forwarded(name):
                raise ValueError(f"forward_headers: {name!r} would forward credentials, the upstream "
                                 "identity or connection headers; the gateway never forwards those")
        return [name.lower() for name in names]

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_base_url(value)


class LedgerConfig(Section):
    enabled: bool = Field(True, description="Write one row per request to the ledger.")
    path: str = Field("oaigate.db", description="SQLite file for the spend ledger.")
    url: str | None = Field(None, description="A PostgreSQL ledger instead of the file: "
                            '"postgresql://USER@HOST:PORT/DB" (several gateways may share it).')
    password_env: str | None = Field(None, description="Environment variable holding the PostgreSQL password "
                                     "(else the URL's, PGPASSWORD or ~/.pgpass).")
    log_bodies: bool = Field(False, description="Store request and response bodies (truncated).")
    synchronous: Literal["normal", "full"] = Field(
        "normal", description='"normal": a committed row survives the process being killed; "full": also '
        "power loss (one fsync per commit).")
    durable_wait_s: float = Field(
        1.0, ge=0, description="Longest a complete answer waits for its row to be committed (and, with [state] "
        "url, for its budget settle in Redis) before its last bytes go out (then it goes on; a missed commit is "
        "counted in /healthz); 0: do not wait.")

    @field_validator("path")
    @classmethod
    def _file(cls, value: str) -> str:
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):  # never taken for a file
            raise ValueError("must be a file, or a PostgreSQL URL: postgresql://USER@HOST:PORT/DB")
        return value

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a PostgreSQL URL: postgresql://USER@HOST:PORT/DB")
        return value


class StateConfig(Section):
    url: str | None = Field(None, description='Shared state: "redis://HOST:PORT/DB" (or rediss://, unix://). '
                            "Unset: budgets and limits live in this process.")
    password_env: str | None = Field(None, min_length=1, description="Environment variable holding the Redis "
                                     "password (instead of one in the URL).")
    prefix: str = Field("oaigate:", min_length=1, description="Prefix of every key the gateway writes in Redis.")
    reservation_ttl_s: float | None = Field(None, gt=0, description="How long a reservation held by a process "
                                            "that died stays counted; default: upstream.timeout_s + 60.")
    on_unavailable: Literal["closed", "local"] = Field(
        "closed", description='Redis unreachable or slow: "closed" answers budgeted or rate-limited requests 503; '
        '"local": each process enforces its own limits until Redis is back.')
    timeout_s: float = Field(1.0, gt=0, le=30, description="Longest wait for one call to Redis (and for a free "
                             "connection of the pool); past it Redis counts as unavailable.")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("the state URL must be redis://HOST:PORT/DB, rediss://... or unix://PATH")
        return value


class MatchConfig(Section):
    ignore_fields: list[str] = Field(default_factory=list, description="Body fields left out of matching here.")


class FixturesConfig(Section):
    mode: FixtureMode = "live"
    dir: str = Field("fixtures", description="Folder holding recorded fixtures (one subfolder per cassette).")
    cassette: str = Field("default", description="Cassette used when a request names none.")
    ignore_fields: list[str] = Field(["user", "metadata"], description="Body fields left out of matching.")
    match: dict[str, MatchConfig] = Field(default_factory=dict, description="Per-path matching, by API path.")
    redact_fields: list[str] = Field(default_factory=list, description="Body fields never written to disk.")
    repeat: Literal["last", "fail"] = Field("last", description="After the recorded answers of a request run out.")
    miss_status: int = Field(404, ge=400, le=599, description="Status of a replay miss.")
    pace: bool = Field(False, description="Replay streams with their recorded timing (else full speed).")
    allow_client_override: bool | None = Field(
        None, description="Honour a request's x-oaigate-fixtures / x-oaigate-cassette headers (admin keys always "
        'may). Unset: only when every upstream is "mock" (the development setup).')
    record_errors: bool = Field(False, description="Record answers whose status is not 2xx too.")
    max_bytes: int = Field(1024 ** 3, ge=0, description="Quota of the fixtures folder; past it recording stops "
                           "(requests are still answered).")


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
    batch_poll_s: float = Field(60.0, gt=0, description="How often open batches on a budgeted key are looked up "
                                "upstream to settle their reservation when they end.")
    check_context_window: bool = Field(True, description="Answer OpenAI's 400 context_length_exceeded, before any "
                                       "upstream call, to a request whose prompt plus requested output exceeds "
                                       "the model's context window.")
    context_windows: dict[str, int] = Field(default_factory=dict, description="Context windows in tokens by model "
                                            "name, over the maintained model table's.")
    models_ttl_s: float = Field(600.0, gt=0, description="How long an upstream's /v1/models list is kept (to tell "
                                "a model it does not serve, 404, from one with no known price).")

    @field_validator("context_windows")
    @classmethod
    def _positive_windows(cls, windows: dict[str, int]) -> dict[str, int]:
        for model, window in windows.items():
            if window <= 0:
                raise ValueError(f"context_windows: {model!r} must be a positive number of tokens")
        return windows

    @model_validator(mode="after")
    def _known_timezone(self) -> LimitsConfig:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        return self


CACHED_ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]


class CacheConfig(Section):
    """`[cache]`: identical requests answered from a stored answer instead of paying twice."""

    enabled: bool = Field(False, description="Answer an identical request from the response cache.")
    ttl_s: float = Field(3600.0, gt=0, description="How long an answer is kept.")
    max_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Size of the store; past it the oldest answers go.")
    scope: Literal["key", "global"] = Field("key", description='"key": a key only ever gets its own cached '
                                            'answers; "global": every key shares them.')
    include: list[str] = Field(default_factory=lambda: list(CACHED_ENDPOINTS),
                               description="Endpoints cached (paths or globs).")
    deterministic_only: bool = Field(True, description="Cache only requests with temperature 0 or a seed "
                                     "(embeddings always).")
    path: str | None = Field(None, description="SQLite file of the cache; default: next to the ledger "
                             "(oaigate.db -> oaigate.cache.db).")

    @field_validator("include")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            check_glob(path)
            if not path.startswith("/v1/"):
                raise ValueError(f"include: {path!r} is not an API path such as /v1/chat/completions")
        return paths


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
        return check_base_url(value)


FallbackKind = Literal["429", "5xx", "timeout", "connection", "context_length_exceeded", "content_filter"]


class FallbackConfig(Section):
    """One `[[fallbacks]]` entry: when `model` still fails after its retries, try each of `to` in turn."""

    model: str = Field(min_length=1, description="A model name or glob, matched after aliases (the first "
                       "matching entry applies).")
    to: list[str] = Field(min_length=1, description="Models tried in order; each is routed by [[routes]] and "
                          "admitted (budgets, rate limits) as its own request would be.")
    on: list[FallbackKind] = Field(["429", "5xx", "timeout", "connection"], min_length=1,
                                   description="Failures that fall back: 429, 5xx, timeout, connection, "
                                   "context_length_exceeded, content_filter.")

    @field_validator("model")
    @classmethod
    def _glob(cls, value: str) -> str:
        return check_glob(value)

    @field_validator("to")
    @classmethod
    def _names(cls, models: list[str]) -> list[str]:
        if any(not m.strip() for m in models):
            raise ValueError("fallback models must be non-empty model names")
        return models


class PriceConfig(Section):
    input_per_mtok: Decimal = Field(ge=0, description="USD per million prompt tokens.")
    output_per_mtok: Decimal = Field(Decimal(0), ge=0, description="USD per million completion tokens.")
    cached_input_per_mtok: Decimal | None = Field(None, ge=0, description="USD per million cached prompt tokens.")


class Config(Section):
    """The whole file. Every section is optional."""

    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    ledger: LedgerConfig = LedgerConfig()
    state: StateConfig = StateConfig()
    fixtures: FixturesConfig = FixturesConfig()
    limits: LimitsConfig = LimitsConfig()
    keys: list[KeyConfig] = []
    budgets: list[BudgetConfig] = []
    rate_limits: list[RateLimitConfig] = []
    prices: dict[str, PriceConfig] = {}
    routes: list[RouteConfig] = []
    fallbacks: list[FallbackConfig] = []
    cache: CacheConfig = CacheConfig()
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
    data = read_toml(path)
    base = path.parent.absolute()
    resolve_paths(data, base, PATH_KEYS + MOCK_PATH_KEYS)
    return validate(Config, data, str(path))


__all__ = ["Config", "ConfigError", "load_config"]
