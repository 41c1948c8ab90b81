"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`.

Both servers build every error a client sees through `error_body` / `error_response`, so the shape
is defined once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .jsoncodec import dumps

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


def error_body(
    message: str,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The envelope as a dict; `extra` fields are added to the error object after the standard four."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def error_response(
    status: int,
    message: str,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An aiohttp JSON response carrying the envelope."""
    return web.Response(
        status=status,
        body=dumps(error_body(message, type, param, code, **extra)),
        content_type="application/json",
        headers=headers,
    )
