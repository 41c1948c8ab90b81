"""`oaigate mock --fixtures DIR`: answer from recorded fixtures first, generate everything else.

DIR is a fixtures folder as the gateway writes it: cassette subfolders (and fixture files directly in
DIR, if any). A request is looked up by the same key the gateway's replay uses, in every cassette
in name order (or only in the one named by `x-oaigate-cassette`); a hit answers with the recorded status, headers
and body, a stream with its recorded bytes, and `x-oaigate-fixture: hit`. A miss falls through to
the generated answer. Repeats replay in recorded order, then the last one again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.wire.fixtures import (
    CASSETTE_HEADER,
    FIXTURE_HEADER,
    Cassette,
    Fixture,
    MatchPolicy,
    cassette_folders,
    request_key,
)
from proxy.wire.fixtures.format import decode_body
from proxy.wire.fixtures.matching import DEFAULT_IGNORED, normalized_body, redact_query

log = logging.getLogger("oaigate.mock")

_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection"})


class Recorded:
    """Every cassette under a folder, loaded once.

    Each fixture names the body fields its recording left out of matching (the gateway's
    `ignore_fields` and `redact_fields` then), so a request is keyed the way each one was."""

    def __init__(self, root: Path) -> None:
        self.root = root
        folders = cassette_folders(root)
        self.cassettes = {("." if f == root else f.name): Cassette(f, f.name) for f in folders}
        self.errors = [e for c in self.cassettes.values() for e in c.errors]
        ignored = {f.request.ignored or DEFAULT_IGNORED for c in self.cassettes.values() for _, f in c.fixtures()}
        self.policies = [MatchPolicy(tuple(i)) for i in sorted(ignored)]

    def __len__(self) -> int:
        return sum(len(c) for c in self.cassettes.values())

    def take(self, method: str, path: str, query: str, body: bytes, content_type: str,
             cassette: str | None) -> Fixture | None:
        """The recorded answer to this request, or None."""
        normalized, query = normalized_body(body, content_type), redact_query(query)
        keys = [request_key(method, path, query, normalized, policy) for policy in self.policies]
        names = [cassette] if cassette else list(self.cassettes)
        for name in names:
            found = self.cassettes.get(name)
            for key in keys:
                if found is not None and found.has(key):
                    return found.take(key)
        return None


RECORDED = web.AppKey("recorded", Recorded)


def setup(app: web.Application, folder: str) -> None:
    """Load `folder` at startup (off the event loop) and answer from it first."""

    async def load(app: web.Application) -> None:
        recorded = await asyncio.to_thread(Recorded, Path(folder))
        for error in recorded.errors:
            log.warning("skipping fixture %s", error)
        app[RECORDED] = recorded

    app.on_startup.append(load)
    app.middlewares.append(replay_middleware)


@web.middleware
async def replay_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    recorded = request.app.get(RECORDED)
    if recorded is None or not request.path.startswith("/v1/"):
        return await handler(request)
    body = await request.read()
    fixture = recorded.take(request.method, request.path, request.query_string, body,
                            request.headers.get("Content-Type", ""), request.headers.get(CASSETTE_HEADER))
    if fixture is None:
        return await handler(request)
    return await answer(request, fixture)


async def answer(request: web.Request, fixture: Fixture) -> web.StreamResponse:
    """Send a recorded response: a body at once, or a stream's bytes exactly as recorded."""
    recorded = fixture.response
    headers = {k: v for k, v in recorded.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers[FIXTURE_HEADER] = "hit"
    if recorded.chunks is None:
        return web.Response(status=recorded.status, body=decode_body(recorded.body or {"text": ""}), headers=headers)
    response = web.StreamResponse(status=recorded.status, headers=headers)
    await response.prepare(request)
    for _, data in recorded.chunk_bytes():
        await response.write(data)
    await response.write_eof()
    return response
