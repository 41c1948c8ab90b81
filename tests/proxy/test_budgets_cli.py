import json
from pathlib import Path

from click.testing import CliRunner

from proxy.cli import cli
from proxy.db.schema import connect

from .conftest import hold_ledger

NOW = "2026-01-05T12:00:00+00:00"


def make(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "ledger.db"
    conn = connect(str(db))
    conn.executemany(
        "INSERT INTO requests (id, started_at, key_name, model_requested, cost_microusd, endpoint, status, "
        "prompt_tokens, completion_tokens) VALUES (?, ?, ?, 'gpt-4o', ?, '/v1/chat/completions', 200, 10, 5)",
        [("a", "2026-01-05T01:00:00.000Z", "ci", 250_000), ("b", "2026-01-04T10:00:00.000Z", "ci", 900_000),
         ("c", "2026-01-05T02:00:00.000Z", "dev", 100_000)])
    conn.close()
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\npath = "{db}"\n[limits]\nbudget_usd = 10\n'
                      '[[keys]]\nname = "ci"\nkey = "sk-ci"\nbudget_usd = 1\n'
                      '[[budgets]]\nkey = "*"\nbudget_tokens = 100\nbudget_period = "week"\n')
    return db, config


def test_budgets_json_shows_this_periods_spend(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--format", "json", "--now", NOW])
    assert result.exit_code == 0, result.output
    rows = {(r["scope"], r["period"]): r for r in json.loads(result.output)["budgets"]}
    assert len(rows) == 4
    assert rows["global", "day"]["spent_usd"] == "0.350000" and rows["global", "day"]["remaining_usd"] == "9.650000"
    ci_day = rows["key:ci", "day"]
    assert ci_day["spent_usd"] == "0.250000" and ci_day["resets_at"] == "2026-01-06T00:00:00Z"
    assert ci_day["reserved_usd"] == "0.000000"
    assert rows["key:ci", "week"]["spent_tokens"] == 15  # weeks start on Monday: Sunday 01-04 was last week
    assert rows["key:dev", "week"]["spent_tokens"] == 15 and rows["key:dev", "week"]["limit_tokens"] == 100


def test_budgets_table_and_no_budgets(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--now", NOW])
    assert result.exit_code == 0
    assert "key:ci" in result.output and "$0.750000" in result.output and "2026-01-06T00:00:00Z" in result.output
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = CliRunner().invoke(cli, ["budgets", "--config", str(empty), "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 0 and "No budgets configured" in result.output


def test_a_ledger_that_cannot_be_read_is_an_error_not_zero_spend(tmp_path: Path) -> None:
    """Held by another process, the ledger's spend is unknown: saying $0 spent would be a lie."""
    db, config = make(tmp_path)
    holder = hold_ledger(db)
    try:
        result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--format", "json", "--now", NOW])
    finally:
        holder.close()
    assert result.exit_code == 1, result.output
    assert f"oaigate: cannot read the ledger {db}: database is locked" in result.output
    assert "budgets" not in result.output


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, whatever its name says " * 40)
    result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--db", str(junk)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert f"oaigate: {junk} is not an oaigate ledger (file is not a database)" in result.output, result.output


def test_a_ledger_named_with_db_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    """A mistyped --db is no proof that nothing was spent: like `oaigate spend`, it says there is no ledger
    there. (With no --db, a gateway that has not written its ledger yet has spent nothing: $0 is true.)"""
    _, config = make(tmp_path)
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--db", str(missing)])
    assert result.exit_code == 1 and f"oaigate: no ledger at {missing}" in result.output, result.output
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(f'[ledger]\npath = "{tmp_path / "not-yet.db"}"\n[limits]\nbudget_usd = 10\n')
    result = CliRunner().invoke(cli, ["budgets", "--config", str(fresh), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)["budgets"][0]["spent_usd"] == "0.000000"
