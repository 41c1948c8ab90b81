"""Image inputs are reserved by OpenAI's tile rule: high-detail images cannot overspend a budget.

Through `oaigate serve` (a real process, the mock as upstream) with the real SDK; the expected image
costs are OpenAI's published numbers for gpt-4o-mini (2,833 base + 5,667 per 512-pixel tile).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from mockserver.api.media.images import png
from mockserver.engine.rng import RequestRandom
from proxy.errors import ContextTooLong
from proxy.exchange import Exchange
from proxy.stages.estimate import Estimator
from proxy.wire.pricing import PriceTable
from proxy.wire.tokens import count_chat_prompt

from .conftest import fetch, read_rows
from .processes import MOCK_CONFIG, Serve, write_config
from .wire.test_vision import jpeg, webp

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


def estimated_prompt(path: str, body: dict[str, Any], check_window: bool = True) -> int:
    """The prompt tokens the gateway's estimate stage reserves for `body` on a budgeted key."""
    ex = Exchange("POST", path, "", CIMultiDictProxy(CIMultiDict()), json.dumps(body).encode())
    estimator = Estimator(4096, prices=PriceTable(), budgeted=lambda _: (True, None), check_window=check_window)
    asyncio.run(estimator.request(ex))
    assert ex.estimate is not None
    return ex.estimate.prompt


def over_the_window(client: openai.OpenAI, path: str, body: dict[str, Any], output: int) -> bool:
    """Whether `body` (three high-detail images can pass 128k tokens) is over its model's context
    window; if so, the gateway must refuse it before any upstream call, with OpenAI's 400."""
    window = PriceTable().context_window(body["model"])
    try:
        if window is None or estimated_prompt(path, body, check_window=False) + output <= window:
            return False
    except ContextTooLong:  # the estimate stops counting past the window
        pass
    with pytest.raises(openai.BadRequestError) as refused:
        if path == "/v1/responses":
            client.responses.create(**body)
        else:
            client.chat.completions.create(**body)
    assert refused.value.code == "context_length_exceeded"
    return True


IMAGES = st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from(["low", "high", "auto"]),
                            st.sampled_from(["png", "gif", "jpeg", "webp"])), min_size=1, max_size=3)


def header_url(width: int, height: int, kind: str) -> str:
    """A data URL of an image header of that size (what both sides read; the pixels are never looked at)."""
    raw = {"png": lambda: png(min(width, 64), min(height, 64), RequestRandom("v"))[:16]
           + struct.pack(">II", width, height) + bytes(40),
           "gif": lambda: b"GIF89a" + struct.pack("<HH", width, height) + bytes(20),
           "jpeg": lambda: jpeg(width, height),
           "webp": lambda: webp(b"VP8X", width, height)}[kind]()
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=IMAGES, model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-4.1"]))
@example(images=[(513, 1025, "high", "png"), (513, 1537, "high", "png"), (513, 1537, "high", "png")],
         model="gpt-4o-mini")  # ~133k tokens: over the window, refused (found by a full run)
def test_the_estimate_of_data_url_images_is_what_the_mock_charges(client: openai.OpenAI, images: list[Any],
                                                                  model: str) -> None:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Describe them."}]
    parts += [{"type": "image_url", "image_url": {"url": header_url(w, h, kind), "detail": detail}}
              for w, h, detail, kind in images]
    body = {"model": model, "messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    if over_the_window(client, "/v1/chat/completions", body, 1):
        return
    made = client.chat.completions.create(**body)
    assert made.usage is not None
    assert estimated_prompt("/v1/chat/completions", body) == made.usage.prompt_tokens


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=IMAGES, remote=st.booleans())
def test_the_responses_estimate_covers_what_the_mock_charges(client: openai.OpenAI, images: list[Any],
                                                             remote: bool) -> None:
    """Data URLs: the images add exactly what the mock charges; remote URLs: never less."""
    def both(parts: list[dict[str, Any]]) -> tuple[int, int] | None:
        body = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": parts}], "max_output_tokens": 16}
        if not remote and over_the_window(client, "/v1/responses", body, 16):  # remote: sizes unknown
            return None
        made = client.responses.create(**body)
        assert made.usage is not None
        return estimated_prompt("/v1/responses", body), made.usage.input_tokens

    text = {"type": "input_text", "text": "Describe them."}
    pictures = [{"type": "input_image", "detail": detail,
                 "image_url": f"https://example.com/{n}.png" if remote else header_url(w, h, kind)}
                for n, (w, h, detail, kind) in enumerate(images)]
    with_images, text_only = both([text, *pictures]), both([text])
    if with_images is None or text_only is None:
        return
    (estimate, charged), (text_estimate, text_charged) = with_images, text_only
    assert estimate >= charged
    if not remote:
        assert estimate - text_estimate == charged - text_charged


@pytest.mark.parametrize("check_window", [True, False])
def test_remote_images_whose_worst_case_passes_the_window_are_not_refused(client: openai.OpenAI,
                                                                          check_window: bool) -> None:
    """Three remote images on gpt-4o-mini could cost 3 x 48,169 tokens at most, past its 128K window, or
    3 x 8,500 at least: the window pre-check refuses only on the least, the budget reserves the window."""
    parts = [{"type": "input_image", "image_url": f"https://example.com/{n}.png", "detail": "high"} for n in range(3)]
    body = {"model": MODEL, "input": [{"role": "user", "content": parts}], "max_output_tokens": 16}
    assert estimated_prompt("/v1/responses", body, check_window) == 128_000
    made = client.responses.create(**body)
    assert made.usage is not None and made.usage.input_tokens < 128_000
    many = {**body, "input": [{"role": "user", "content": parts * 6}]}  # 18 x 8,500 > 128K even at least
    with pytest.raises(ContextTooLong):
        estimated_prompt("/v1/responses", many, check_window)
