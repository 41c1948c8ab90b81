"""Bounded in-memory state, so a long CI run cannot exhaust memory, and its optional folder.

`BoundedStore` keeps objects by id in insertion (creation) order; adding one beyond `max_items`, or
beyond `max_bytes` of their summed sizes, evicts the oldest first. `StateDir` keeps records on disk
for a store that persists itself when `state_dir` is set.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from proxy.wire.jsoncodec import dumps, loads

log = logging.getLogger("oaigate.mock")

T = TypeVar("T")


class BoundedStore(Generic[T]):
    """Objects by id, oldest first, evicted oldest-first past `max_items` or `max_bytes`."""

    def __init__(self, max_items: int, max_bytes: int | None = None, size: Callable[[T], int] = lambda _: 0) -> None:
        self.max_items, self.max_bytes, self._size = max_items, max_bytes, size
        self._items: dict[str, T] = {}
        self.bytes = 0

    def add(self, key: str, item: T) -> list[T]:
        """Store `item` under `key`; returns what was evicted to make room."""
        self.remove(key)
        self._items[key] = item
        self.bytes += self._size(item)
        evicted = []
        while len(self._items) > 1 and (
            len(self._items) > self.max_items or (self.max_bytes is not None and self.bytes > self.max_bytes)
        ):
            evicted.append(self.remove(next(iter(self._items))))
        return [e for e in evicted if e is not None]

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def remove(self, key: str) -> T | None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= self._size(item)
        return item

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


class StateDir:
    """JSON records, with optional raw blobs beside them, per kind in a folder: state that survives a
    restart (`state_dir`). Each write goes to a temporary file renamed into place, so a crash never
    leaves half a record."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def save(self, kind: str, key: str, record: Any, blob: bytes | None = None) -> None:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        if blob is not None:
            _write(folder / f"{key}.bin", blob)
        _write(folder / f"{key}.json", dumps(record))

    def drop(self, kind: str, key: str) -> None:
        for suffix in (".json", ".bin"):
            (self.root / kind / f"{key}{suffix}").unlink(missing_ok=True)

    def load(self, kind: str, build: Callable[[dict[str, Any], bytes | None], T]) -> list[tuple[int, T]]:
        """Every record of `kind` (with its blob) built into an object, paired with its `seq` and in that
        order; a record that cannot be read or built is logged and skipped."""
        folder = self.root / kind
        loaded = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            blob = path.with_suffix(".bin")
            try:
                record = loads(path.read_bytes())
                loaded.append((int(record["seq"]), build(record, blob.read_bytes() if blob.exists() else None)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable state file %s: %r", path, exc)
        return sorted(loaded, key=lambda pair: pair[0])

    def clear(self, kind: str) -> None:
        shutil.rmtree(self.root / kind, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
