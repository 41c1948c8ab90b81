"""`oaigate spend` and `oaigate ledger prune|info` through click's test runner."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli
from proxy.db.schema import SCHEMA_VERSION

from .test_reports import EXPECTED, ORDER, SAMPLE, TOTAL, build_ledger

NOW = "2026-11-23T12:00:00Z"
_NUMBERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
            "cost_microusd", "unpriced_requests", "estimated_requests")


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return build_ledger(tmp_path / "ledger.db")


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    runner = CliRunner(env={"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "COLUMNS": "80"} | (env or {}))
    return runner.invoke(cli, list(args), catch_exceptions=False)


def spend_json(ledger: Path, *args: str) -> dict[str, Any]:
    result = run("spend", "--db", str(ledger), "--format", "json", "--now", NOW, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def as_tuple(record: dict[str, Any]) -> tuple[int | None, ...]:
    return tuple(record[name] for name in _NUMBERS)


def test_json_totals_only(ledger: Path) -> None:
    report = spend_json(ledger)
    assert (report["since"], report["until"], report["by"], report["rows"]) == (None, None, None, [])
    assert as_tuple(report["total"]) == TOTAL
    assert (report["total"]["cost_microusd"], report["total"]["cost_usd"]) == (1_239_867, "1.239867")


@pytest.mark.parametrize("by", ["day", "model", "key", "endpoint"])
def test_json_by(ledger: Path, by: str) -> None:
    report = spend_json(ledger, "--by", by)
    assert report["by"] == by
    assert [row[by] for row in report["rows"]] == ORDER[by]
    assert {row[by]: as_tuple(row) for row in report["rows"]} == EXPECTED[by]
    assert as_tuple(report["total"]) == TOTAL
    for row in report["rows"]:
        micros = row["cost_microusd"]
        assert row["cost_usd"] == (None if micros is None else f"{micros // 10**6}.{micros % 10**6:06d}")


def test_json_unknown_cost_is_null(ledger: Path) -> None:
    llama = next(row for row in spend_json(ledger, "--by", "model")["rows"] if row["model"] == "my-llama")
    assert (llama["cost_microusd"], llama["cost_usd"], llama["unpriced_requests"]) == (None, None, 1)


@pytest.mark.parametrize("by", [None, "day", "model", "key", "endpoint"])
def test_csv(ledger: Path, by: str | None) -> None:
    result = run("spend", "--db", str(ledger), "--format", "csv", *(["--by", by] if by else []))
    assert result.exit_code == 0, result.output
    lines = list(csv.reader(io.StringIO(result.stdout)))
    header, body = lines[0], lines[1:]
    assert header == ([by] if by else []) + list(_NUMBERS[:7]) + ["cost_usd"] + list(_NUMBERS[7:]) + [
        "simulated_microusd", "simulated_usd", "saved_microusd", "saved_usd"]

    def parsed(line: list[str]) -> tuple[int | None, ...]:
        record = dict(zip(header, line, strict=True))
        return tuple(int(record[name]) if record[name] else None for name in _NUMBERS)

    if by is None:
        assert [parsed(line) for line in body] == [TOTAL]
    else:
        assert [line[0] or None for line in body] == ORDER[by]
        assert {line[0] or None: parsed(line) for line in body} == EXPECTED[by]


def _columns_end_together(lines: list[str], pattern: str) -> None:
    ends = {match.end() for line in lines for match in [re.search(pattern, line)] if match}
    assert len(ends) == 1, (pattern, lines)


@pytest.mark.parametrize("by", ["day", "model", "key", "endpoint"])
def test_table(ledger: Path, by: str) -> None:
    result = run("spend", "--db", str(ledger), "--by", by)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\x1b[" not in out
    assert "…" not in out
    lines = out.splitlines()
    assert all(line == line.rstrip() for line in lines)
    header = next(line for line in lines if "requests" in line)
    assert header.split()[0] == by and "estimated" in header and "unpriced" in header
    body = [line for line in lines[lines.index(header) + 2:] if line.strip()]
    rows, total = body[:len(ORDER[by])], body[len(ORDER[by])]
    assert [line.split()[0] for line in rows] == [group or "—" for group in ORDER[by]]
    assert total.split() == ["total", "9", "2", "7,600", "2,450", "100", "600", "$1.239867", "1", "2"]
    table = [header, *rows, total]
    _columns_end_together(table, r"\$\d+\.\d{6}|—(?=\s+\d+\s+\d+$)|\(USD\)")
    _columns_end_together(table, r"^\s+\S+\s+(?:\d+|requests)")
    assert "unpriced: 1 request with no price" in out
    assert "estimated: 2 requests with no usage reported" in out


def test_table_totals_only_and_narrow_terminals(ledger: Path) -> None:
    result = run("spend", "--db", str(ledger), env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    total = next(line for line in result.stdout.splitlines() if line.strip().startswith("total"))
    assert total.split() == ["total", "9", "2", "7,600", "2,450", "100", "600", "$1.239867", "1", "2"]
    assert "all time" in result.stdout and "…" not in result.stdout


def test_table_shows_unknown_cost_as_a_dash_never_zero(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "unpriced.db", [row for row in SAMPLE if row[0] == "r4"])
    result = run("spend", "--db", str(ledger), "--by", "model")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(("my-llama", "total"))]
    assert len(lines) == 2 and all("—" in line and "$" not in line for line in lines)


def test_table_hides_empty_optional_columns(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "plain.db", [row for row in SAMPLE if row[0] in ("r2", "r8")])
    result = run("spend", "--db", str(ledger), "--by", "key")
    assert result.exit_code == 0, result.output
    for hidden in ("cached", "reasoning", "unpriced", "estimated"):
        assert hidden not in result.stdout
    assert "$0.000300" in result.stdout


def test_since_relative_uses_the_injected_clock(ledger: Path) -> None:
    report = spend_json(ledger, "--since", "7d")
    assert report["since"] == "2026-11-16T12:00:00.000Z"
    assert report["total"]["requests"] == 9
    report = spend_json(ledger, "--since", "24h", "--by", "day")
    assert report["since"] == "2026-11-22T12:00:00.000Z"
    assert [(row["day"], row["requests"]) for row in report["rows"]] == [("2026-11-22", 1), ("2026-11-23", 4)]
    assert report["total"]["requests"] == 5


def test_since_and_until_dates(ledger: Path) -> None:
    report = spend_json(ledger, "--since", "2026-11-21", "--until", "2026-11-22", "--by", "day")
    assert (report["since"], report["until"]) == ("2026-11-21T00:00:00.000Z", "2026-11-23T00:00:00.000Z")
    assert [row["day"] for row in report["rows"]] == ["2026-11-21", "2026-11-22"]
    assert report["total"]["cost_microusd"] == 4810 + 40
    result = run("spend", "--db", str(ledger), "--since", "2026-11-21T10:00:00Z", "--until", "2026-11-22")
    assert "2026-11-21T10:00:00.000Z to 2026-11-23T00:00:00.000Z" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "Invalid value for '--since'"),
    (["--until", "2026-02-30"], "Invalid value for '--until'"),
    (["--since", "2026-11-23", "--until", "2026-11-01"], "is not before --until"),
    (["--by", "user"], "Invalid value for '--by'"),
    (["--format", "xml"], "Invalid value for '--format'"),
])
def test_bad_arguments_are_usage_errors(ledger: Path, args: list[str], message: str) -> None:
    result = run("spend", "--db", str(ledger), *args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("command", [["spend"], ["ledger", "info"], ["ledger", "prune", "--before", "30d"]])
def test_missing_ledger_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nope.db"
    result = run(*command, "--db", str(missing))
    assert result.exit_code == 1
    assert f"oaigate: no ledger at {missing}" in result.stderr
    assert not missing.exists()


def test_not_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("hello\n" * 100)
    result = run("spend", "--db", str(junk))
    assert result.exit_code == 1
    assert "is not an oaigate ledger" in result.stderr


def test_default_db_comes_from_the_config(ledger: Path, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[ledger]\npath = "{ledger}"\n')
    result = run("spend", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["total"]["requests"] == TOTAL[0]
    result = run("ledger", "info", "--config", str(config), "--format", "json")
    assert json.loads(result.stdout)["path"] == str(ledger.resolve())


def test_bad_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[ledger]\npaht = 3\n")
    result = run("spend", "--config", str(config))
    assert result.exit_code == 2
    assert "config error" in result.stderr


def test_a_copied_ledger_needs_nothing_but_the_file(ledger: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ledger, elsewhere / "copy.db")
    (elsewhere / "config.toml").write_text("this is not toml [[[\n")
    monkeypatch.chdir(elsewhere)
    result = run("spend", "--db", "copy.db", "--by", "model", "--format", "json")
    assert result.exit_code == 0, result.output
    assert as_tuple(json.loads(result.stdout)["total"]) == TOTAL


def test_prune(ledger: Path) -> None:
    result = run("ledger", "prune", "--db", str(ledger), "--before", "2026-11-22")
    assert result.exit_code == 0, result.output
    assert f"deleted 3 requests started before 2026-11-22T00:00:00.000Z from {ledger}; 6 remain" in result.stdout
    assert spend_json(ledger)["total"]["requests"] == 6
    assert spend_json(ledger, "--until", "2026-11-21")["total"]["requests"] == 0


def test_prune_relative_dry_run_and_vacuum(ledger: Path) -> None:
    result = run("ledger", "prune", "--db", str(ledger), "--before", "1d", "--now", NOW, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would delete 4 requests started before 2026-11-22T12:00:00.000Z" in result.stdout
    assert spend_json(ledger)["total"]["requests"] == 9
    result = run("ledger", "prune", "--db", str(ledger), "--before", "1d", "--now", NOW, "--vacuum")
    assert result.exit_code == 0, result.output
    assert "deleted 4 requests" in result.stdout and "5 remain" in result.stdout
    assert "vacuumed:" in result.stdout
    assert spend_json(ledger)["total"]["requests"] == 5


def test_prune_requires_before(ledger: Path) -> None:
    result = run("ledger", "prune", "--db", str(ledger))
    assert result.exit_code == 2
    assert "Missing option '--before'" in result.output
    result = run("ledger", "prune", "--db", str(ledger), "--before", "soon")
    assert result.exit_code == 2
    assert "Invalid value for '--before'" in result.output
    assert spend_json(ledger)["total"]["requests"] == 9


def test_info(ledger: Path) -> None:
    result = run("ledger", "info", "--db", str(ledger))
    assert result.exit_code == 0, result.output
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert fields["path"] == str(ledger.resolve())
    assert fields["schema version"] == str(SCHEMA_VERSION)
    assert fields["requests"] == "9"
    assert (fields["first request"], fields["last request"]) == ("2026-11-20T09:00:00.000Z", "2026-11-23T10:00:00.000Z")
    assert re.fullmatch(r"[\d.]+ KiB \([\d,]+ bytes, with -wal and -shm\)", fields["size on disk"])
    info = json.loads(run("ledger", "info", "--db", str(ledger), "--format", "json").stdout)
    assert (info["rows"], info["schema_version"]) == (9, SCHEMA_VERSION)
    assert info["size_bytes"] >= ledger.stat().st_size


def test_info_on_an_empty_ledger(tmp_path: Path) -> None:
    ledger = build_ledger(tmp_path / "empty.db", [])
    result = run("ledger", "info", "--db", str(ledger))
    assert result.exit_code == 0, result.output
    assert re.search(r"^requests\s+0$", result.stdout, re.M)
    assert re.search(r"^first request\s+—$", result.stdout, re.M)


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*path, name)))
    return found


COMMANDS = _commands(cli)


def test_the_ledger_commands_are_registered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"spend", "ledger", "ledger prune", "ledger info"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_every_command_is_documented(path: tuple[str, ...], command: click.Command) -> None:
    assert (command.help or "").strip(), f"oaigate {' '.join(path)} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"oaigate {' '.join(path)} {param.opts[0]} has no help text"
    result = run(*path, "--help")
    assert result.exit_code == 0
    assert " ".join(command.help.split()[:8]) in " ".join(result.output.split())
    assert "--now" not in result.output
