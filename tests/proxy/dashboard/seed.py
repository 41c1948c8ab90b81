"""A made-up but plausible ledger: requests over several days from a few keys, models and endpoints,
with errors, an unpriced model and simulated rows. Used by the dashboard's tests, its benchmark and the
screenshot script (`seed(path, rows=..., days=..., now=...)`)."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.db.reports import ledger_time
from proxy.db.schema import COLUMNS, connect

# model: (share of traffic, endpoint, micro-dollars per 1k prompt tokens, per 1k completion tokens)
MODELS: dict[str, tuple[float, str, int | None, int | None]] = {
    "gpt-4o-mini": (0.45, "/v1/chat/completions", 150, 600),
    "gpt-4o": (0.15, "/v1/chat/completions", 2500, 10000),
    "o4-mini": (0.10, "/v1/responses", 1100, 4400),
    "text-embedding-3-small": (0.15, "/v1/embeddings", 20, 0),
    "omni-moderation-latest": (0.05, "/v1/moderations", 0, 0),
    "my-llama": (0.10, "/v1/chat/completions", None, None),  # no price: its cost is unknown
}
KEYS = {"ci": 0.5, "alice": 0.3, "bob": 0.2}
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


def make_rows(count: int, days: float, now: datetime, seed: int = 7) -> list[dict[str, Any]]:
    """`count` rows started in the `days` before `now`, more of them in working hours."""
    rng = random.Random(seed)
    models, weights = list(MODELS), [m[0] for m in MODELS.values()]
    keys, key_weights = list(KEYS), list(KEYS.values())
    span = days * 86400
    rows = []
    for n in range(count):
        started = now - timedelta(seconds=rng.random() * span)
        model = rng.choices(models, weights)[0]
        _, endpoint, per_in, per_out = MODELS[model]
        roll = rng.random()
        status = 200 if roll < 0.93 else 429 if roll < 0.96 else 500 if roll < 0.985 else 0
        ok = status == 200
        prompt = rng.randint(20, 4000) if ok else None
        completion = (0 if endpoint in ("/v1/embeddings", "/v1/moderations") else rng.randint(1, 1500)) if ok else None
        cost = None
        if ok and per_in is not None and per_out is not None:
            cost = (prompt or 0) * per_in // 1000 + (completion or 0) * per_out // 1000
        simulated = int(rng.random() < 0.05 and ok and cost is not None)
        latency = rng.uniform(80, 4000)
        rows.append({
            "id": f"gw_seed{seed}_{n:08d}", "started_at": ledger_time(started),
            "finished_at": ledger_time(started + timedelta(milliseconds=latency)),
            "key_name": rng.choices(keys, key_weights)[0], "method": "POST", "endpoint": endpoint,
            "model_requested": model, "model_served": model if ok else None, "status": status,
            "stream": int(rng.random() < 0.4), "prompt_tokens": prompt, "completion_tokens": completion,
            "cached_tokens": (rng.randint(0, prompt // 2) if prompt and rng.random() < 0.2 else 0) if ok else None,
            "reasoning_tokens": (rng.randint(0, completion or 0) if model == "o4-mini" else 0) if ok else None,
            "usage_source": ("reported" if rng.random() < 0.9 else "estimated") if ok else None,
            "cost_microusd": 0 if simulated and cost is not None else cost,
            "replayed_cost_microusd": cost if simulated else None,
            "latency_ms": round(latency, 3), "ttfb_ms": round(latency * rng.uniform(0.05, 0.5), 3),
            "overhead_ms": round(rng.uniform(0.2, 3), 3), "upstream": "https://api.openai.com",
            "attempts": 1 + int(status in (429, 500)), "fixture": "hit" if simulated else None,
            "error_type": {429: "rate_limit_exceeded", 500: "server_error", 0: "client_disconnected"}.get(status),
            "upstream_request_id": f"req_{rng.getrandbits(64):016x}" if status else None,
            "object_id": None, "simulated": simulated, "request_body": None, "response_body": None,
        })
    return rows


def seed(path: str | Path, rows: int = 300, days: float = 6, now: datetime | None = None,
         seed: int = 7) -> list[dict[str, Any]]:
    """Create (or extend) the ledger at `path` with `rows` made-up requests; returns them."""
    from datetime import UTC

    made = make_rows(rows, days, now or datetime.now(UTC), seed)
    conn = connect(str(path))
    try:
        insert(conn, made)
    finally:
        conn.close()
    return made


def insert(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute("BEGIN")
    conn.executemany(_INSERT, [tuple(row.get(c) for c in COLUMNS) for row in rows])
    conn.execute("COMMIT")
