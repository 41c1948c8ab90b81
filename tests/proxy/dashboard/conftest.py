"""A gateway whose ledger already holds a few hundred requests over several days from three keys (one
admin), with budgets, a rate limit, errors, an unpriced model and simulated answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Gateway
from .seed import seed

ADMIN, ALICE, CI = "sk-dash-admin-1f2e", "sk-dash-alice-9a8b", "sk-dash-ci-77c0"
KEYS = [{"name": "ops", "key": ADMIN, "admin": True},
        {"name": "alice", "key": ALICE, "budget_usd": 1000, "rpm": 12},
        {"name": "ci", "key": CI, "budget_usd": 1000, "budget_period": "month"}]


@dataclass
class Seeded:
    gateway: Gateway
    rows: list[dict[str, Any]]

    @property
    def root(self) -> str:
        return self.gateway.root


@pytest.fixture
def seeded(gateway: Callable[..., Gateway], tmp_path: Path) -> Callable[..., Seeded]:
    """`seeded(keys=KEYS, rows=300, days=6, **sections)`: seed a ledger, then start a gateway on it."""

    def start(keys: list[dict[str, Any]] | tuple[()] = tuple(KEYS), rows: int = 300, days: float = 6,
              **sections: Any) -> Seeded:
        db = tmp_path / "seeded.db"
        made = seed(db, rows=rows, days=days)
        sections.setdefault("budgets", [{"key": "*", "model": "gpt-4o", "budget_usd": 0.02, "budget_period": "week"}])
        return Seeded(gateway(keys=list(keys), db=db, **sections), made)

    return start
