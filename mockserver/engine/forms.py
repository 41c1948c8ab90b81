"""Reading multipart/form-data bodies (image edits, audio uploads, upload parts) with OpenAI's errors:
known text fields and file fields only, every part bounded."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from ..errors import MockError, invalid, readable

FIELD_BYTES = 64 * 1024


@dataclass(slots=True)
class Form:
    """Text fields (a repeated one keeps every value) and uploaded files by field name."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)

    def text(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def require(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        return value

    def file(self, name: str) -> tuple[str, bytes]:
        found = self.files.get(name)
        if not found:
            raise invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        return found[0]


async def _read(part: BodyPartReader, limit: int) -> bytes | None:
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def read_form(request: web.Request, file_fields: set[str], text_fields: set[str], limit: int) -> Form:
    """The form, or OpenAI's 400 for another content type, an unknown field or a malformed body; a file
    beyond `limit` bytes is 413."""
    if request.content_type != "multipart/form-data":
        raise invalid(f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data.")
    form = Form()
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise invalid("Invalid multipart/form-data body: nested multipart parts are not supported.")
            name = part.name or ""
            if name in file_fields:
                if part.filename is None:
                    raise invalid(f"Invalid '{name}': expected a file upload, but got a text field.", name,
                                  "invalid_type")
                data = await _read(part, limit)
                if data is None:
                    raise MockError(413, f"File too large: the limit is {limit} bytes.", param=name,
                                    code="file_too_large")
                form.files.setdefault(name, []).append((readable(part.filename), data))
            elif name in text_fields:
                data = await _read(part, FIELD_BYTES)
                if data is None:
                    raise invalid(f"Invalid '{name}': value too long.", name, "invalid_value")
                form.fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
            else:
                raise invalid(f"Unrecognized request argument supplied: {readable(name)[:64]}")
    except (ValueError, HttpProcessingError, RuntimeError, BadContentDispositionHeader, BadContentDispositionParam):
        raise invalid("Could not parse the multipart/form-data body of your request.") from None
    return form
