"""A scripted test upstream: answers its n-th request with the n-th action (`answer`, `reset`, `hang`...)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

COMPLETION = {
    "id": "chatcmpl-ok", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "logprobs": None,
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}

Action = Callable[[web.Request, "Script"], Awaitable[web.StreamResponse]]


class Script:
    """An upstream that answers its n-th request with `actions[n]` (the last action repeats)."""

    def __init__(self, *actions: Action) -> None:
        self.actions = actions
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.release = asyncio.Event()  # what `hang` waits for; set when the test ends

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        action = self.actions[min(len(self.bodies), len(self.actions)) - 1]
        return await action(request, self)

    @property
    def calls(self) -> int:
        return len(self.bodies)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    if body is None:
        body = {"error": {"message": f"upstream says {status}", "type": "server_error", "param": None,
                          "code": None}}

    async def act(request: web.Request, script: Script) -> web.StreamResponse:
        return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                            headers=headers)

    return act


OK = answer(200, COMPLETION)


async def reset(request: web.Request, script: Script) -> web.StreamResponse:
    """Close the connection before any response header is sent."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response(text="never sent")


async def hang(request: web.Request, script: Script) -> web.StreamResponse:
    """No first byte until the test is over."""
    await script.release.wait()
    return web.Response(text="too late")
