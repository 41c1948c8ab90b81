"""Validate response bodies and SSE streams against OpenAI's published OpenAPI description.

Tests-only helper. The description (``openai-openapi.yaml``, OpenAPI 3.1.0, ~3 MB) is *not*
part of this repository: it is read from ``../shared/openapi/`` beside the checkout (override
with the ``OAIGATE_OPENAPI_SPEC`` environment variable). Tests that use this module must be
marked with :data:`requires_spec` so they skip cleanly on machines without the file.

API::

    from tests.openapi import requires_spec, validate, validate_sse_events

    @requires_spec
    def test_something():
        validate("CreateChatCompletionResponse", body)            # AssertionError if invalid
        chunks = validate_sse_events("CreateChatCompletionStreamResponse", raw_sse_bytes)

How the spec is interpreted
---------------------------
* Each ``validate(component, ...)`` checks against ``#/components/schemas/<component>`` with a
  JSON Schema draft 2020-12 validator. The whole description is registered as one
  ``referencing`` resource, so every ``$ref: '#/components/schemas/X'`` resolves.
* The YAML is parsed once per process (``yaml.CSafeLoader`` when libyaml is available: ~1.5 s,
  versus ~7 s with the pure-Python loader) and validators are cached per component.
* OpenAPI 3.0 leftovers are rewritten on load (on a private copy; the file is never touched):

  - ``nullable: true`` -> the schema also accepts ``null``: ``"null"`` is added to ``type``
    (and ``None`` to ``enum``) for plain typed schemas; schemas using ``$ref``/``allOf``/
    ``anyOf``/``oneOf`` or without ``type`` are wrapped as ``anyOf: [<schema>, {type: null}]``.
    An ``allOf`` member that is nothing but ``{nullable: true}`` makes its parent nullable
    (the spec uses ``allOf: [{$ref: X}, {nullable: true}]`` for nullable references).
  - draft 2019-09 ``$recursiveAnchor``/``$recursiveRef: '#'`` (CompoundFilter) -> a plain
    ``$ref`` to the component itself (2020-12 ignores them, which made the nested-filter
    ``oneOf`` branch match everything and reject every valid filter).
  - boolean ``exclusiveMinimum``/``exclusiveMaximum`` (3.0 style) become the numeric 2020-12
    form (``minimum: 0, exclusiveMinimum: true`` -> ``exclusiveMinimum: 0``).

* Extra properties: we follow the spec as written. Unknown keys are allowed unless the schema
  says ``additionalProperties: false`` (OpenAI adds fields over time and real responses carry
  undocumented ones, so strictness here would reject genuine traffic). Consequence: a typo'd
  *optional* key in a mock response is not caught; a typo'd *required* key is.
* ``discriminator`` is an annotation only (jsonschema ignores it); ``oneOf`` keeps its
  "exactly one branch" meaning, ``anyOf`` its "at least one".
* Formats: only a fixed, deterministic set is checked (independent of which optional
  jsonschema extras are installed): ``date`` (YYYY-MM-DD), ``date-time`` (RFC 3339),
  ``uri`` (has a scheme, no whitespace), ``unixtime`` (integer >= 0), ``int64`` (fits in a
  signed 64-bit integer). Other formats (``float``, ``double``, ``binary``...) are ignored.
* Failure messages list every error (most relevant first, at most 10) as
  ``$.json.path: reason  [schema path: ...]``. For a failed ``anyOf``/``oneOf`` (tool calls,
  ``ResponseStreamEvent``...) the errors shown are those of the branch whose ``type``/``object``/
  discriminator value the instance carries, not a generic "not valid under any of the schemas".
"""

from __future__ import annotations

import datetime as _dt
import difflib
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "SPEC_PATH",
    "load_seconds",
    "requires_spec",
    "schema",
    "spec_available",
    "validate",
    "validate_sse_events",
]

_DEFAULT_SPEC_PATH = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "openapi" / "openai-openapi.yaml"
).resolve()

SPEC_PATH: Path = (
    Path(os.environ["OAIGATE_OPENAPI_SPEC"]).expanduser()
    if os.environ.get("OAIGATE_OPENAPI_SPEC")
    else _DEFAULT_SPEC_PATH
)

_BASE_URI = "urn:oaigate:openai-openapi"
_MAX_ERRORS = 10
_MAX_REPR = 200


def spec_available() -> bool:
    """True if the OpenAPI description file exists at :data:`SPEC_PATH`."""
    return SPEC_PATH.is_file()


requires_spec = pytest.mark.skipif(
    not spec_available() and os.environ.get("CI") != "true",  # under CI a missing description fails the test
    reason=f"OpenAI's OpenAPI description not found at {SPEC_PATH}; schema checks skipped",
)


# --------------------------------------------------------------------------------------
# Loading and 3.0 -> 2020-12 normalisation
# --------------------------------------------------------------------------------------

# Keys whose values are data, not schemas: never rewrite inside them.
_DATA_KEYS = frozenset({"example", "examples", "enum", "const", "default", "x-oaiMeta"})
# Keywords that carry no validation (a schema made only of these plus `nullable` is a
# pure "nullable marker" when it appears as an allOf member).
_ANNOTATION_KEYS = frozenset(
    {"nullable", "description", "title", "deprecated", "example", "examples", "default",
     "readOnly", "writeOnly", "$comment"}
)
_COMPOSITION_KEYS = ("$ref", "allOf", "anyOf", "oneOf")

_load_seconds: float | None = None


def _is_nullable_marker(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and node.get("nullable") is True
        and all(k in _ANNOTATION_KEYS or k.startswith("x-") for k in node)
    )


def _normalise(node: Any) -> Any:
    """Return a copy of `node` with OpenAPI 3.0 idioms rewritten into JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_normalise(item) for item in node]
    if not isinstance(node, dict):
        return node

    nullable = node.get("nullable") is True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable" and isinstance(value, bool):
            continue
        if key in _DATA_KEYS:
            out[key] = value
            continue
        if key == "allOf" and isinstance(value, list):
            members = []
            for member in value:
                if _is_nullable_marker(member):
                    nullable = True  # allOf: [{$ref: X}, {nullable: true}]
                else:
                    members.append(_normalise(member))
            if members:
                out[key] = members
            continue
        out[key] = _normalise(value)

    # Duplicates in `required` (ContainerResource) are harmless but not valid 2020-12.
    required = out.get("required")
    if isinstance(required, list) and all(isinstance(name, str) for name in required):
        out["required"] = list(dict.fromkeys(required))
    # 3.0-style boolean exclusive bounds.
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and inclusive in out:
            out[exclusive] = out.pop(inclusive)

    if not nullable:
        return out
    if "type" in out and not any(k in out for k in _COMPOSITION_KEYS):
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if "null" not in types:
            out["type"] = [*types, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    wrapped: dict[str, Any] = {"anyOf": [out, {"type": "null"}]}
    if "description" in out:
        wrapped["description"] = out["description"]
    return wrapped


def _resolve_recursive_refs(node: Any, target: str) -> None:
    """Draft 2019-09 ``$recursiveRef: '#'`` (ignored by 2020-12) -> ``$ref`` to the component."""
    if isinstance(node, list):
        for item in node:
            _resolve_recursive_refs(item, target)
    elif isinstance(node, dict):
        if node.get("$recursiveRef") == "#":
            del node["$recursiveRef"]
            node["$ref"] = target
        for key, value in node.items():
            if key not in _DATA_KEYS:
                _resolve_recursive_refs(value, target)


@functools.lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    global _load_seconds
    import yaml

    if not spec_available():
        raise FileNotFoundError(
            f"OpenAI's OpenAPI description not found at {SPEC_PATH} "
            "(set OAIGATE_OPENAPI_SPEC, and mark the test with tests.openapi.requires_spec)"
        )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    start = time.perf_counter()
    with SPEC_PATH.open("rb") as fh:
        raw = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    spec = _normalise(raw)
    for name, component in spec.get("components", {}).get("schemas", {}).items():
        if isinstance(component, dict) and component.pop("$recursiveAnchor", None):
            _resolve_recursive_refs(component, f"#/components/schemas/{name}")
    _load_seconds = time.perf_counter() - start
    return spec


def load_seconds() -> float | None:
    """Seconds spent reading + parsing + normalising the spec (None until loaded)."""
    return _load_seconds


def schema(component: str) -> dict[str, Any]:
    """The (normalised) schema of ``#/components/schemas/<component>``; KeyError if unknown."""
    schemas = _spec()["components"]["schemas"]
    try:
        return schemas[component]
    except KeyError:
        close = difflib.get_close_matches(component, list(schemas), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no component schema {component!r} in {SPEC_PATH.name}{hint}") from None


# --------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S*$")


def _format_checker():
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("date", raises=ValueError)
    def _date(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if not _DATE_RE.match(value):
            return False
        _dt.date.fromisoformat(value)
        return True

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return "T" in value.upper() and parsed.tzinfo is not None

    @checker.checks("uri")
    def _uri(value: object) -> bool:
        return not isinstance(value, str) or bool(_URI_RE.match(value))

    @checker.checks("unixtime")
    def _unixtime(value: object) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or value >= 0

    @checker.checks("int64")
    def _int64(value: object) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    return checker


@functools.lru_cache(maxsize=1)
def _registry():
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    return Registry().with_resource(_BASE_URI, DRAFT202012.create_resource(_spec()))


@functools.cache
def _validator(component: str):
    from jsonschema import Draft202012Validator

    schema(component)  # KeyError with suggestions for unknown names
    return Draft202012Validator(
        {"$ref": f"{_BASE_URI}#/components/schemas/{component}"},
        registry=_registry(),
        format_checker=_format_checker(),
    )


# --------------------------------------------------------------------------------------
# Error reporting
# --------------------------------------------------------------------------------------

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _json_path(path) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT_RE.match(part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


_UNION = ("anyOf", "oneOf")


def _tag_property(error) -> str | None:
    """The property telling the branches of a failed anyOf/oneOf apart, if the instance has it."""
    if not isinstance(error.instance, dict):
        return None
    discriminator = error.schema.get("discriminator") if isinstance(error.schema, dict) else None
    candidates = [discriminator.get("propertyName")] if isinstance(discriminator, dict) else []
    for name in (*candidates, "type", "object"):
        if isinstance(name, str) and name in error.instance:
            return name
    return None


def _tag_matches(errors, tag: str) -> bool:
    """False if a branch failed on the tag property itself (wrong `type`/`object` value)."""
    for err in errors:
        if list(err.relative_path) == [tag] and err.validator in ("enum", "const", "type"):
            return False
        if (err.validator in _UNION and not err.relative_path and err.context
                and not any(_tag_matches(branch, tag) for branch in _branches(err).values())):
            return False
    return True


def _branches(error) -> dict[int, list]:
    groups: dict[int, list] = {}
    for err in error.context:
        groups.setdefault(err.relative_schema_path[0], []).append(err)
    return groups


def _leaves(error) -> list:
    """Errors worth showing for `error`: for a failed union, those of the branch the instance
    was evidently meant for (same `type`/`object`/discriminator tag), else jsonschema's best
    match, else the union error itself."""
    from jsonschema.exceptions import best_match, relevance

    if error.validator not in _UNION or not error.context:
        return [error]
    tag = _tag_property(error)
    if tag is not None:
        branches = _branches(error)
        meant = [errs for errs in branches.values() if _tag_matches(errs, tag)]
        if len(meant) == 1:
            out = []
            for err in sorted(meant[0], key=relevance, reverse=True):
                out.extend(_leaves(err))
            return out
    leaf = best_match([error])
    return [error] if leaf is None or leaf is error else _leaves(leaf)


def _describe(leaf) -> str:
    schema_path = "/".join(str(p) for p in leaf.absolute_schema_path)
    if leaf.validator in _UNION and leaf.context:
        hint = ""
        tag = _tag_property(leaf)
        if tag is not None:
            hint = f" (no branch has {tag}={leaf.instance[tag]!r}, or several fail equally)"
        reason = (
            f"{_short(leaf.instance)} matches none of the {len(leaf.validator_value)} "
            f"{leaf.validator} branches{hint}"
        )
    elif leaf.validator == "oneOf":
        reason = f"{_short(leaf.instance)} matches more than one oneOf branch"
    else:
        reason = _shorten_message(leaf)
    return f"{_json_path(leaf.absolute_path)}: {reason}  [schema path: {schema_path}]"


def _shorten_message(error) -> str:
    message = error.message
    if len(message) <= 2 * _MAX_REPR:
        return message
    full = repr(error.instance)
    if message.startswith(full):
        return _short(error.instance) + message[len(full):]
    return message[: 2 * _MAX_REPR - 3] + "..."


def _check(component: str, instance: Any, what: str) -> None:
    from jsonschema.exceptions import relevance

    errors = sorted(_validator(component).iter_errors(instance), key=relevance, reverse=True)
    if not errors:
        return
    leaves = [leaf for err in errors for leaf in _leaves(err)]
    shown = leaves[:_MAX_ERRORS]
    more = f", showing the first {len(shown)}" if len(leaves) > len(shown) else ""
    lines = [f"{what} does not match {component} ({len(leaves)} schema error(s){more}):"]
    lines += [f"  - {_describe(leaf)}" for leaf in shown]
    raise AssertionError("\n".join(lines))


def validate(component: str, instance: Any) -> None:
    """Assert that `instance` (parsed JSON) matches ``#/components/schemas/<component>``.

    Raises AssertionError listing every failing JSON path (best match first, at most 10),
    KeyError for an unknown component, FileNotFoundError if the spec is absent.
    """
    _check(component, instance, "instance")


# --------------------------------------------------------------------------------------
# Server-sent events
# --------------------------------------------------------------------------------------

def _parse_sse(raw: bytes | str) -> list[tuple[str | None, str]]:
    """Minimal WHATWG-style SSE parser: returns (event name or None, data) per event.

    Comment lines (starting with ':') and ``id``/``retry``/unknown fields are ignored; multiple
    ``data:`` lines in one event are joined with newlines. A final event not terminated by a
    blank line is an error (browsers and the openai client would drop it).
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssertionError(f"SSE stream is not valid UTF-8: {exc}") from None
    else:
        text = raw
    text = text.removeprefix("\ufeff")

    events: list[tuple[str | None, str]] = []
    event: str | None = None
    data: list[str] = []
    lines = re.split(r"\r\n|\r|\n", text)
    tail = lines.pop()  # text after the last line break (a line is only complete once ended)
    for line in lines:
        if line == "":
            if data:
                events.append((event, "\n".join(data)))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data or (tail and not tail.startswith(":")):
        last = tail or (f"data: {data[-1]}" if data else "")
        raise AssertionError(
            f"SSE stream ends mid-event (no blank line after {_short(last)}); clients drop it"
        )
    return events


def validate_sse_events(component: str, raw: bytes | str) -> list[Any]:
    """Parse an SSE stream and validate every JSON ``data:`` payload against `component`.

    E.g. ``"CreateChatCompletionStreamResponse"`` for chat, ``"ResponseStreamEvent"`` for the
    Responses API. A ``data: [DONE]`` sentinel is allowed only as the very last event and is
    not returned. When an event has an ``event:`` name and its payload a string ``type``, the
    two must agree (as in the Responses API). Returns the parsed payloads, in order.
    """
    events = _parse_sse(raw)
    if not events:
        raise AssertionError(f"no SSE events found in stream: {_short(raw)}")
    if events[-1][1] == "[DONE]":
        events = events[:-1]
    payloads: list[Any] = []
    for number, (name, data) in enumerate(events):
        where = f"SSE event #{number}" + (f" ({name})" if name else "")
        if data == "[DONE]":
            raise AssertionError(f"{where}: 'data: [DONE]' must be the last event")
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise AssertionError(f"{where}: data is not JSON ({exc}): {_short(data)}") from None
        if name and isinstance(payload, dict) and isinstance(payload.get("type"), str) and payload["type"] != name:
            raise AssertionError(f"{where}: event name {name!r} differs from payload type {payload['type']!r}")
        _check(component, payload, where)
        payloads.append(payload)
    return payloads
