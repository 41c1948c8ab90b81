"""`oaigate fixtures list|show|verify|prune` on fixtures recorded through a real gateway."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from proxy.cli import cli
from proxy.wire.fixtures.hits import HITS_FILE

from .conftest import Gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Name three rivers."}], "temperature": 0.2}


def run(*args: str) -> Result:
    runner = CliRunner(env={"FORCE_COLOR": None, "TTY_COMPATIBLE": None, "COLUMNS": "200"})
    return runner.invoke(cli, list(args), catch_exceptions=False)


def listing(root: Path, *args: str) -> list[dict[str, Any]]:
    result = run("fixtures", "list", "--dir", str(root), "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def recorded(tmp_path: Path, gateway: Callable[..., Gateway]) -> Path:
    """A chat, a streamed chat and an embedding recorded into cassette `suite`; the gateway then stopped."""
    root = tmp_path / "fixtures"
    gw = gateway(fixtures={"mode": "record", "dir": str(root), "cassette": "suite"})
    with gw.client() as client:
        client.chat.completions.create(**CHAT)
        list(client.chat.completions.create(**CHAT, stream=True))
        client.embeddings.create(model="text-embedding-3-small", input="rivers")
    gw.stop()
    return root


def test_list_shows_every_recording_and_that_the_recording_run_used_it(recorded: Path) -> None:
    records = listing(recorded)
    assert sorted((r["request"], r["model"], r["kind"], r["status"]) for r in records) == [
        ("POST /v1/chat/completions", "gpt-4o-mini", "body", 200),
        ("POST /v1/chat/completions", "gpt-4o-mini", "stream", 200),
        ("POST /v1/embeddings", "text-embedding-3-small", "body", 200),
    ]
    assert {r["cassette"] for r in records} == {"suite"} and all(r["used"] for r in records)
    table = run("fixtures", "list", "--dir", str(recorded))
    assert table.exit_code == 0 and "3 fixtures in" in table.stdout and "text-embedding-3-small" in table.stdout


def test_show_finds_a_fixture_by_key_prefix_and_prints_a_stream_as_timed_chunks(recorded: Path) -> None:
    stream = next(r for r in listing(recorded) if r["kind"] == "stream")
    result = run("fixtures", "show", stream["key"][:8], "--dir", str(recorded))
    assert result.exit_code == 0, result.output
    assert "POST /v1/chat/completions" in result.stdout and '"Name three rivers."' in result.stdout
    assert "chunks:" in result.stdout and "data: [DONE]" in result.stdout
    raw = run("fixtures", "show", str(recorded / "suite" / stream["file"]), "--raw")
    stored = json.loads(raw.stdout)["request"]
    assert stored["key"] == stream["key"] and stored["ignored"] == ["user", "metadata"]


def test_show_names_what_it_could_not_find(recorded: Path) -> None:
    result = run("fixtures", "show", "nothing-like-this", "--dir", str(recorded))
    assert result.exit_code == 1 and "no fixture file or request key 'nothing-like-this'" in result.stderr


def test_verify_passes_fresh_recordings(recorded: Path) -> None:
    result = run("fixtures", "verify", "--dir", str(recorded))
    assert result.exit_code == 0, result.output
    assert "3 of 3 fixtures in 1 cassette OK" in result.output


def test_verify_catches_a_broken_file_and_a_change_in_matching_rules(recorded: Path, tmp_path: Path) -> None:
    (recorded / "suite" / "broken.json").write_text('{"version": 1}')
    config = tmp_path / "config.toml"
    config.write_text('[fixtures]\nignore_fields = ["user", "metadata", "temperature"]\n')
    result = run("fixtures", "verify", "--dir", str(recorded), "--config", str(config))
    assert result.exit_code == 1
    assert "broken.json: not a fixture file" in result.stdout
    assert "replay would never use it" in result.stdout  # both chat fixtures have a temperature
    assert result.stdout.count("replay would never use it") == 2
    assert "1 of 4 fixtures in 1 cassette OK" in result.stderr


def test_prune_deletes_what_a_replay_run_did_not_use(recorded: Path, gateway: Callable[..., Gateway]) -> None:
    (recorded / HITS_FILE).unlink()
    gw = gateway(fixtures={"mode": "replay", "dir": str(recorded), "cassette": "suite"})
    with gw.client() as client:
        client.chat.completions.create(**CHAT)
    [row] = gw.rows(expect=1)
    assert (row["fixture"], row["cost_microusd"]) == ("hit", 0) and row["replayed_cost_microusd"] > 0
    gw.stop()
    used = [r["file"] for r in listing(recorded) if r["used"]]
    assert len(used) == 1

    dry = run("fixtures", "prune", "--dir", str(recorded), "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.count("would delete") == 2
    assert len(listing(recorded)) == 3

    pruned = run("fixtures", "prune", "--dir", str(recorded))
    assert pruned.exit_code == 0 and pruned.stdout.count("deleted") == 2
    assert [r["file"] for r in listing(recorded)] == used
    assert not (recorded / HITS_FILE).exists()  # the next prune needs a new replay run

    again = run("fixtures", "prune", "--dir", str(recorded))
    assert again.exit_code == 1 and "Run the tests in replay mode first" in again.stderr


def test_commands_report_a_missing_folder(tmp_path: Path) -> None:
    for command in ("list", "verify", "prune"):
        result = run("fixtures", command, "--dir", str(tmp_path / "absent"))
        assert result.exit_code == 1 and "no fixtures folder at" in result.stderr


def test_the_hits_file_lists_each_fixture_once_across_runs(tmp_path: Path) -> None:
    from proxy.wire.fixtures.hits import append_hits, read_hits

    root = tmp_path / "fx"
    a, b = root / "c" / "a.json", root / "c" / "b.json"
    append_hits(root, [a])
    append_hits(root, [a, b])
    append_hits(root, [b, a])
    assert (root / HITS_FILE).read_text() == "c/a.json\nc/b.json\n"
    assert read_hits(root) == {a, b}
