"""The mock's one exception: anything a handler raises that the client should see as an error."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from proxy.wire.errors import INVALID_REQUEST, error_response


class MockError(Exception):
    """An error answered in OpenAI's envelope with the status OpenAI would use."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> web.Response:
        """The envelope response."""
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> MockError:
    """A 400 `invalid_request_error`."""
    return MockError(400, message, param=param, code=code)
