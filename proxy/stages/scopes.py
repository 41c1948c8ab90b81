"""Who and what a limit covers: a key (or each key, `*`), a model name or glob, or everything."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Selector:
    """`key` None: all keys together; `"*"`: each key on its own. `model` None: all models."""

    key: str | None
    model: str | None

    def matches(self, principal: str | None, model: str | None) -> bool:
        if self.key not in (None, "*") and self.key != principal:
            return False
        return self.model is None or (model is not None and fnmatch.fnmatchcase(model, self.model))

    def scope(self, principal: str | None) -> str:
        """The scope's name, e.g. `global`, `key:ci`, `model:gpt-4o*`, `key:ci model:gpt-4o`."""
        parts = []
        if self.key is not None:
            parts.append(f"key:{principal if self.key == '*' else self.key}")
        if self.model is not None:
            parts.append(f"model:{self.model}")
        return " ".join(parts) or "global"
