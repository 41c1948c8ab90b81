"""The gateway's error tree. Each error a client can see maps to OpenAI's envelope here, once.

    GatewayError                 any error the gateway answers itself
    ├── AuthenticationError      401 missing or unknown key
    ├── InvalidRequest           400 malformed input the gateway must read (JSON it needs to parse)
    ├── NotFound                 404 an object this key may not see (another key's, or unknown): `owners`
    ├── RequestTimeout           408 the client stopped sending its body
    ├── PayloadTooLarge          413 a body over `[server] max_json_bytes` / `max_upload_bytes`
    ├── UnsupportedEncoding      415 a `Content-Encoding` the gateway cannot decode
    └── UpstreamError            502 the upstream could not be reached or broke the connection
        └── UpstreamTimeout      504 the upstream did not answer in time

`ConfigError` (bad config.toml) is raised before serving and never reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .wire.configfile import ConfigError
from .wire.errors import INVALID_REQUEST, SERVER_ERROR, error_response


class GatewayError(Exception):
    """An error answered in OpenAI's envelope; subclasses set status, type and code."""

    status = 500
    type = SERVER_ERROR
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message, self.param, self.headers, self.extra = message, param, dict(headers or {}), extra
        if code is not None:
            self.code = code

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers,
                              **self.extra)


class AuthenticationError(GatewayError):
    status, type, code = 401, INVALID_REQUEST, "invalid_api_key"


class InvalidRequest(GatewayError):
    status, type = 400, INVALID_REQUEST
    code: str | None = None


class NotFound(GatewayError):
    """OpenAI's answer for an object that is not there; the gateway's for one that is not the caller's."""

    status, type = 404, INVALID_REQUEST
    code: str | None = None


class RequestTimeout(GatewayError):
    status, type, code = 408, INVALID_REQUEST, "request_timeout"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, INVALID_REQUEST, "request_too_large"


class UnsupportedEncoding(GatewayError):
    status, type, code = 415, INVALID_REQUEST, "unsupported_content_encoding"


class UpstreamError(GatewayError):
    status, type, code = 502, SERVER_ERROR, "upstream_error"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


__all__ = ["AuthenticationError", "ConfigError", "GatewayError", "InvalidRequest", "NotFound", "PayloadTooLarge",
           "RequestTimeout", "UnsupportedEncoding", "UpstreamError", "UpstreamTimeout"]
