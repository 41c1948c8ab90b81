"""The same rows in a SQLite file and in PostgreSQL give the same answers: reports, `oaigate spend`,
`oaigate ledger info|prune`, `oaigate budgets` and the views (each engine written by its own writer)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cli import cli
from proxy.db.ledger import connect_readonly, read_rows, shown
from proxy.db.postgres import PgLedgerWriter
from proxy.db.reports import parse_time, spend_by, spend_total
from proxy.db.schema import VIEWS
from proxy.db.writer import LedgerWriter
from tests.postgres_server import PASSWORD

from .rows import row, rows

NOW = "2026-11-06T12:00:00+00:00"
BY = [None, "day", "model", "key", "endpoint", "upstream"]


def load(data: list[dict[str, Any]], db: str) -> None:
    writer = PgLedgerWriter(db) if db.startswith("postgresql://") else LedgerWriter(db)
    writer.start()
    for r in data:
        assert writer.submit(r) is not None
    assert writer.flush(30)
    writer.close()


@pytest.fixture
def both(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, str]]:
    """(SQLite path, PostgreSQL URL), both holding the same 400 rows over five days."""
    data = rows(400, seed=7)
    # ties: groups with the same cost and count, and a key that sorts differently by locale and by byte
    data += [row(__import__("random").Random(i), day=3, key_name=name, cost_microusd=500, status=200, simulated=0,
                 model_served="tie", model_requested="tie") for i, name in enumerate(["zeta", "Zeta", "_z"])]
    db = str(tmp_path / "ledger.db")
    load(data, db)
    load(data, pg_url)
    yield db, pg_url


def run(*args: str) -> Result:
    runner = CliRunner(env={"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "COLUMNS": "200"})
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("by", BY)
@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_spend_says_the_same_on_both(both: tuple[str, str], by: str | None, fmt: str) -> None:
    outputs = []
    for db in both:
        args = ["spend", "--db", db, "--format", fmt, "--now", NOW] + (["--by", by] if by else [])
        result = run(*args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output.replace(Path(both[0]).name, "LEDGER").replace(shown(both[1]), "LEDGER"))
        window = run(*args, "--since", "2026-11-02", "--until", "2026-11-04")
        assert window.exit_code == 0, window.output
        outputs.append(window.output.replace(Path(both[0]).name, "LEDGER").replace(shown(both[1]), "LEDGER"))
    if fmt == "table":  # the title wraps where the ledger's name ends: compare the words, not where lines break
        outputs = [" ".join(output.split()) for output in outputs]
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    assert outputs[0] != outputs[1]  # the window mattered
    if fmt == "json":
        assert json.loads(outputs[0])["total"]["requests"] == 403
    assert PASSWORD not in "".join(outputs)


def test_ledger_info_says_the_same_on_both(both: tuple[str, str]) -> None:
    facts = []
    for db in both:
        result = run("ledger", "info", "--db", db, "--format", "json")
        assert result.exit_code == 0, result.output
        facts.append(json.loads(result.output))
    sqlite, postgres = facts
    assert postgres["path"] == shown(both[1]) and PASSWORD not in postgres["path"]
    assert postgres["size_bytes"] > 0
    same = ("schema_version", "rows", "first_started_at", "last_started_at")
    assert {k: sqlite[k] for k in same} == {k: postgres[k] for k in same}
    text = run("ledger", "info", "--db", both[1])
    assert text.exit_code == 0 and "table and indexes" in text.output and PASSWORD not in text.output


def test_ledger_prune_does_the_same_on_both(both: tuple[str, str]) -> None:
    said = []
    for db in both:
        for extra in (["--dry-run"], [], ["--vacuum"]):
            result = run("ledger", "prune", "--db", db, "--before", "2026-11-03", "--now", NOW, *extra)
            assert result.exit_code == 0, result.output
            said.append(result.output.splitlines()[0].replace(shown(db), "LEDGER"))
    assert said[:3] == said[3:]
    assert said[0].startswith("would delete ") and not said[1].startswith("deleted 0 ")
    assert said[2].startswith("deleted 0 ")
    with closing(sqlite3.connect(both[0])) as lite, psycopg.connect(both[1]) as pg:
        query = "SELECT id FROM requests ORDER BY id"
        assert lite.execute(query).fetchall() == [tuple(r) for r in pg.execute(query).fetchall()]


def test_budgets_say_the_same_on_both(both: tuple[str, str], tmp_path: Path) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text('[limits]\nbudget_usd = 10\n[[keys]]\nname = "alice"\nkey = "sk-a"\nbudget_usd = 1\n'
                      '[[budgets]]\nkey = "*"\nbudget_tokens = 100000\nbudget_period = "month"\n'
                      '[[budgets]]\nmodel = "gpt-4o"\nbudget_usd = 2\nbudget_period = "week"\n')
    outputs = []
    for db in both:
        result = run("budgets", "--config", str(config), "--db", db, "--format", "json", "--now", NOW)
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output))
    assert outputs[0] == outputs[1]
    assert any(float(b["spent_usd"] or 0) > 0 for b in outputs[0]["budgets"])


def test_the_views_say_the_same_on_both(both: tuple[str, str]) -> None:
    for view in VIEWS:
        query = f"SELECT * FROM {view}"  # in the view's own order
        lite = read_rows(both[0], query)
        pg = read_rows(both[1], query)
        assert lite == pg, view


def test_the_config_url_and_password_env_name_the_ledger(both: tuple[str, str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --db the commands read `[ledger] url`, the password from `password_env`."""
    config = tmp_path / "pg.toml"
    config.write_text(f'[ledger]\nurl = "{both[1].replace(":" + PASSWORD, "")}"\npassword_env = "LEDGER_PW"\n')
    monkeypatch.setenv("LEDGER_PW", PASSWORD)
    result = run("spend", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"]["requests"] == 403
    monkeypatch.delenv("LEDGER_PW")
    result = run("spend", "--config", str(config))
    assert result.exit_code == 1 and "LEDGER_PW is not set" in result.output


def test_a_database_without_a_ledger_is_a_clear_error(pg_url: str) -> None:
    result = run("spend", "--db", pg_url)
    assert result.exit_code == 1
    assert "holds no oaigate ledger" in result.output and PASSWORD not in result.output
    assert read_rows(pg_url, "SELECT * FROM requests") == []  # the gateway's start: no ledger yet, nothing to load



@pytest.fixture
def fresh(tmp_path: Path, pg_url: str) -> Iterator[tuple[Path, str]]:
    yield tmp_path, pg_url


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), count=st.integers(0, 60), since=st.sampled_from([None, "2026-11-02", "3d"]),
       by=st.sampled_from(BY))
def test_reports_agree_on_any_rows(fresh: tuple[Path, str], seed: int, count: int, since: str | None,
                                   by: Any) -> None:
    tmp_path, pg_url = fresh
    data = rows(count, seed=seed, days=4)
    db = str(tmp_path / f"ledger-{seed}-{count}.db")
    Path(db).unlink(missing_ok=True)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS requests CASCADE")
        conn.execute("DROP TABLE IF EXISTS oaigate_schema")
    load(data, db)
    load(data, pg_url)
    start = parse_time(since, parse_time(NOW)) if since else None
    answers = []
    for target in (db, pg_url):
        with closing(connect_readonly(target)) as conn:
            answers.append((spend_total(conn, start), spend_by(conn, by, start) if by else None))
    assert answers[0] == answers[1]


def test_the_readers_cannot_write(both: tuple[str, str]) -> None:
    with closing(connect_readonly(both[1])) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM requests")
