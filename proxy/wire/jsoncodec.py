"""JSON encoding and decoding for bodies on the wire, and the canonical form used for hashing.

orjson is used because request parsing and response building sit on the hot path of both servers
(see benchmarks/json_codec.py). It also rejects what OpenAI rejects: NaN, Infinity, invalid UTF-8.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


class JSONDepthError(ValueError):
    """A value nested deeper than the writer allows (orjson writes at most 254 levels, though it reads
    up to 1024): the gateway cannot re-serialize such a body, and says so with a 400."""

    def __init__(self) -> None:
        super().__init__("Invalid request body: arrays and objects are nested too deeply for the gateway "
                         "to process.")


def loads(data: bytes | str) -> Any:
    """Parse a JSON document; raises `JSONDecodeError` on anything that is not strict JSON."""
    return orjson.loads(data)


def dumps(obj: Any) -> bytes:
    """Serialize compactly, keys in insertion order (the order OpenAI's responses use).
    Raises `JSONDepthError` for a value nested too deeply to write."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:
        raise _depth_error(exc) from exc


def _depth_error(exc: orjson.JSONEncodeError) -> Exception:
    return JSONDepthError() if "recursion" in str(exc).lower() else exc


def _normalize(obj: Any) -> Any:
    """Integral floats become ints so `1.0` and `1` canonicalize alike."""
    if isinstance(obj, float) and obj.is_integer() and abs(obj) < 2**53:
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _normalize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    return obj


def canonical(obj: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no whitespace, normalized numbers.
    Raises `JSONDepthError` for a value nested too deeply to write."""
    try:
        return orjson.dumps(_normalize(obj), option=orjson.OPT_SORT_KEYS)
    except RecursionError as exc:
        raise JSONDepthError() from exc
    except orjson.JSONEncodeError as exc:
        raise _depth_error(exc) from exc


def digest(*parts: Any) -> bytes:
    """SHA-256 over the canonical form of each part: stable across processes and machines."""
    h = hashlib.sha256()
    for part in parts:
        data = canonical(part)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()
