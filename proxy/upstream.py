"""Where requests go and which headers may travel there: shared by the core, the stages and the CLI.

`Upstream` is one configured upstream (`[upstream]`, a `[[routes]]` entry); `Target` is an upstream
with the adaptive governor pacing admission to it, as the route stage sets it on `ex.target`. The
header sets decide what crosses the gateway in each direction (`forward` applies them; the config
refuses a `forward_headers` entry that `never_forwarded` matches).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .exchange import Exchange

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
})
NOT_UPSTREAM = HOP_BY_HOP | {"authorization", "api-key", "accept-encoding", "cookie"}
NOT_DOWNSTREAM = HOP_BY_HOP | {"set-cookie"}  # content-encoding stays: an upstream may compress anyway


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where requests go: `base_url` ends with the API version path (e.g. https://api.openai.com/v1)."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log or a traceback
    organization: str | None = None  # OpenAI-Organization / OpenAI-Project sent with `api_key`
    project: str | None = None
    forward_headers: tuple[str, ...] = ()  # client headers forwarded besides FORWARDED_HEADERS (names, globs)


class Governor(Protocol):
    """What the gateway asks of an upstream's adaptive governor (`stages.ratelimit.UpstreamGovernor`)."""

    def key(self, ex: Exchange) -> object: ...

    def observe(self, status: int, headers: Mapping[str, str], now: float, key: object = None) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    """An upstream, and the adaptive governor pacing admission to it (None when adaptive is off)."""

    upstream: Upstream
    governor: Governor | None = None


# Client headers that go upstream (names or globs, lower case): what the OpenAI SDKs send, and the mock's
# test headers. Anything else stays at the gateway unless `[upstream] forward_headers` adds it.
FORWARDED_HEADERS = (
    "content-type", "content-encoding", "accept", "user-agent", "openai-beta", "idempotency-key",
    "x-client-request-id", "x-stainless-*", "x-mock-*",
)
IDENTITY = frozenset({"openai-organization", "openai-project"})  # whose org/project the upstream key bills
NEVER_FORWARDED = NOT_UPSTREAM | IDENTITY | {"set-cookie", "x-api-key", "forwarded"}


def never_forwarded(pattern: str) -> bool:
    """True when a `forward_headers` entry could match a credential, the upstream identity, a
    hop-by-hop header or one of the gateway's own `x-oaigate-*` headers."""
    pattern = pattern.strip().lower()
    return not pattern or any(fnmatch.fnmatchcase(name, pattern)
                              for name in (*NEVER_FORWARDED, "x-oaigate-fixtures", "x-oaigate-cache"))
