"""Image inputs are reserved by OpenAI's tile rule: high-detail images cannot overspend a budget.

Through `oaigate serve` (a real process, the mock as upstream) with the real SDK; the expected image
costs are OpenAI's published numbers for gpt-4o-mini (2,833 base + 5,667 per 512-pixel tile).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from mockserver.api.media.images import png
from mockserver.engine.rng import RequestRandom
from proxy.wire.tokens import count_chat_prompt

from .conftest import fetch, read_rows
from .processes import MOCK_CONFIG, Serve, write_config

MODEL = "gpt-4o-mini"
MAX_TOKENS = 20
BASE, TILE = 2833, 5667  # gpt-4o-mini's image cost: base + per tile


def data_url(width: int, height: int) -> str:
    return "data:image/png;base64," + base64.b64encode(png(width, height, RequestRandom("vision"))).decode()


def chat(images: list[str], detail: str = "high") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What differs between these pictures?"}]
    parts += [{"type": "image_url", "image_url": {"url": url, "detail": detail}} for url in images]
    return [{"role": "user", "content": parts}]


def budgeted_keys(tmp_path: Path, budgets: dict[str, int]) -> Path:
    keys = "".join(f'\n[[keys]]\nname = "{name}"\nkey = "sk-{name}"\nbudget_tokens = {tokens}\n'
                   for name, tokens in budgets.items())
    return write_config(tmp_path, MOCK_CONFIG + keys)


def spent(url: str, key: str) -> tuple[int, int]:
    """(spent, reserved) tokens of the key's own budget, from /oaigate/budgets."""
    reply = fetch("GET", url.removesuffix("/v1") + "/oaigate/budgets", key=key)
    assert reply.status == 200, reply.body
    text = json.loads(reply.body)
    (own,) = [b for b in (text["budgets"] if isinstance(text, dict) else text) if b["scope"] == f"key:{key[3:]}"]
    return own["spent_tokens"], own["reserved_tokens"]


def test_high_detail_images_are_reserved_at_what_the_upstream_charges(serve: Callable[..., Serve],
                                                                       tmp_path: Path) -> None:
    images = [data_url(1024, 1024), data_url(2048, 4096), data_url(300, 200)]  # 4, 6 and 1 tiles
    prompt = count_chat_prompt(chat([]), MODEL) + 3 * BASE + (4 + 6 + 1) * TILE
    worst = prompt + MAX_TOKENS
    db = tmp_path / "ledger.db"
    process = serve("--port", "0", "--db", str(db),
                    "--config", str(budgeted_keys(tmp_path, {"roomy": worst, "tight": worst - 1})))
    url = process.ready_url()

    with openai.OpenAI(base_url=url, api_key="sk-tight", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=chat(images), max_tokens=MAX_TOKENS)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (refused.value.status_code, error["type"], error["code"]) == (429, "insufficient_quota", "budget_exceeded")
    assert spent(url, "sk-tight") == (0, 0)

    with openai.OpenAI(base_url=url, api_key="sk-roomy", max_retries=0, timeout=30) as client:
        made = client.chat.completions.create(model=MODEL, messages=chat(images), max_tokens=MAX_TOKENS)
    assert made.usage is not None and made.usage.prompt_tokens == prompt  # the mock charges the tile rule
    used = made.usage.prompt_tokens + made.usage.completion_tokens
    assert spent(url, "sk-roomy") == (used, 0) and used <= worst

    assert process.stop() == 0
    refused_row, made_row = read_rows(db)
    assert (refused_row["status"], refused_row["prompt_tokens"] or 0, refused_row["cost_microusd"] or 0) == (429, 0, 0)
    assert made_row["status"] == 200 and made_row["prompt_tokens"] == prompt


def test_a_remote_image_is_reserved_at_its_detail_level_worst_case(serve: Callable[..., Serve],
                                                                   tmp_path: Path) -> None:
    """The gateway never fetches: a URL image reserves the most any size could cost (8 tiles)."""
    remote = ["https://example.com/a.png", "https://example.com/b.jpg"]
    text = count_chat_prompt(chat([]), MODEL)
    worst = text + 2 * (BASE + 8 * TILE) + MAX_TOKENS
    low = text + 2 * BASE + MAX_TOKENS
    db = tmp_path / "ledger.db"
    process = serve("--port", "0", "--db", str(db), "--config", str(budgeted_keys(
        tmp_path, {"enough": worst, "short": worst - 1, "low": low})))
    url = process.ready_url()
    with openai.OpenAI(base_url=url, api_key="sk-short", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=chat(remote), max_tokens=MAX_TOKENS)
    assert spent(url, "sk-short") == (0, 0)
    with openai.OpenAI(base_url=url, api_key="sk-enough", max_retries=0, timeout=30) as client:
        made = client.chat.completions.create(model=MODEL, messages=chat(remote), max_tokens=MAX_TOKENS)
    assert made.usage is not None and made.usage.prompt_tokens + made.usage.completion_tokens <= worst
    with openai.OpenAI(base_url=url, api_key="sk-low", max_retries=0, timeout=30) as client:  # low: the base only
        made = client.chat.completions.create(model=MODEL, messages=chat(remote, "low"), max_tokens=MAX_TOKENS)
    assert made.usage is not None and made.usage.prompt_tokens == low - MAX_TOKENS
    assert process.stop() == 0
