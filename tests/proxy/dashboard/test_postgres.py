"""The dashboard on a PostgreSQL ledger (`[ledger] url`): the same rows in a SQLite file and in a real
PostgreSQL server, one gateway on each, and every JSON answer the page and OpenAI's usage API read is
the same on both, byte for byte once parsed (only what is about the process itself, its uptime, differs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.db import queries
from proxy.db.postgres import connect, migrate, open_readonly, write_batch
from proxy.db.reports import ledger_time
from proxy.db.reports import open_readonly as open_sqlite
from proxy.db.schema import COLUMNS
from proxy.db.schema import connect as connect_sqlite

from ..conftest import Gateway, fetch
from ..db.conftest import pg_server, pg_url  # noqa: F401 - the session's PostgreSQL server, a database per test
from .conftest import ADMIN, ALICE, KEYS
from .seed import insert, make_rows

BUDGETS = [{"key": "*", "model": "gpt-4o", "budget_usd": 0.02, "budget_period": "week"}]


def load_postgres(url: str, rows: list[dict[str, Any]]) -> None:
    with connect(url) as conn:
        migrate(conn)
        write_batch(conn, [tuple(r.get(c) for c in COLUMNS) for r in rows])


def load_sqlite(path: Path, rows: list[dict[str, Any]]) -> None:
    conn = connect_sqlite(str(path))
    try:
        insert(conn, rows)
    finally:
        conn.close()


@dataclass
class Twins:
    sqlite: Gateway
    postgres: Gateway
    now: datetime

    def both(self, path: str, key: str | None = ADMIN) -> tuple[Any, Any]:
        answers = []
        for gw in (self.sqlite, self.postgres):
            reply = fetch("GET", gw.root + path, key=key)
            answers.append((reply.status, json.loads(reply.body)))
        return answers[0], answers[1]


@pytest.fixture
def twins(gateway: Callable[..., Gateway], tmp_path: Path, pg_url: str) -> Twins:  # noqa: F811
    now = datetime.now(UTC)
    rows = make_rows(400, 8, now)
    load_sqlite(tmp_path / "twin.db", rows)
    load_postgres(pg_url, rows)
    lite = gateway(keys=KEYS, db=tmp_path / "twin.db", budgets=BUDGETS)
    pg = gateway(keys=KEYS, ledger={"url": pg_url}, budgets=BUDGETS)
    return Twins(lite, pg, now)


def test_every_dashboard_answer_is_the_same_on_both_engines(twins: Twins) -> None:
    now = twins.now + timedelta(seconds=1)
    until = ledger_time(now)
    ago = {span: ledger_time(now - timedelta(days=span, minutes=17)) for span in (2, 7, 30)}  # cuts an hour in two
    paths = [f"/oaigate/spend?by={by}&since={ago[span]}&until={until}" + (f"&split={split}" if split else "")
             for by in ("hour", "day", "model", "key", "endpoint") for span in (2, 30)
             for split in (None, "model", "key")]
    paths += [f"/oaigate/spend?by=day&since={ago[7]}&until={until}&{f}" for f in ("key=ci", "model=my-llama",
                                                                             "endpoint=/v1/embeddings")]
    paths += ["/oaigate/requests?limit=500", "/oaigate/requests?limit=13", "/oaigate/limits"]
    paths += [f"/oaigate/requests?limit=50&{f}" for f in ("status=5xx", "status=error", "status=cut", "key=alice",
                                                          "model=gpt-4o", "endpoint=/v1/responses", f"since={ago[2]}")]
    end = int(now.timestamp())
    start = end - 9 * 86400
    for kind in ("completions", "embeddings", "moderations"):
        for width, limit in (("1d", 10), ("1h", 168)):
            paths.append(f"/oaigate/v1/organization/usage/{kind}?start_time={start}&end_time={end}"
                         f"&bucket_width={width}&limit={limit}&group_by=model,api_key_id")
    paths.append(f"/oaigate/v1/organization/usage/completions?start_time={end - 3600}&end_time={end}"
                 "&bucket_width=1m&limit=60")
    paths.append(f"/oaigate/v1/organization/costs?start_time={start}&end_time={end}&limit=10"
                 "&group_by=line_item,api_key_id")
    checked = 0
    for path in paths:
        lite, pg = twins.both(path)
        assert lite[0] == 200, (path, lite)
        assert pg == lite, path
        checked += bool(json.dumps(lite[1]).count("requests") or "data" in lite[1])
    assert checked == len(paths)
    # the pages follow on: the cursor of one engine's page is the other's
    _, page = twins.both("/oaigate/requests?limit=37")
    cursor = page[1]["next_before"]
    assert cursor
    lite, pg = twins.both(f"/oaigate/requests?limit=37&before={cursor}")
    assert pg == lite and lite[1]["data"]


def test_a_key_sees_only_its_own_on_postgres_too(twins: Twins) -> None:
    until = ledger_time(twins.now + timedelta(seconds=1))
    since = ledger_time(twins.now - timedelta(days=30))
    for path in (f"/oaigate/spend?by=key&since={since}&until={until}", "/oaigate/requests?limit=500",
                 "/oaigate/limits"):
        lite, pg = twins.both(path, ALICE)
        assert pg == lite, path
    _, (_, spend) = twins.both(f"/oaigate/spend?by=key&since={since}&until={until}", ALICE)
    assert [row["key"] for row in spend["rows"]] == ["alice"]
    assert twins.both("/oaigate/spend", "sk-wrong")[1][0] == 401


def test_status_and_a_new_request_on_postgres(twins: Twins) -> None:
    lite, pg = twins.both("/oaigate/status")
    drop = lambda body: {k: v for k, v in body.items() if k != "uptime_s"}  # noqa: E731
    assert drop(pg[1]) == drop(lite[1])
    with twins.postgres.client(ALICE) as client:
        made = client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=[{"role": "user", "content": "hi"}])
    twins.postgres.settle()
    reply = fetch("GET", twins.postgres.root + "/oaigate/requests?limit=1", key=ALICE)
    assert json.loads(reply.body)["data"][0]["id"] == made.headers["x-oaigate-request-id"]
    status = json.loads(fetch("GET", twins.postgres.root + "/oaigate/status", key=ADMIN).body)
    assert status["ledger"]["written"] == 1


def test_queries_give_the_same_answers_on_both(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """The read side itself (`proxy/db/queries.py`), both dialects, windows that cut hours in two."""
    now = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    rows = make_rows(300, 4, now, seed=3)
    load_sqlite(tmp_path / "q.db", rows)
    load_postgres(pg_url, rows)
    lite, pg = open_sqlite(tmp_path / "q.db"), open_readonly(pg_url)
    try:
        assert queries.dialect_of(pg) is queries.POSTGRES and queries.dialect_of(lite) is queries.SQLITE
        for since, until in [(None, None), (now - timedelta(days=2, minutes=7), now - timedelta(hours=3, seconds=9))]:
            where = queries.Filter(since, until)
            assert queries.total(pg, where) == queries.total(lite, where)
            for by in ("minute", "hour", "day", "model", "key", "endpoint"):
                assert queries.grouped(pg, where, by) == queries.grouped(lite, where, by), by  # type: ignore[arg-type]
            assert queries.cells(pg, where, "hour") == queries.cells(lite, where, "hour")
            assert queries.Rollup().cells(pg, where, now) == queries.Rollup().cells(lite, where, now)
            for status in queries.STATUS_CLASSES:
                assert queries.page(pg, queries.Filter(since, until, status=status), 20) == \
                    queries.page(lite, queries.Filter(since, until, status=status), 20), status
    finally:
        lite.close()
        pg.close()


def _table_cells(url: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """(the cells the summary gives, the cells the table gives) for the whole ledger."""
    reader = open_readonly(url)
    try:
        return queries.Rollup().cells(reader, queries.Filter()), queries.cells(reader, queries.Filter(), "hour")
    finally:
        reader.close()


def test_the_summary_follows_every_write_replace_and_prune(pg_url: str) -> None:  # noqa: F811
    from proxy.db.postgres import SUMMARY, delete_before

    now = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    rows = make_rows(500, 3, now, seed=21)
    tuples = [tuple(r.get(c) for c in COLUMNS) for r in rows]
    with connect(pg_url) as conn:
        migrate(conn)
        write_batch(conn, tuples[:300], "copy")
        for start in range(300, 500, 7):  # small batches: executemany
            write_batch(conn, tuples[start:start + 7], "executemany")
    summary, table = _table_cells(pg_url)
    assert summary == table and sum(v[0] for v in table.values()) == 500
    # rows written again with other values (a retry, a background response settled late): replaced
    changed = [dict(r, cost_microusd=(r["cost_microusd"] or 0) + 1000, status=200, key_name="late")
               for r in rows[::9]]
    with connect(pg_url) as conn:
        write_batch(conn, [tuple(r.get(c) for c in COLUMNS) for r in changed], "copy")
        write_batch(conn, [tuple(r.get(c) for c in COLUMNS) for r in changed[:5]], "executemany")
    summary, table = _table_cells(pg_url)
    assert summary == table and any(cell[1] == "late" for cell in table)
    delete_before(pg_url, ledger_time(now - timedelta(days=1, minutes=30)), batch=50, vacuum=False, dry_run=False)
    summary, table = _table_cells(pg_url)
    assert summary == table and sum(v[0] for v in table.values()) < 500
    with connect(pg_url) as conn:  # a ledger from before the summary: the next start builds it from the rows
        conn.execute(f"DROP TABLE {SUMMARY} CASCADE")
        conn.execute(f"DROP TRIGGER {SUMMARY}_insert ON requests")
        migrate(conn)
        empty = conn.execute(f"SELECT COUNT(*) FROM {SUMMARY} WHERE requests = 0").fetchone()[0]
    summary, table = _table_cells(pg_url)
    assert summary == table and empty == 0


def test_the_summary_is_right_with_writers_at_once(pg_url: str) -> None:  # noqa: F811
    """Two gateways writing the same hours at the same time (each its own connection and batches)."""
    import threading

    import psycopg

    now = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
    with connect(pg_url) as conn:
        migrate(conn)
    failures: list[BaseException] = []

    def writer(seed: int) -> None:
        tuples = [tuple(r.get(c) for c in COLUMNS) for r in make_rows(400, 0.1, now, seed=seed)]
        with connect(pg_url) as conn:
            for start in range(0, len(tuples), 20):
                for _ in range(5):  # as the ledger writer does: a failed batch is written again
                    try:
                        write_batch(conn, tuples[start:start + 20])
                        break
                    except psycopg.Error as exc:
                        failures.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary, table = _table_cells(pg_url)
    assert summary == table and sum(v[0] for v in table.values()) == 1200
    assert len(failures) < 5, failures


def test_a_postgresql_ledger_gone_is_a_503_not_an_empty_report(gateway: Callable[..., Gateway],
                                                               pg_url: str) -> None:  # noqa: F811
    """The database is dropped under a running gateway (its kept connection is cut, a new one fails): the
    spend report and the costs API answer 503 `ledger_unavailable`, without the password."""
    from urllib.parse import urlsplit, urlunsplit

    load_postgres(pg_url, make_rows(20, 2, datetime.now(UTC)))
    gw = gateway(keys=KEYS, ledger={"url": pg_url}, budgets=BUDGETS)
    status = fetch("GET", gw.root + "/oaigate/spend?since=30d", key=ADMIN).status
    assert status == 200  # and its connection is kept for the next query
    parts = urlsplit(pg_url)
    with connect(urlunsplit(parts._replace(path="/postgres"))) as admin:
        admin.execute(f'DROP DATABASE "{parts.path.lstrip("/")}" WITH (FORCE)')
    for path in ("/oaigate/spend?since=30d", "/oaigate/spend?since=30d", "/oaigate/v1/organization/costs?start_time=0"):
        reply = fetch("GET", gw.root + path, key=ADMIN)
        body = json.loads(reply.body)
        assert reply.status == 503 and body["error"]["code"] == "ledger_unavailable", (path, reply.body)
        assert (parts.password or "") not in reply.body.decode()
