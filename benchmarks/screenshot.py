"""The README's picture of the dashboard, from a seeded ledger:

    PYTHONPATH=. python benchmarks/screenshot.py [--out docs/dashboard.png] [--dark]

Seeds a ledger with two weeks of made-up requests (tests/proxy/dashboard/seed.py), starts a gateway on it
with budgets (one near its cap, one exhausted) and rate limits, sends a few requests through it (to the
embedded mock), opens /dashboard in Debian's headless Chromium and saves the whole page as a PNG."""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import openai

from proxy.app import make_app
from proxy.config import Config
from tests.proxy.dashboard.seed import seed
from tests.servers import ServerThread

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def today_spend(db: Path, key: str) -> float:
    midnight = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00")
    conn = sqlite3.connect(db)
    try:
        micros = conn.execute("SELECT SUM(cost_microusd) FROM requests WHERE key_name = ? AND started_at >= ? "
                              "AND NOT simulated", [key, midnight]).fetchone()[0]
    finally:
        conn.close()
    return (micros or 0) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--dark", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="oaigate-shot-"))
    db = folder / "ledger.db"
    seed(db, rows=2500, days=14)
    os.environ.setdefault("OAIGATE_SHOT_UPSTREAM", "unused")
    config = Config.model_validate({
        "upstream": {"base_url": "mock", "api_key_env": "OAIGATE_SHOT_UPSTREAM"},
        "ledger": {"path": str(db)},
        "limits": {"rpm": 120, "tpm": 200_000},
        "budgets": [{"key": "alice", "budget_usd": round(today_spend(db, "alice") / 0.86, 2) or 0.01},
                    {"key": "ci", "budget_usd": round(today_spend(db, "ci") * 0.9, 2) or 0.01},
                    {"key": "bob", "budget_usd": 25, "budget_period": "month"}],
        "rate_limits": [{"model": "gpt-4o*", "rpm": 30}],
    })
    server = ServerThread(lambda: make_app(config)).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0) as client:
            for n in range(12):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {n}"}])
        from playwright.sync_api import sync_playwright

        with sync_playwright() as driver:
            context = driver.chromium.launch_persistent_context(
                str(folder / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True,
                viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                color_scheme="dark" if args.dark else "light")
            page = context.new_page()
            page.goto(server.url + "/dashboard")
            page.wait_for_function("() => Number(document.body.dataset.loaded || 0) >= 1")
            page.select_option("#split", "model")
            page.wait_for_function("() => Number(document.body.dataset.loaded || 0) >= 2")
            page.locator("#rows tr.row").nth(1).click()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            context.close()
        print(f"wrote {args.out}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
