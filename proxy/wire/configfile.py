"""Reading config.toml and reporting its mistakes as one `ConfigError` naming file, key and reason."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration problem a user can fix: which file, which key, and why."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning I/O and syntax errors into `ConfigError`."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), None, "file not found") from None
    except OSError as exc:
        raise ConfigError(str(path), None, exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"not valid TOML: {exc}") from None


def validate(model: type[M], data: Any, file: str, prefix: str = "") -> M:
    """Validate `data` as `model`; its problems become one `ConfigError` listing every one of them
    (its `key` and `reason` are the first's)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, prefix) for error in exc.errors()]
        key, reason = problems[0]
        error = ConfigError(file, key, reason)
        if len(problems) > 1:
            lines = [f"{file}: {len(problems)} problems:"]
            lines += [f"  {k}: {r}" if k else f"  {r}" for k, r in problems]
            error.args = ("\n".join(lines),)
        raise error from None


def _problem(error: Any, prefix: str) -> tuple[str | None, str]:
    """One validation error as (dotted key, reason)."""
    path = [prefix] if prefix else []
    path += [f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"]]
    key = ".".join(path).replace(".[", "[") or None
    reason = {"extra_forbidden": "unknown key"}.get(error["type"], error["msg"])
    if reason.startswith("Value error, "):
        reason = reason[len("Value error, "):]
    if error["type"] != "extra_forbidden" and "input" in error and not isinstance(error["input"], dict):
        reason += f" (got {_shown(error['loc'], error['input'])})"
    return key, reason


def resolve_paths(data: Any, base: Path, keys: tuple[tuple[str, str], ...]) -> Any:
    """`data` with each relative path at (section, key) made relative to `base` (the config file's
    folder), so a config file means the same files whatever folder the command runs in."""
    if not isinstance(data, dict):
        return data
    for section, key in keys:
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and "://" not in table[key]:  # not URLs
            value = Path(table[key]).expanduser()
            if not value.is_absolute():
                table[key] = str(base / value)
    return data


_SECRET_NAMES = frozenset({"key", "api_key", "key_sha256", "password", "token", "secret"})
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """A rejected value as an error may show it: never a secret, never a URL's credentials."""
    if loc and str(loc[-1]).lower() in _SECRET_NAMES:
        return "a value that is not shown"
    return _USERINFO.sub("***@", repr(value))
