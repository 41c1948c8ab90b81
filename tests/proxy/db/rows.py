"""Ledger rows for tests: plausible, varied, and the same on both engines."""

from __future__ import annotations

import random
import uuid
from typing import Any

from proxy.db.schema import COLUMNS

KEYS = ["alice", "Bob", "ci", "ci-2", None]
MODELS = ["gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small", "Unpriced-model", None]
ENDPOINTS = ["/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/models", "/v1/images/generations"]


def row(rng: random.Random, day: int = 1, **fields: Any) -> dict[str, Any]:
    """One row with every column of `COLUMNS` (None where a real row may have none)."""
    model = rng.choice(MODELS)
    status = rng.choice([200, 200, 200, 201, 400, 429, 500, 0])
    usage = status < 400 and status != 0 and rng.random() < 0.8
    prompt = rng.randint(0, 5000) if usage else None
    completion = rng.randint(0, 900) if usage else None
    priced = usage and model not in (None, "Unpriced-model")
    simulated = rng.random() < 0.3
    hour, minute, milli = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 999)
    started = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{rng.randint(0, 59):02d}.{milli:03d}Z"
    values: dict[str, Any] = {
        "id": "req_" + uuid.UUID(int=rng.getrandbits(128)).hex,
        "started_at": started,
        "finished_at": started,
        "key_name": rng.choice(KEYS),
        "method": rng.choice(["POST", "POST", "GET"]),
        "endpoint": rng.choice(ENDPOINTS),
        "model_requested": model,
        "model_served": model if rng.random() < 0.7 else None,
        "status": status,
        "stream": int(rng.random() < 0.3),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": rng.randint(0, 100) if usage else None,
        "reasoning_tokens": rng.randint(0, 50) if usage else None,
        "usage_source": rng.choice(["response", "stream", "estimated"]) if usage else None,
        "cost_microusd": rng.randint(0, 250_000) if priced else None,
        "replayed_cost_microusd": rng.randint(0, 9_000) if simulated and rng.random() < 0.5 else None,
        "latency_ms": round(rng.uniform(1, 900), 3),
        "ttfb_ms": round(rng.uniform(1, 300), 3),
        "overhead_ms": round(rng.uniform(0, 2), 3),
        "upstream": rng.choice(["api.openai.com", "mock", "http://127.0.0.1:9"]),
        "attempts": rng.randint(1, 3),
        "fixture": rng.choice([None, "hit", "miss"]),
        "error_type": None if status < 400 else "upstream_error",
        "upstream_request_id": "req-up-" + str(rng.getrandbits(32)),
        "object_id": rng.choice([None, None, "resp_" + str(rng.getrandbits(24))]),
        "simulated": int(simulated),
        "request_body": None,
        "response_body": None,
    }
    values.update(fields)
    return {name: values.get(name) for name in COLUMNS}  # a column added later is None on both engines


def rows(count: int, seed: int = 0, days: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [row(rng, day=rng.randint(1, days)) for _ in range(count)]
