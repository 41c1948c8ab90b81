"""`proxy.cli`: one convention across commands, whatever module defines them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import cli

# every command that reads the config file, with the arguments it needs besides `--config`
READERS = [["serve"], ["mock"], ["budgets"], ["spend"], ["ledger", "info"], ["ledger", "prune", "--before", "30d"],
           ["fixtures", "list"], ["fixtures", "verify"], ["fixtures", "prune"]]


@pytest.mark.parametrize("argv", READERS, ids=" ".join)
def test_a_bad_config_exits_2_with_one_message(tmp_path: Path, argv: list[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nbudget_usd = -1\n")
    result = CliRunner().invoke(cli, [*argv, "--config", str(config)])
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr.startswith(f"oaigate: config error: {config}"), result.stderr


def test_every_command_takes_the_shared_config_option() -> None:
    def leaves(group: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
        commands = getattr(group, "commands", None)
        if commands is None:
            return [(path, group)]
        return [leaf for name, sub in commands.items() for leaf in leaves(sub, (*path, name))]

    lacking = [" ".join(path) for path, command in leaves(cli)
               if path != ("ledger", "metadata") and "--config" not in
               {opt for p in getattr(command, "params", []) for opt in getattr(p, "opts", [])}]
    assert not lacking, f"commands without --config: {lacking}"
