"""The mock's one exception: anything a handler raises that the client should see as an error."""

from __future__ import annotations

from collections.abc import Mapping

from proxy.wire.errors import INVALID_REQUEST, APIError


class MockError(APIError):
    """An error answered in OpenAI's envelope with the status OpenAI would use (the envelope's fields
    and `response()` come from the shared `APIError`)."""

    type = INVALID_REQUEST

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
        message, param = readable(message), None if param is None else readable(param)
        super().__init__(message, param=param, code=code, headers=headers)
        self.status, self.type = status, type


def readable(text: str) -> str:
    """`text` as valid UTF-8: what a client sent in bytes that are not UTF-8 (decoded with surrogates)
    becomes U+FFFD, so echoing it in an answer can never fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _escaped(text) else "replace").decode("utf-8", "replace")
    return text


def _escaped(text: str) -> bool:
    """Every surrogate in `text` is a byte kept by `surrogateescape` (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def invalid(message: str, param: str | None = None, code: str | None = None) -> MockError:
    """A 400 `invalid_request_error`."""
    return MockError(400, message, param=param, code=code)
