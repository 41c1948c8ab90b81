"""route: model aliases, and which upstream serves a request.

An alias (`[aliases] fast = "gpt-4o-mini"`) is rewritten in the JSON body before any other stage
looks at the model, so estimates, budgets, rate limits, fixtures and the upstream all see the real
model; `ex.model_alias` keeps the name the client sent. Then the first `[[routes]]` entry whose
model name or glob matches picks the upstream; no model (multipart, GET, files, batches) or no
match means `[upstream]`. Glob results are cached per model name, so the hot path is a dict lookup.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import Config
from ..exchange import Exchange
from ..upstream import Target, Upstream
from ..wire.jsoncodec import dumps
from . import Stage

MOCK_KEY = "oaigate-embedded-mock"
CACHE_SIZE = 1024  # distinct model names remembered; past it the cache starts over


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The configured upstreams: the default, and each route's pattern with its upstream."""

    default: Upstream
    routes: tuple[tuple[str, Upstream], ...] = ()

    @property
    def distinct(self) -> list[Upstream]:
        """Each upstream once, the default first."""
        return list(dict.fromkeys([self.default, *(u for _, u in self.routes)]))


def display_name(url: str) -> str:
    """An upstream as logs, the ledger and error messages show it: no credentials, no path."""
    parsed = urlsplit(url)
    return f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}"


def upstreams_from_config(config: Config, mock_url: str | None,
                          environ: Mapping[str, str] = os.environ) -> Upstreams:
    """`[upstream]` and each `[[routes]]` entry as an `Upstream`, keys read from the environment.

    `mock_url` is the embedded mock's base URL (needed when any of them says "mock"). Entries with the
    same URL, key and name share one `Upstream`. A URL with credentials in it (`http://user:pass@host`)
    authenticates with those (HTTP basic auth), and no bearer key is added to it."""
    def build(base_url: str, key_env: str | None, name: str | None) -> Upstream:
        # [upstream]'s organization and project go wherever [upstream]'s own key goes, nowhere else
        same_host = base_url == up.base_url or display_name(base_url) == display_name(up.base_url)
        ours = same_host and key_env in (None, up.api_key_env)
        identity = dict(organization=up.organization, project=up.project) if ours else {}
        if base_url == "mock":
            assert mock_url is not None, "the embedded mock is not running"
            return Upstream(name or "mock", mock_url, MOCK_KEY, **identity, forward_headers=forwarded)
        if key_env is None:  # a route that names no key gets [upstream]'s only on [upstream]'s own host
            key_env = config.upstream.api_key_env if same_host else None
        key = None if urlsplit(base_url).username is not None or key_env is None else environ.get(key_env) or None
        return Upstream(name or display_name(base_url), base_url.rstrip("/"), key, **identity,
                        forward_headers=forwarded)

    up = config.upstream
    forwarded = tuple(up.forward_headers)
    return Upstreams(build(up.base_url, up.api_key_env, None),
                     tuple((r.model, build(r.base_url, r.api_key_env, r.name))
                           for r in config.routes))


def uses_mock(config: Config) -> bool:
    return config.upstream.base_url == "mock" or any(r.base_url == "mock" for r in config.routes)


class Route(Stage):
    """Rewrites an alias to its model, then sets `ex.target` to the upstream for that model."""

    def __init__(self, aliases: Mapping[str, str], routes: Sequence[tuple[str, Target]], default: Target) -> None:
        self.aliases, self.routes, self.default = dict(aliases), list(routes), default
        self._cache: dict[str, Target] = {}

    def select(self, model: str | None) -> Target:
        """The first route matching `model` (exact name or glob), else the default."""
        if model is None or not self.routes:
            return self.default
        target = self._cache.get(model)
        if target is None:
            target = next((t for pattern, t in self.routes if fnmatch.fnmatchcase(model, pattern)), self.default)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[model] = target
        return target

    async def request(self, ex: Exchange) -> None:
        model = ex.model
        if model is not None and self.aliases:
            real = self.aliases.get(model)
            if real is not None and ex.json is not None:
                ex.model_alias, ex.model = model, real
                ex.json = {**ex.json, "model": real}
                ex.body = dumps(ex.json)
        ex.target = self.select(ex.model)


__all__ = ["Route", "Target", "Upstreams", "display_name", "upstreams_from_config", "uses_mock"]
