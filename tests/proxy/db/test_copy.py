"""`oaigate ledger copy --from FILE --to postgresql://...`: the upgrade from the SQLite ledger, against a real
PostgreSQL server. Every row arrives as the file has it, twice is the same as once, an older file's
missing columns come as NULL, progress goes to stderr, and the password is never printed."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner, Result

from proxy.cli import cli
from proxy.db.schema import COLUMNS
from tests.postgres_server import PASSWORD

from .rows import row, rows
from .test_ledger import load


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["ledger", "copy", *args], catch_exceptions=False)


def table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY id").fetchall()


def file_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY id").fetchall()


def test_every_row_is_copied_and_twice_is_once(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "oaigate.db"
    load(rows(1234, seed=11), str(db))
    first = run("--from", str(db), "--to", pg_url, "--batch", "500")
    assert first.exit_code == 0, first.output
    assert table(pg_url) == file_rows(db) and len(file_rows(db)) == 1234
    assert first.stderr.splitlines()[-1].startswith("copied 1,234 of 1,234 rows to postgresql://oaigate:***@")
    assert len(first.stderr.splitlines()) == 3  # one line per batch
    assert "copied 1,234 requests" in first.stdout and "it holds 1,234" in first.stdout
    assert PASSWORD not in first.output and PASSWORD not in first.stderr

    # the gateway wrote more, and a row changed (a background response settled late): copy again
    more = rows(10, seed=12)
    load(more, str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE requests SET cost_microusd = 424242 WHERE id = ?", [more[0]["id"]])
    again = run("--from", str(db), "--to", pg_url)
    assert again.exit_code == 0, again.output
    assert table(pg_url) == file_rows(db) and len(table(pg_url)) == 1244
    assert run("--from", str(db), "--to", pg_url).exit_code == 0
    assert table(pg_url) == file_rows(db)


def test_an_older_file_without_the_newer_columns(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "old.db"
    old = [c for c in COLUMNS if c not in ("simulated", "object_id", "cache", "saved_microusd")]
    made = [row(random.Random(n)) for n in range(20)]
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE requests ({', '.join(old)}, PRIMARY KEY (id))")
        conn.executemany(f"INSERT INTO requests VALUES ({', '.join('?' for _ in old)})",
                         [tuple(r[c] for c in old) for r in made])
    result = run("--from", str(db), "--to", pg_url)
    assert result.exit_code == 0, result.output
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT id, simulated, object_id, cost_microusd FROM requests ORDER BY id").fetchall()
    assert found == sorted((r["id"], 0, None, r["cost_microusd"]) for r in made)


def test_bad_arguments_are_clear_errors(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "oaigate.db"
    load(rows(3, seed=1), str(db))
    wrong = run("--from", str(db), "--to", str(tmp_path / "other.db"))
    assert wrong.exit_code == 2 and "is not a postgresql:// URL" in wrong.output
    missing = run("--from", str(tmp_path / "nope.db"), "--to", pg_url)
    assert missing.exit_code == 1 and "no ledger at" in missing.output
    refused = run("--from", str(db), "--to", pg_url.replace(PASSWORD, "not-the-password"))
    assert refused.exit_code == 1 and "cannot connect to the ledger" in refused.output
    assert "not-the-password" not in refused.output and PASSWORD not in refused.output


def test_the_config_names_the_target(tmp_path: Path, pg_url: str, monkeypatch: Any) -> None:
    db = tmp_path / "oaigate.db"
    load(rows(40, seed=5), str(db))
    monkeypatch.setenv("TEAM_LEDGER_PASSWORD", PASSWORD)
    config = tmp_path / "team.toml"
    url = pg_url.replace(":" + PASSWORD, "")
    config.write_text(f'[ledger]\nurl = "{url}"\npassword_env = "TEAM_LEDGER_PASSWORD"\n')
    result = run("--from", str(db), "--config", str(config))
    assert result.exit_code == 0, result.output
    assert table(pg_url) == file_rows(db) and PASSWORD not in result.output
    plain = tmp_path / "plain.toml"
    plain.write_text('[ledger]\npath = "x.db"\n')
    refused = run("--from", str(db), "--config", str(plain))
    assert refused.exit_code == 2 and "[ledger] url" in refused.output
