"""models: which models an upstream serves, from its `/v1/models` list (fetched once, kept `ttl_s`).

Used where the gateway would refuse a model it cannot price on a budgeted key: a model the upstream
does not serve at all is answered as the upstream would answer it (404 `model_not_found`), and only a
model it serves but oaigate cannot price gets the hint to add a price. When the list cannot be had
(an upstream without `/v1/models`, an error), nothing is concluded: the price hint stands.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from ..clock import Clock
from ..errors import ModelNotFound
from ..exchange import Exchange
from ..upstream import Upstream
from ..wire.jsoncodec import JSONDecodeError, loads
from .forward import upstream_headers

log = logging.getLogger("oaigate.models")
FETCH_TIMEOUT_S = 10.0


def model_not_found(model: str) -> ModelNotFound:
    """OpenAI's answer for a model it does not serve (message, type and code as it sends them)."""
    return ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.")


class UpstreamModels:
    """The model ids each upstream lists, per upstream and key, refreshed after `ttl_s`; concurrent
    lookups of one upstream share one fetch."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock, ttl_s: float = 600.0,
                 pass_through: bool = False) -> None:
        self.session, self.clock, self.ttl_s, self.pass_through = session, clock, ttl_s, pass_through
        self._lists: dict[tuple[str, str | None], tuple[float, frozenset[str] | None]] = {}
        self._fetching: dict[tuple[str, str | None], asyncio.Task[frozenset[str] | None]] = {}
        self.fetches = 0

    async def serves(self, ex: Exchange, upstream: Upstream, model: str) -> bool | None:
        """Whether `upstream` lists `model`; None when its list cannot be had."""
        key = (upstream.base_url, ex.client_token if self.pass_through else upstream.api_key)
        now = self.clock.monotonic()
        cached = self._lists.get(key)
        if cached is None or now >= cached[0]:
            task = self._fetching.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._fetch(ex, upstream))
                self._fetching[key] = task
                task.add_done_callback(lambda _: self._fetching.pop(key, None))
            found = await asyncio.shield(task)
            cached = self._lists[key] = (self.clock.monotonic() + self.ttl_s, found)
        models = cached[1]
        return None if models is None else model in models

    async def _fetch(self, ex: Exchange, upstream: Upstream) -> frozenset[str] | None:
        self.fetches += 1
        headers = upstream_headers(ex, upstream, self.pass_through)
        for name in ("Content-Type", "Content-Encoding", "Content-Length"):
            headers.popall(name, None)
        try:
            async with self.session.get(upstream.base_url + "/models", headers=headers, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)) as response:
                if response.status != 200:
                    log.info("%s/models answered %d: its models are not known", upstream.name, response.status)
                    return None
                body = loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, JSONDecodeError) as exc:
            log.info("could not list the models of %s: %s", upstream.name, type(exc).__name__)
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return None
        return frozenset(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))
