"""The `oaigate` command line: one click group, a module per job.

    serve.py     oaigate serve (the gateway), oaigate mock (the mock server)
    ledger.py    oaigate spend, oaigate ledger prune|info|metadata
    budgets.py   oaigate budgets
    fixtures.py  oaigate fixtures list|show|verify|prune
    common.py    --config / --db, fail(), the table printer, exit codes

`main` is the console script (`oaigate = "proxy.cli:main"`); `python -m proxy` is `oaigate serve`.
"""

from __future__ import annotations

import click

from .budgets import budgets
from .fixtures import fixtures
from .ledger import ledger, spend
from .serve import mock, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oaigate")
def cli() -> None:
    """oaigate: a local gateway for the OpenAI API, and a deterministic mock of it."""


for command in (mock, serve, spend, ledger, budgets, fixtures):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="oaigate")


__all__ = ["cli", "main", "serve"]
