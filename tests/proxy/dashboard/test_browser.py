"""The page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is
downloaded), against a gateway whose ledger holds a few hundred requests over several days: what it
shows is the ledger's sums, filters change the table, a new request appears without a reload, a key
sees only its own rows, a wrong key sees the 401 message, and nothing goes to the console as an error.

Marked `browser`: `pytest -m 'not browser'` leaves them out of a quick loop. Without Chromium they are
skipped, except under CI=true, where that is a failure."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..db.conftest import pg_server, pg_url  # noqa: F401 - the session's PostgreSQL server, a database per test
from .conftest import ADMIN, ALICE, Seeded

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

ROWS = "#rows tr.row"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="oaigate-chromium-")
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS,
                                                            headless=True)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


class Page:
    """A tab on the dashboard that records console errors and failed requests."""

    def __init__(self, context: Any, url: str, width: int = 1280) -> None:
        self.page = context.new_page()
        self.page.set_viewport_size({"width": width, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url + "/dashboard")

    def login(self, key: str) -> None:
        self.page.wait_for_selector("#login:not([hidden])")
        self.page.fill("#key-input", key)
        self.page.click("#login-form button")

    def loaded(self, at_least: int = 1) -> None:
        self.page.wait_for_function(f"() => Number(document.body.dataset.loaded || 0) >= {at_least}")

    def reload_count(self) -> int:
        return int(self.page.evaluate("Number(document.body.dataset.loaded || 0)"))

    def rows(self) -> list[dict[str, str]]:
        return self.page.eval_on_selector_all(
            "#rows tr.row", "rows => rows.map(r => ({id: r.dataset.id, key: r.dataset.key, status: r.dataset.status,"
                           " model: r.dataset.model, endpoint: r.dataset.endpoint}))")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Callable[..., Page]]:
    opened: list[Page] = []

    def open_(url: str, width: int = 1280) -> Page:
        page = Page(browser, url, width)
        opened.append(page)
        return page

    yield open_
    for page in opened:
        page.close()


def ledger_sums(gw: Seeded, since: str, until: str, group: str | None = None) -> Any:
    conn = sqlite3.connect(gw.gateway.db)
    try:
        select = (f"{group}, " if group else "") + (
            "COALESCE(SUM(CASE WHEN simulated THEN 0 ELSE cost_microusd END), 0), COUNT(*), SUM(prompt_tokens), "
            "SUM(completion_tokens)")
        sql = f"SELECT {select} FROM requests WHERE started_at >= ? AND started_at < ?"
        if group:
            return {row[0]: row[1:] for row in conn.execute(sql + " GROUP BY 1", [since, until])}
        return conn.execute(sql, [since, until]).fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("range_", ["24h", "7d"])
def test_totals_and_chart_points_are_the_ledgers_sums(seeded: Callable[..., Seeded], tab: Callable[..., Page],
                                                      range_: str) -> None:
    gw = seeded()
    page = tab(gw.root)
    page.login(ADMIN)
    page.loaded()
    if range_ != "7d":
        before = page.reload_count()
        page.page.check(f"input[name=range][value='{range_}']")
        page.loaded(before + 1)
        page.page.wait_for_selector("#chart svg[data-by='hour']")  # not an update that was under way
    window = page.page.locator("#window")
    since, until = window.get_attribute("data-since"), window.get_attribute("data-until")
    assert since and until
    cost, requests, prompt, completion = ledger_sums(gw, since, until)
    value = lambda id_: page.page.get_attribute(f"#total-{id_}", "data-value")  # noqa: E731
    assert (value("cost"), value("requests"), value("tokens-in"), value("tokens-out")) == \
        (str(cost), str(requests), str(prompt), str(completion))
    by = "substr(started_at, 1, 13)" if range_ == "24h" else "substr(started_at, 1, 10)"
    expected = ledger_sums(gw, since, until, by)
    points = page.page.eval_on_selector_all(
        "#chart g.point",
        "gs => gs.map(g => [g.dataset.bucket, Number(g.dataset.costMicro), Number(g.dataset.requests)])")
    assert len(points) >= (24 if range_ == "24h" else 7)
    shown = {bucket: (cost_, n) for bucket, cost_, n in points if n}
    cut = 13 if range_ == "24h" else 10
    assert {b[:cut]: v for b, v in shown.items()} == {g: (c, n) for g, (c, n, _, _) in expected.items()}
    assert page.errors == []


def test_filters_change_the_table_and_rows_expand(seeded: Callable[..., Seeded], tab: Callable[..., Page]) -> None:
    gw = seeded()
    page = tab(gw.root)
    page.login(ADMIN)
    page.loaded()
    everything = page.rows()
    assert len(everything) == 25 and {r["key"] for r in everything} >= {"alice", "ci"}
    count = page.reload_count()
    page.page.select_option("#f-status", "5xx")
    page.loaded(count + 1)
    page.page.wait_for_function(
        f"() => [...document.querySelectorAll({ROWS!r})].every(r => Number(r.dataset.status) >= 500)")
    errors = page.rows()
    assert errors and all(r["status"].startswith("5") for r in errors)
    count = page.reload_count()
    page.page.select_option("#f-status", "")
    page.page.select_option("#f-key", "ci")
    page.loaded(count + 1)
    page.page.wait_for_function(f"() => [...document.querySelectorAll({ROWS!r})].every(r => r.dataset.key === 'ci')")
    assert {r["key"] for r in page.rows()} == {"ci"}
    page.page.select_option("#f-key", "")
    page.page.wait_for_function(
        f"() => new Set([...document.querySelectorAll({ROWS!r})].map(r => r.dataset.key)).size > 1")
    first = page.page.locator("#rows tr.row").first
    first.focus()
    page.page.keyboard.press("Enter")
    assert first.get_attribute("aria-expanded") == "true"
    detail = page.page.locator("#rows tr.detail").inner_text()
    assert "upstream_request_id" in detail and "ttfb_ms" in detail and "overhead_ms" in detail
    older = page.page.locator("#older")
    count = page.reload_count()
    older.click()
    page.loaded(count + 1)
    page.page.wait_for_selector("#newer:not([disabled])")
    assert not {r["id"] for r in page.rows()} & {r["id"] for r in everything}
    assert page.errors == []


def test_a_new_request_appears_without_a_reload(seeded: Callable[..., Seeded], tab: Callable[..., Page]) -> None:
    gw = seeded()
    page = tab(gw.root)
    page.login(ADMIN)
    page.loaded()
    page.page.evaluate("window.__same_document = true")
    with gw.gateway.client(ALICE) as client:
        made = client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=[{"role": "user", "content": "hello"}])
    row_id = made.headers["x-oaigate-request-id"]
    page.page.wait_for_selector(f"#rows tr.row[data-id='{row_id}']", timeout=10_000)
    assert page.page.evaluate("window.__same_document") is True  # no reload happened
    assert page.rows()[0]["id"] == row_id
    assert page.errors == []


def test_a_key_sees_only_its_own_rows(seeded: Callable[..., Seeded], tab: Callable[..., Page]) -> None:
    gw = seeded()
    page = tab(gw.root)
    page.login(ALICE)
    page.loaded()
    assert {r["key"] for r in page.rows()} == {"alice"}
    names = page.page.eval_on_selector_all("#by-key li", "lis => lis.map(li => li.dataset.name)")
    assert names == ["alice"]
    budgets = page.page.inner_text("#budgets")
    assert "key:alice" in budgets and "key:ci" not in budgets
    assert "alice" in page.page.inner_text("#who")
    assert page.page.evaluate("document.cookie") == "" and page.page.evaluate("localStorage.length") == 0
    assert ALICE not in page.page.url
    assert page.errors == []


def test_a_wrong_key_sees_the_401_message(seeded: Callable[..., Seeded], tab: Callable[..., Page]) -> None:
    gw = seeded()
    page = tab(gw.root)
    page.login("sk-not-a-key")
    page.page.wait_for_function("() => document.getElementById('login-error').textContent.length > 0")
    assert "Incorrect API key provided" in page.page.inner_text("#login-error")
    assert page.page.is_hidden("#main")
    assert page.page.evaluate("sessionStorage.length") == 0
    # the browser reports the 401 answers themselves as console errors: those are expected here
    assert all("401" in error for error in page.errors)


def test_an_open_gateway_on_a_phone(seeded: Callable[..., Seeded], tab: Callable[..., Page]) -> None:
    gw = seeded(keys=(), days=1.5)
    page = tab(gw.root, width=390)
    page.loaded()
    count = page.reload_count()
    page.page.check("input[name=range][value='all']")
    page.loaded(count + 1)
    assert page.page.get_attribute("#chart svg", "data-by") == "hour"  # all of it is under two days: by hour
    assert page.page.get_attribute("#total-requests", "data-value") == str(len(gw.rows))
    assert page.page.is_hidden("#login")
    overflow = page.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    budgets = page.page.locator("#budgets .meter[data-state='over']")
    assert budgets.count() >= 1  # the gpt-4o budget is exhausted: drawn red
    assert page.page.inner_text("#health").count("mock") >= 1
    assert page.errors == []


def test_the_page_on_a_postgres_ledger_shows_its_sums(gateway: Callable[..., Any], tab: Callable[..., Page],
                                                      pg_url: str) -> None:  # noqa: F811
    """`[ledger] url`: the page reads PostgreSQL, and its totals are the table's sums there."""
    from datetime import UTC, datetime

    import psycopg

    from .conftest import KEYS
    from .seed import make_rows
    from .test_postgres import load_postgres

    rows = make_rows(300, 6, datetime.now(UTC))
    load_postgres(pg_url, rows)
    gw = gateway(keys=KEYS, ledger={"url": pg_url})
    page = tab(gw.root)
    page.login(ADMIN)
    page.loaded()
    window = page.page.locator("#window")
    since, until = window.get_attribute("data-since"), window.get_attribute("data-until")
    with psycopg.connect(pg_url) as conn:
        cost, requests, prompt, completion = conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN simulated <> 0 THEN 0 ELSE cost_microusd END), 0), COUNT(*), "
            "SUM(prompt_tokens), SUM(completion_tokens) FROM requests WHERE started_at >= %s AND started_at < %s",
            [since, until]).fetchone()
    assert requests > 200
    value = lambda id_: page.page.get_attribute(f"#total-{id_}", "data-value")  # noqa: E731
    assert (value("cost"), value("requests"), value("tokens-in"), value("tokens-out")) == \
        (str(cost), str(requests), str(prompt), str(completion))
    points = page.page.eval_on_selector_all("#chart g.point", "gs => gs.map(g => Number(g.dataset.requests))")
    assert sum(points) == requests
    assert len(page.rows()) == 25
    assert page.errors == []
