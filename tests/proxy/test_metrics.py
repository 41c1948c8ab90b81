"""/metrics: model and key labels with bounded cardinality, budget gauges."""

from __future__ import annotations

import re
from collections.abc import Callable

from proxy.stages.metrics import OTHER, BoundedLabel

from .conftest import Gateway, fetch

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_random_model_names_cannot_grow_the_label_set(gateway: Callable[..., Gateway]) -> None:
    gw = gateway()
    for i in range(130):
        fetch("POST", gw.url + "/chat/completions", json={**CHAT, "model": f"junk-{i}"})
    gw.rows(expect=130)
    text = fetch("GET", gw.root + "/metrics", key=None).body.decode()
    models = set(re.findall(r'oaigate_requests_total\{[^}]*model="([^"]*)"', text))
    assert len(models) == 101 and OTHER in models  # the first 100, then "other"
    other = re.search(r'oaigate_requests_total\{[^}]*model="other"[^}]*\} ([0-9.]+)', text)
    assert other is not None and float(other.group(1)) == 30


def test_budget_gauges_show_limit_spent_and_reserved(gateway: Callable[..., Gateway]) -> None:
    gw = gateway(keys=[{"name": "ci", "key": "sk-ci-1", "budget_usd": 0.5}], limits={"budget_usd": 3})
    with gw.client(key="sk-ci-1") as client:
        client.chat.completions.create(**CHAT)
    (row,) = gw.rows(expect=1)
    text = fetch("GET", gw.root + "/metrics", key="sk-ci-1").body.decode()
    assert 'oaigate_budget_limit_usd{period="day",scope="key:ci"} 0.5' in text
    assert 'oaigate_budget_limit_usd{period="day",scope="global"} 3.0' in text
    spent = re.search(r'oaigate_budget_spent_usd\{period="day",scope="key:ci"\} ([0-9.e-]+)', text)
    assert spent is not None and round(float(spent.group(1)) * 1e6) == row["cost_microusd"] > 0
    assert 'oaigate_budget_reserved_usd{period="day",scope="key:ci"} 0.0' in text


def test_bounded_label() -> None:
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("a", "b", "c", "a", None)] == ["a", "b", OTHER, "a", OTHER]
