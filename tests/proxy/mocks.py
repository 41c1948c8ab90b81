"""A standalone mock server as a gateway's upstream, with its request journal at hand.

    mock = MockUpstream.start(upstream)        # `upstream` is the conftest fixture
    gw = gateway(mock.url)
    mock.calls("/v1/chat/completions")         # what reached the mock, from its journal
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from mockserver.app import make_app as make_mock
from mockserver.settings import MockSettings
from tests.servers import ServerThread

from .conftest import fetch


@dataclass
class MockUpstream:
    server: ServerThread

    @classmethod
    def start(cls, upstream: Callable[[web.Application], ServerThread], *,
              sleep: Callable[[float], Awaitable[object]] = asyncio.sleep, **settings: Any) -> MockUpstream:
        """`sleep` paces the mock's answers (`x-mock-latency`): `servers.Held` makes a stream wait for the test."""
        return cls(upstream(make_mock(MockSettings(**settings), sleep=sleep)))

    @property
    def url(self) -> str:
        return self.server.url + "/v1"

    def journal(self) -> list[dict[str, Any]]:
        return list(json.loads(fetch("GET", self.server.url + "/_mock/journal", key=None).body)["data"])

    def calls(self, path: str, method: str | None = None) -> list[dict[str, Any]]:
        """The journalled requests to `path` (and `method`), oldest first."""
        return [e for e in self.journal() if e["path"] == path and (method is None or e["method"] == method)]


def add_rule(mock: MockUpstream, rule: dict[str, Any]) -> None:
    """Script the mock (`POST /_mock/rules`)."""
    reply = fetch("POST", mock.server.url + "/_mock/rules", key=None, json=rule)
    assert reply.status == 200, reply.body
