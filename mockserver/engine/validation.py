"""Request validation with OpenAI's error messages, params and codes.

Rules are small objects composed into a schema per endpoint; `check(value, path)` raises a 400
`MockError` worded the way OpenAI words it (`Missing required parameter: 'messages'.`,
`Invalid type for 'n': expected an integer, but got a string instead.` ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MockError, invalid


def type_name(value: Any) -> str:
    """OpenAI's wording for the JSON type of `value`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


MAX_DEPTH = 100  # arrays and objects; orjson stops at 254 and hashing a body recurses in Python


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True if `value` holds arrays/objects more than `limit` levels deep (iterative: no recursion)."""
    level, current = 1, [value] if isinstance(value, (dict, list)) else []
    while current:
        if level > limit:
            return True
        deeper: list[Any] = []
        for container in current:
            items = container.values() if isinstance(container, dict) else container
            kinds = set(map(type, items))  # C speed over long flat arrays (token lists)
            if dict in kinds or list in kinds:
                deeper.extend(v for v in items if isinstance(v, (dict, list)))
        current, level = deeper, level + 1
    return False


def check_depth(body: Any) -> None:
    """A 400 for a body nested deeper than `MAX_DEPTH`: such input must not reach hashing or encoding."""
    if nested_deeper_than(body, MAX_DEPTH):
        raise invalid(f"Invalid request body: arrays and objects are nested more than {MAX_DEPTH} levels deep.",
                      None, "invalid_value")


def _quote(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


class Rule:
    """Checks one JSON value. `expected` names the type in messages; `accepts` is the type test."""

    expected = "a value"

    def accepts(self, value: Any) -> bool:
        return True

    def check(self, value: Any, path: str) -> None:
        if not self.accepts(value):
            raise invalid(
                f"Invalid type for '{path}': expected {self.expected}, but got {type_name(value)} instead.",
                path,
                "invalid_type",
            )
        self.constrain(value, path)

    def constrain(self, value: Any, path: str) -> None:
        """Checks beyond the type; the value is known to have the right type."""


class Anything(Rule):
    pass


class Bool(Rule):
    expected = "a boolean"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Str(Rule):
    expected = "a string"

    def __init__(self, enum: tuple[str, ...] = (), min_len: int = 0, max_len: int | None = None) -> None:
        self.enum, self.min_len, self.max_len = enum, min_len, max_len

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def constrain(self, value: str, path: str) -> None:
        if self.enum and value not in self.enum:
            supported = ", ".join(_quote(e) for e in self.enum[:-1])
            supported = f"{supported}, and {_quote(self.enum[-1])}" if supported else _quote(self.enum[-1])
            raise invalid(f"Invalid value: {_quote(value)}. Supported values are: {supported}.", path, "invalid_value")
        if len(value) < self.min_len:
            raise invalid(
                f"Invalid '{path}': string too short. Expected a string with minimum length "
                f"{self.min_len}, but got a string with length {len(value)} instead.",
                path,
                "string_below_min_length",
            )
        if self.max_len is not None and len(value) > self.max_len:
            raise invalid(
                f"Invalid '{path}': string too long. Expected a string with maximum length "
                f"{self.max_len}, but got a string with length {len(value)} instead.",
                path,
                "string_above_max_length",
            )


class Num(Rule):
    """A decimal (ints accepted); `Int` below narrows it to integers."""

    expected = "a decimal"
    kind = "decimal"

    def __init__(self, minimum: float | None = None, maximum: float | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def constrain(self, value: float, path: str) -> None:
        if self.maximum is not None and value > self.maximum:
            raise invalid(
                f"Invalid '{path}': {self.kind} above maximum value. Expected a value <= "
                f"{self.maximum:g}, but got {value:g} instead.",
                path,
                f"{self.kind}_above_max_value",
            )
        if self.minimum is not None and value < self.minimum:
            raise invalid(
                f"Invalid '{path}': {self.kind} below minimum value. Expected a value >= "
                f"{self.minimum:g}, but got {value:g} instead.",
                path,
                f"{self.kind}_below_min_value",
            )


class Int(Num):
    expected = "an integer"
    kind = "integer"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


class Arr(Rule):
    expected = "an array"

    def __init__(self, items: Rule | None = None, min_len: int = 0, max_len: int | None = None) -> None:
        self.items, self.min_len, self.max_len = items, min_len, max_len

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def constrain(self, value: list, path: str) -> None:
        if len(value) < self.min_len:
            if not value:
                raise invalid(
                    f"Invalid '{path}': empty array. Expected an array with minimum length "
                    f"{self.min_len}, but got an empty array instead.",
                    path,
                    "empty_array",
                )
            raise invalid(
                f"Invalid '{path}': array too short. Expected an array with minimum length "
                f"{self.min_len}, but got an array with length {len(value)} instead.",
                path,
                "array_below_min_length",
            )
        if self.max_len is not None and len(value) > self.max_len:
            raise invalid(
                f"Invalid '{path}': array too long. Expected an array with maximum length "
                f"{self.max_len}, but got an array with length {len(value)} instead.",
                path,
                "array_above_max_length",
            )
        if self.items is not None:
            for i, item in enumerate(value):
                self.items.check(item, f"{path}[{i}]")


class Obj(Rule):
    """An object with known fields; unknown fields are refused unless `extra` is set."""

    expected = "an object"

    def __init__(
        self,
        fields: Mapping[str, Rule] | None = None,
        required: tuple[str, ...] = (),
        extra: bool = False,
        values: Rule | None = None,
    ) -> None:
        self.fields, self.required = dict(fields or {}), required
        self.extra, self.values = extra or fields is None, values

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict)

    def check(self, value: Any, path: str) -> None:
        if not path:  # the request body itself
            check_depth(value)
        super().check(value, path)

    def constrain(self, value: dict, path: str) -> None:
        for name in self.required:
            if name not in value:
                raise invalid(f"Missing required parameter: '{join(path, name)}'.", join(path, name),
                              "missing_required_parameter")
        for name, item in value.items():
            rule = self.fields.get(name, self.values)
            if rule is None:
                if self.extra:
                    continue
                raise invalid(f"Unrecognized request argument supplied: {join(path, name)}",
                              None if not path else join(path, name),
                              None if not path else "unknown_parameter")
            rule.check(item, join(path, name))


class Nullable(Rule):
    """`rule` or null."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.expected = rule.expected

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.rule.check(value, path)


class OneOf(Rule):
    """The first alternative whose type matches decides; `expected` lists them all."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules
        names = [r.expected for r in rules]
        unique = list(dict.fromkeys(names))
        self.expected = "one of " + " or ".join(unique) if len(unique) > 1 else unique[0]

    def accepts(self, value: Any) -> bool:
        return any(r.accepts(value) for r in self.rules)

    def constrain(self, value: Any, path: str) -> None:
        matching = [r for r in self.rules if r.accepts(value)]
        errors: list[MockError] = []
        for rule in matching:
            try:
                rule.check(value, path)
                return
            except MockError as exc:
                errors.append(exc)
        raise errors[0]


class Custom(Rule):
    """A rule written as a function, for checks that need several fields at once."""

    def __init__(self, base: Rule, func: Callable[[Any, str], None]) -> None:
        self.base, self.func = base, func
        self.expected = base.expected

    def accepts(self, value: Any) -> bool:
        return self.base.accepts(value)

    def constrain(self, value: Any, path: str) -> None:
        self.base.constrain(value, path)
        self.func(value, path)


def join(path: str, name: str) -> str:
    """`messages[0]` + `content` -> `messages[0].content`."""
    return f"{path}.{name}" if path else name


# Shared field rules
STOP = Nullable(OneOf(Str(), Arr(Str(), max_len=4)))
TEMPERATURE = Nullable(Num(0, 2))
TOP_P = Nullable(Num(0, 1))
PENALTY = Nullable(Num(-2, 2))
N = Nullable(Int(1, 128))
LOGIT_BIAS = Nullable(Obj(values=Num(-100, 100)))
STREAM_OPTIONS = Nullable(Obj({"include_usage": Bool(), "include_obfuscation": Bool()}))
METADATA = Nullable(Obj(values=Str(max_len=512)))
USER = Str()
SEED = Nullable(Int())
MODEL = Str()
