"""Deterministic JSON values from a JSON Schema, and the schema rules of OpenAI's strict mode.

`generate(schema, rnd, hint)` returns a value valid against `schema`, drawn from the request's PRNG.
`hint` (the user's message) makes values plausible: a `city`, `location` or `destination` takes a
capitalised name from it (several such fields take its names in order), a `query` or `topic` its
keywords, an enum the member it mentions, a number the first number in it that fits, a
`description` a sentence about it.

Understood (JSON Schema 2020-12, plus draft-4 boolean exclusive bounds and `definitions`): `type`
(lists too, "null" for nullable), `enum`, `const`, `properties`, `required`, `additionalProperties`,
`minProperties`/`maxProperties`, `items`, `prefixItems`, `minItems`/`maxItems`, `uniqueItems`,
`minLength`/`maxLength`, `pattern` (a string is built from the regex), `format` (date, date-time,
time, duration, email, hostname, ipv4, ipv6, uri, uuid), `minimum`/`maximum`,
`exclusiveMinimum`/`exclusiveMaximum`, `multipleOf`, `anyOf`, `oneOf` (exactly one branch matches),
`allOf`, `not`, and `$ref` within the document. Other keywords are ignored. Recursive schemas stop
growing after a few levels by taking their smallest option.

`check_strict_schema` answers OpenAI's 400 for a schema that `strict: true` refuses.
"""

from __future__ import annotations

import datetime as dt
import fractions
import itertools
import math
import re
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import unquote

from ..errors import MockError
from . import textgen
from .rng import RequestRandom

if TYPE_CHECKING:  # typeshed types the parser under its public (deprecated since 3.11) names
    import sre_constants as sre
    import sre_parse
else:
    import re._constants as sre
    import re._parser as sre_parse

_DEEP = 5  # past this depth optional parts are left out and nullable values are null
_DEEPEST = 64  # a schema that can only recurse gets null here instead of a RecursionError
_MAX_ITEMS = 1000
_MAX_LENGTH = 10_000
_BUDGET = 50_000  # values per generation: a schema asking for more gets nulls past it, not a hung server
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

_PLACES = ("Paris", "Tokyo", "Lisbon", "Nairobi", "Toronto", "Sydney")
_PEOPLE = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Katherine Johnson", "Tim Berners-Lee")
_FILLER = ("example", "sample", "value", "item", "note", "detail")
_CHOICES = {
    "color": ("blue", "green", "red", "orange", "purple"),
    "status": ("active", "pending", "completed"),
    "language": ("English", "French", "Japanese", "Spanish"),
    "currency": ("USD", "EUR", "GBP", "JPY"),
}
# Property name (snake_case) -> what kind of string it holds; the first match wins.
_STRING_KINDS = tuple((re.compile(p), kind) for p, kind in (
    (r"e_?mail", "email"),
    (r"url|uri|link|website|homepage", "uri"),
    (r"uuid|guid", "uuid"),
    (r"(^|_)(id|key|code|sku|ref|reference)$", "id"),
    (r"city|town|location|place|destination|origin|country|region|address|venue|where", "place"),
    (r"(^|_)(date|day|birthday|dob)$", "date"),
    (r"(^|_)(time|timestamp|datetime)$|_at$", "date-time"),
    (r"phone|mobile|telephone", "phone"),
    (r"zip|postal|postcode", "postcode"),
    (r"(^|_)(name|author|person|contact|owner|assignee|customer|user|username|recipient)$", "person"),
    (r"query|search|keyword|topic|subject|term|(^|_)q$", "query"),
    (r"title|headline|heading|label", "title"),
    (r"description|summary|explanation|reason|answer|text|content|message|body|comment|note|detail|bio", "sentence"),
    (r"colou?r", "color"),
    (r"status|state", "status"),
    (r"lang", "language"),
    (r"currency", "currency"),
))
# Property name -> the range a number without bounds is drawn from.
_NUMBER_RANGES = tuple((re.compile(p), span) for p, span in (
    (r"(^|_)age$", (18, 80)),
    (r"year", (1990, 2030)),
    (r"month", (1, 12)),
    (r"(^|_)day$", (1, 28)),
    (r"hour", (0, 23)),
    (r"minute|second", (0, 59)),
    (r"rating|stars|score", (1, 5)),
    (r"percent|pct|probability|confidence", (0, 100)),
    (r"price|amount|cost|total|salary|budget", (5, 500)),
    (r"(^|_)lat", (-90, 90)),
    (r"(^|_)(lon|lng)", (-180, 180)),
))
_DEFAULT_RANGE = (1, 100)
_CATEGORIES = {
    sre.CATEGORY_DIGIT: (r"\d", "0123456789"),
    sre.CATEGORY_NOT_DIGIT: (r"\D", "abcxyz"),
    sre.CATEGORY_SPACE: (r"\s", " "),
    sre.CATEGORY_NOT_SPACE: (r"\S", _ALNUM),
    sre.CATEGORY_WORD: (r"\w", _ALNUM + "_"),
    sre.CATEGORY_NOT_WORD: (r"\W", " -.,"),
}
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


def generate(schema: Any, rnd: RequestRandom, hint: str = "") -> Any:
    """A value valid against `schema`; the same schema, PRNG state and hint give the same value."""
    return _Generator(schema, rnd, hint).value(schema, "", 0)


def check_strict_schema(
    schema: Any, param: str | None, *, subject: str | None = None, code: str | None = None, root_only: bool = False,
) -> None:
    """Raise OpenAI's 400 for a schema strict mode refuses: a root that is not an object, an object
    without `additionalProperties: false`, or a `required` that is not exactly its properties.

    `subject` names the schema as OpenAI's message does ("response_format 'NAME'", "function 'NAME'");
    `root_only` checks just the root, as OpenAI does for every function's parameters.
    """
    def fail(context: tuple[str, ...] | None, reason: str) -> MockError:
        where = "" if context is None else f"In context={context!r}, "
        return MockError(400, f"Invalid schema for {subject or param}: {where}{reason}", param=param, code=code)

    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind != "object":
        raise fail(None, f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'.")
    if root_only:
        return
    for context, node in _subschemas(schema, ()):
        kinds = node.get("type")
        if not ("properties" in node or kinds == "object" or isinstance(kinds, list) and "object" in kinds):
            continue
        if node.get("additionalProperties") is not False:
            raise fail(context, "'additionalProperties' is required to be supplied and to be false.")
        properties = _dict_at(node, "properties")
        required = _required(node)
        every = "'required' is required to be supplied and to be an array including every key in properties."
        missing = [key for key in properties if key not in required]
        if missing:
            raise fail(context, f"{every} Missing '{missing[0]}'.")
        extra = [key for key in required if key not in properties]
        if extra:
            raise fail(context, f"{every} Extra required key '{extra[0]}' supplied.")


def _subschemas(node: Any, context: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every schema object inside `node` (itself first) with its path, as OpenAI's context shows it."""
    if not isinstance(node, dict):
        return
    yield context, node
    for key in ("properties", "$defs", "definitions"):
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                yield from _subschemas(sub, (*context, key, name))
    for key in ("items", "additionalProperties", "not"):
        yield from _subschemas(node.get(key), (*context, key))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(node.get(key), list):
            for index, sub in enumerate(node[key]):
                yield from _subschemas(sub, (*context, key, str(index)))


def _merge(base: Any, extra: Any) -> Any:
    """Both schemas at once, for `allOf` and `$ref` siblings: later keywords win, properties and
    `required` are united."""
    if base is False or extra is False:
        return False
    base = base if isinstance(base, dict) else {}
    extra = extra if isinstance(extra, dict) else {}
    merged = {**base, **extra}
    if isinstance(base.get("properties"), dict) and isinstance(extra.get("properties"), dict):
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if isinstance(base.get("required"), list) and isinstance(extra.get("required"), list):
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def _freeze(value: Any) -> Any:
    """A hashable form in which equal JSON values are equal (1 == 1.0, but true != 1)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("array", tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("object", frozenset((k, _freeze(v)) for k, v in value.items()))
    return ("other", repr(value))


def _is_type(kind: Any, value: Any) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "number" or kind == "integer" and float(value).is_integer()


def _is_multiple(value: float, step: float) -> bool:
    """`multipleOf` exactly as jsonschema decides it (float division for float steps)."""
    if isinstance(step, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _dict_at(node: dict[str, Any], key: str) -> dict[str, Any]:
    """`node[key]` if it is an object, else `{}` (schemas are user input)."""
    value = node.get(key)
    return value if isinstance(value, dict) else {}


def _list_at(node: dict[str, Any], key: str) -> list[Any]:
    """`node[key]` if it is an array, else `[]`."""
    value = node.get(key)
    return value if isinstance(value, list) else []


def _limit(schema: dict[str, Any], key: str, default: Any = None) -> Any:
    """A numeric keyword, or `default` when absent or not a number (schemas are user input)."""
    value = schema.get(key)
    return value if _number(value) else default


def _required(schema: dict[str, Any]) -> list[str]:
    required = schema.get("required")
    return [k for k in required if isinstance(k, str)] if isinstance(required, list) else []


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(lower, lower is exclusive, upper, upper is exclusive) from either draft's keywords."""
    bounds: list[Any] = []
    for inclusive, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        limit = schema.get(inclusive) if _number(schema.get(inclusive)) else None
        strict = schema.get(exclusive)
        if strict is True:
            bounds += [limit, limit is not None]
        elif _number(strict) and (limit is None or (strict >= limit if inclusive == "minimum" else strict <= limit)):
            bounds += [strict, True]
        else:
            bounds += [limit, False]
    return bounds[0], bounds[1], bounds[2], bounds[3]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_").replace(" ", "_")


def _singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    return name[:-1] if name.endswith("s") and not name.endswith("ss") else name


class _Generator:
    """One generation: the root (for `$ref`), the PRNG, and what the hint offers, consumed in order."""

    def __init__(self, root: Any, rnd: RequestRandom, hint: str) -> None:
        self.root, self.rnd, self.hint = root, rnd, hint
        self.words = textgen.keywords(hint, 8)
        self.names = itertools.cycle(textgen.proper_names(hint) or [rnd.choice(_PLACES)])
        self.numbers = [float(n) if "." in n else int(n) for n in _NUMBER.findall(hint)]
        self.budget = _BUDGET

    # --- schemas -----------------------------------------------------------------------------------

    def lookup(self, ref: Any) -> Any:
        """The target of a local `$ref` ("#" or a JSON pointer); anything else allows any value."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node = self.root
        for part in filter(None, unquote(ref[1:]).split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def resolve(self, schema: Any) -> Any:
        """`schema` with `$ref` and `allOf` folded in, so its own keywords say everything."""
        for _ in range(32):
            if not isinstance(schema, dict):
                return schema
            if "$ref" in schema:
                schema = _merge(self.lookup(schema["$ref"]), {k: v for k, v in schema.items() if k != "$ref"})
            elif isinstance(schema.get("allOf"), list):
                merged: Any = {k: v for k, v in schema.items() if k != "allOf"}
                for part in schema["allOf"]:
                    merged = _merge(merged, self.resolve(part))
                schema = merged
            else:
                return schema
        return {}

    def valid(self, schema: Any, value: Any, depth: int = 0) -> bool:
        """Whether `value` satisfies `schema` (formats aside): decides `oneOf`, `not` and enums."""
        schema = self.resolve(schema)
        if not isinstance(schema, dict) or depth > _DEEPEST:
            return schema is not False
        kinds = schema.get("type")
        if kinds is not None and not any(_is_type(k, value) for k in (kinds if isinstance(kinds, list) else [kinds])):
            return False
        if "const" in schema and _freeze(schema["const"]) != _freeze(value):
            return False
        if isinstance(schema.get("enum"), list) and _freeze(value) not in {_freeze(e) for e in schema["enum"]}:
            return False
        if isinstance(value, str) and not self._valid_string(schema, value):
            return False
        if _number(value) and not self._valid_number(schema, value):
            return False
        if isinstance(value, dict) and not self._valid_object(schema, value, depth + 1):
            return False
        if isinstance(value, list) and not self._valid_array(schema, value, depth + 1):
            return False
        if isinstance(schema.get("anyOf"), list) and not any(self.valid(s, value, depth + 1) for s in schema["anyOf"]):
            return False
        if isinstance(schema.get("oneOf"), list) and sum(self.valid(s, value, depth + 1) for s in schema["oneOf"]) != 1:
            return False
        return not ("not" in schema and self.valid(schema["not"], value, depth + 1))

    def _valid_string(self, schema: dict[str, Any], value: str) -> bool:
        if not _limit(schema, "minLength", 0) <= len(value) <= _limit(schema, "maxLength", math.inf):
            return False
        try:
            return not isinstance(schema.get("pattern"), str) or re.search(schema["pattern"], value) is not None
        except re.error:
            return True

    def _valid_number(self, schema: dict[str, Any], value: float) -> bool:
        low, low_strict, high, high_strict = _bounds(schema)
        step = schema.get("multipleOf")
        return ((low is None or (value > low if low_strict else value >= low))
                and (high is None or (value < high if high_strict else value <= high))
                and (not _number(step) or step <= 0 or _is_multiple(value, step)))

    def _valid_object(self, schema: dict[str, Any], value: dict[str, Any], depth: int) -> bool:
        properties = _dict_at(schema, "properties")
        patterns = _dict_at(schema, "patternProperties")
        if any(key not in value for key in _required(schema)):
            return False
        if not _limit(schema, "minProperties", 0) <= len(value) <= _limit(schema, "maxProperties", math.inf):
            return False
        for key, item in value.items():
            matched = [s for p, s in patterns.items() if _search(p, key)]
            if key in properties:
                matched.append(properties[key])
            elif not matched:
                matched.append(schema.get("additionalProperties", True))
            if not all(self.valid(s, item, depth) for s in matched):
                return False
        return True

    def _valid_array(self, schema: dict[str, Any], value: list[Any], depth: int) -> bool:
        prefix, items = self._item_schemas(schema)
        if not _limit(schema, "minItems", 0) <= len(value) <= _limit(schema, "maxItems", math.inf):
            return False
        if schema.get("uniqueItems") is True and len({_freeze(v) for v in value}) < len(value):
            return False
        return all(self.valid(prefix[i] if i < len(prefix) else items, v, depth) for i, v in enumerate(value))

    @staticmethod
    def _item_schemas(schema: dict[str, Any]) -> tuple[list[Any], Any]:
        prefix = _list_at(schema, "prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):
            return items, schema.get("additionalItems", True)
        return prefix, items

    # --- values ------------------------------------------------------------------------------------

    def value(self, schema: Any, name: str, depth: int) -> Any:
        schema = self.resolve(schema)
        self.budget -= 1
        if depth > _DEEPEST or schema is False or self.budget < 0:
            return None
        if not isinstance(schema, dict):
            return self._text(name)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list):
            return self._enum(schema)
        for union in ("anyOf", "oneOf"):
            if isinstance(schema.get(union), list) and schema[union]:
                return self._union(schema, union, name, depth)
        if "not" in schema:
            rest = {k: v for k, v in schema.items() if k != "not"}
            candidate = None
            for _ in range(8):
                candidate = self.value(rest, name, depth)
                if not self.valid(schema["not"], candidate):
                    break
            return candidate
        kind = self._kind(schema, depth)
        makers: dict[str, Callable[[dict[str, Any], str, int], Any]] = {
            "object": self._object, "array": self._array, "integer": self._integer, "number": self._float,
            "boolean": lambda *_: self.rnd.random() < 0.5, "null": lambda *_: None,
        }
        return makers.get(kind, self._string)(schema, name, depth)

    def _kind(self, schema: dict[str, Any], depth: int) -> str:
        kinds = schema.get("type")
        if isinstance(kinds, str):
            return kinds
        if not isinstance(kinds, list) or not kinds:
            if any(k in schema for k in ("properties", "required", "additionalProperties", "minProperties")):
                return "object"
            if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
                return "array"
            numeric = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
            return "number" if any(k in schema for k in numeric) else "string"
        others = [k for k in kinds if isinstance(k, str) and k != "null"]
        if not others or len(others) < len(kinds) and (depth > _DEEP or self.rnd.random() < 0.25):
            return "null"
        return self.rnd.choice(others)

    def _enum(self, schema: dict[str, Any]) -> Any:
        rest = {k: v for k, v in schema.items() if k != "enum"}
        options = [v for v in schema["enum"] if self.valid(rest, v)] or schema["enum"]
        if not options:
            return None
        text = self.hint.lower()
        named = [v for v in options if isinstance(v, str) and v
                 and re.search(rf"(?<!\w){re.escape(v.lower())}(?!\w)", text)]
        return self.rnd.choice(named or options)

    def _union(self, schema: dict[str, Any], union: str, name: str, depth: int) -> Any:
        rest = {k: v for k, v in schema.items() if k != union}
        branches = [_merge(rest, self.resolve(b)) for b in schema[union]]
        nulls = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
        others = [b for b in branches if b not in nulls]
        self.rnd.shuffle(others)
        null_first = nulls and (not others or depth > _DEEP or self.rnd.random() < 0.25)
        order = nulls + others if null_first else others + nulls
        if union == "anyOf":
            return self.value(order[0], name, depth)
        first = None
        for branch in order:
            candidate = self.value(branch, name, depth)
            if sum(self.valid(b, candidate) for b in branches) == 1:
                return candidate
            first = candidate if first is None else first
        return first

    def _object(self, schema: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        properties = _dict_at(schema, "properties")
        required = _required(schema)
        extra = schema.get("additionalProperties", True)
        low, high = min(int(_limit(schema, "minProperties", 0)), _MAX_ITEMS), _limit(schema, "maxProperties")
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            if key in required or depth <= _DEEP and self.rnd.random() < 0.7 or len(out) < low:
                out[key] = self.value(sub, key, depth + 1)
        for key in required:
            if key not in out:
                out[key] = self.value(extra if isinstance(extra, dict) else {}, key, depth + 1)
        for number in range(1, low + 1):
            if len(out) >= low or extra is False:
                break
            out.setdefault(f"extra_{number}", self.value(extra if isinstance(extra, dict) else {}, "", depth + 1))
        optional = [k for k in out if k not in required]
        while high is not None and len(out) > high and optional:
            del out[optional.pop()]
        return out

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix, items = self._item_schemas(schema)
        low = min(max(int(_limit(schema, "minItems", 0)), 0), _MAX_ITEMS)
        high = _limit(schema, "maxItems")
        if items is False:
            high = len(prefix) if high is None else min(high, len(prefix))
        top = low + 3 if high is None else max(min(int(high), low + 3), low)
        count = low if depth > _DEEP else self.rnd.randint(min(max(low, 1), top), top)
        unique = schema.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[Any] = set()
        for _ in range(count * 4 + 8):
            if len(out) >= count:
                break
            item = self.value(prefix[len(out)] if len(out) < len(prefix) else items, _singular(name), depth + 1)
            if unique:
                if _freeze(item) in seen:
                    continue
                seen.add(_freeze(item))
            out.append(item)
        return out

    def _integer(self, schema: dict[str, Any], name: str, depth: int) -> int:
        low, low_strict, high, high_strict = _bounds(schema)
        first = None if low is None else math.floor(low) + 1 if low_strict else math.ceil(low)
        last = None if high is None else math.ceil(high) - 1 if high_strict else math.floor(high)
        first, last = self._span(name, first, last)
        step = schema.get("multipleOf")
        if _number(step) and step > 0:
            ratio = fractions.Fraction(str(step))
            step = ratio.numerator if ratio.denominator > 1 else int(step)
        else:
            step = 1
        taken = self._take_number(lambda n: isinstance(n, int) and first <= n <= last and self._valid_number(schema, n))
        if taken is not None:
            return int(taken)
        value = self._multiple(schema, step, first, last, low is not None, high is not None)
        return first if value is None else int(value)

    def _float(self, schema: dict[str, Any], name: str, depth: int) -> float:
        low, _, high, _ = _bounds(schema)
        start, end = self._span(name, low, high)
        taken = self._take_number(lambda n: self._valid_number(schema, n))
        if taken is not None:
            return taken
        step = schema.get("multipleOf")
        if _number(step) and step > 0:
            value = self._multiple(schema, step, start, end, low is not None, high is not None)
            if value is not None:
                return value
        share = self.rnd.random()
        exact = start * (1 - share) + end * share
        for value in (round(exact, 2), exact, start / 2 + end / 2):
            if self._valid_number(schema, value):
                return value
        return exact

    def _multiple(self, schema: dict[str, Any], step: float, start: float, end: float, low_given: bool,
                  high_given: bool) -> float | None:
        """A multiple of `step` valid for `schema`, from [start, end] or, when the plausible range
        holds none, the nearest one past its open side."""
        low_k, high_k = int(-(-start // step)), int(end // step)
        if low_k > high_k:
            if high_given and low_given:
                return None
            low_k, high_k = (high_k, high_k) if high_given else (low_k, low_k)
        start_k = self.rnd.randint(low_k, high_k)
        for k in itertools.chain([start_k], range(low_k, min(high_k, low_k + 32) + 1)):
            if self._valid_number(schema, k * step):
                return k * step
        return None

    def _span(self, name: str, low: float | None, high: float | None) -> tuple[Any, Any]:
        """The bounds to draw from: the schema's, completed by a plausible range for `name`."""
        snake = _snake(name)
        start, end = next((span for pattern, span in _NUMBER_RANGES if pattern.search(snake)), _DEFAULT_RANGE)
        width = end - start
        if high is None:
            return (start, end) if low is None else (low, (end if low <= end else low + width))
        if low is None:
            return (start if high >= start else high - width), high
        return low, high

    def _take_number(self, accept: Callable[[float], bool]) -> float | None:
        """The hint's first unused number that `accept`s, now used."""
        for index, value in enumerate(self.numbers):
            if accept(value):
                return self.numbers.pop(index)
        return None

    # --- strings -----------------------------------------------------------------------------------

    def _string(self, schema: dict[str, Any], name: str, depth: int) -> str:
        low, high = min(int(_limit(schema, "minLength", 0)), _MAX_LENGTH), _limit(schema, "maxLength")
        pattern, fmt = schema.get("pattern"), schema.get("format")
        text = ""
        for _ in range(8):
            if isinstance(pattern, str):
                generated = self._regex(pattern)
                if generated is None:
                    pattern = None
                    continue
                text = generated
            elif isinstance(fmt, str) and fmt in _FORMATS:
                text = _FORMATS[fmt](self)
            else:
                return self._fit(self._text(name), low, high)
            if low <= len(text) <= (math.inf if high is None else high):
                return text
        return self._fit(text, low, high)

    def _fit(self, text: str, low: int, high: float | None) -> str:
        filler = itertools.cycle(self.words or _FILLER)
        while len(text) < low:
            text = f"{text} {next(filler)}" if text else next(filler)
        if high is not None and len(text) > high:
            cut = text[: int(high)]
            text = cut.rstrip() if len(cut.rstrip()) >= low else cut
        return text

    def _text(self, name: str) -> str:
        """A plausible string for a property called `name`, from the hint where it can."""
        snake = _snake(name)
        kind = next((kind for pattern, kind in _STRING_KINDS if pattern.search(snake)), "")
        if kind in _FORMATS:
            return _FORMATS[kind](self)
        if kind == "place":
            return next(self.names)
        if kind == "person":
            person = self.rnd.choice(_PEOPLE)
            if "first" in snake or "given" in snake:
                return person.split()[0]
            if "last" in snake or "family" in snake or "surname" in snake:
                return person.split()[-1]
            return person.lower().replace(" ", ".") if "user" in snake else person
        if kind == "postcode":
            return f"{self.rnd.randint(10000, 99999)}"
        if kind == "phone":
            return f"+1-555-01{self.rnd.randint(0, 99):02d}"
        if kind == "id":
            return self.rnd.token(10)
        if kind == "query":
            return " ".join(self.words[:4]) or "general information"
        if kind == "title":
            return textgen.topic_phrase(self.words[:2]).title() if self.words else "Overview"
        if kind == "sentence":
            return textgen.answer(self.hint, self.rnd, sentences=1)
        if kind in _CHOICES:
            return self.rnd.choice(_CHOICES[kind])
        return self.rnd.choice(self.words or _FILLER)

    def _regex(self, pattern: str) -> str | None:
        """A string that `re.search(pattern, ...)` accepts, built from the parsed regex."""
        try:
            parsed = sre_parse.parse(pattern)
        except (re.error, RecursionError, OverflowError, ValueError):
            return None
        for _ in range(4):
            text = self._emit(parsed, {})
            if _search(pattern, text):
                return text
        return None

    def _emit(self, items: Any, groups: dict[int, str]) -> str:
        out = []
        for op, arg in items:
            if op is sre.LITERAL:
                out.append(chr(arg))
            elif op is sre.NOT_LITERAL:
                out.append("a" if arg != ord("a") else "b")
            elif op is sre.ANY:
                out.append(self.rnd.choice("abcxyz"))
            elif op is sre.IN:
                out.append(self._char_in(arg))
            elif op is sre.CATEGORY:
                out.append(self.rnd.choice(_CATEGORIES.get(arg, ("", "a"))[1]))
            elif op is sre.BRANCH:
                out.append(self._emit(self.rnd.choice(arg[1]), groups))
            elif op is sre.SUBPATTERN:
                text = self._emit(arg[3], groups)
                if arg[0]:
                    groups[arg[0]] = text
                out.append(text)
            elif op is sre.ATOMIC_GROUP:
                out.append(self._emit(arg, groups))
            elif op in _REPEATS:
                low, high, sub = arg
                repeated = ""
                for _ in range(self.rnd.randint(low, max(low, min(high, low + 3)))):
                    repeated += self._emit(sub, groups)
                    if len(repeated) > _MAX_LENGTH:
                        break
                out.append(repeated)
            elif op is sre.GROUPREF:
                out.append(groups.get(arg, ""))
            elif op is sre.GROUPREF_EXISTS:
                out.append(self._emit(arg[1] if arg[0] in groups else arg[2] or [], groups))
        return "".join(out)

    def _char_in(self, items: list[tuple[Any, Any]]) -> str:
        """A character of a `[...]` class (or, negated, one outside it)."""
        if items and items[0][0] is sre.NEGATE:
            outside = [c for c in _ALNUM + " -_.,:/" if not _in_class(c, items[1:])]
            return self.rnd.choice(outside) if outside else "\u2022"
        op, arg = self.rnd.choice(items)
        if op is sre.LITERAL:
            return chr(arg)
        if op is sre.CATEGORY:
            return self.rnd.choice(_CATEGORIES.get(arg, ("", "a"))[1])
        if op is sre.RANGE:
            inside = [c for c in _ALNUM if arg[0] <= ord(c) <= arg[1]]
            if inside:
                return self.rnd.choice(inside)
            code = self.rnd.randint(arg[0], min(arg[1], arg[0] + 25))
            return chr(arg[0] if 0xD800 <= code <= 0xDFFF else code)
        return "a"

    # --- formats -----------------------------------------------------------------------------------

    def _date(self) -> dt.date:
        return dt.date(self.rnd.randint(2024, 2026), self.rnd.randint(1, 12), self.rnd.randint(1, 28))

    def _clock(self) -> str:
        return f"{self.rnd.randint(7, 20):02d}:{self.rnd.choice((0, 15, 30, 45)):02d}:00"

    def _slug(self) -> str:
        words = [w.lower() for w in self.words[:3] if w.isascii()]
        return "-".join(re.sub(r"[^a-z0-9]+", "-", w).strip("-") for w in words) or "page"


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return True


def _in_class(char: str, items: list[tuple[Any, Any]]) -> bool:
    for op, arg in items:
        if op is sre.LITERAL and ord(char) == arg or op is sre.RANGE and arg[0] <= ord(char) <= arg[1]:
            return True
        if op is sre.CATEGORY and arg in _CATEGORIES and re.fullmatch(_CATEGORIES[arg][0], char):
            return True
    return False


_FORMATS: dict[str, Callable[[_Generator], str]] = {
    "date": lambda g: g._date().isoformat(),
    "date-time": lambda g: f"{g._date().isoformat()}T{g._clock()}Z",
    "time": lambda g: f"{g._clock()}Z",
    "duration": lambda g: g.rnd.choice((f"PT{g.rnd.randint(5, 55)}M", f"P{g.rnd.randint(1, 14)}D")),
    "email": lambda g: g.rnd.choice(_PEOPLE).split()[0].lower() + "@example.com",
    "hostname": lambda g: f"{g._slug()}.example.com",
    "ipv4": lambda g: f"192.0.2.{g.rnd.randint(1, 254)}",
    "ipv6": lambda g: f"2001:db8::{g.rnd.randint(1, 0xFFFF):x}",
    "uri": lambda g: f"https://example.com/{g._slug()}",
    "uuid": lambda g: str(uuid.UUID(int=g.rnd.getrandbits(128), version=4)),
}
