"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`.

Both servers build every error a client sees through `error_body` / `error_response`, so the shape
is defined once; `APIError` is the one base of the exceptions that carry it (the gateway's
`proxy.errors.GatewayError`, the mock's `mockserver.errors.MockError`).
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


class APIError(Exception):
    """An error a client gets in the envelope: `status`, `type` and `code` as class defaults a subclass
    sets (or an instance overrides), `message`, `param`, `headers` and any `extra` envelope fields."""

    status: int = 500
    type: str = SERVER_ERROR
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message, self.param, self.headers, self.extra = message, param, dict(headers or {}), extra
        if code is not None:
            self.code = code

    def response(self) -> web.Response:
        """The envelope response, with this error's status and headers."""
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers,
                              **self.extra)
