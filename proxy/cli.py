"""The `oaigate` command line: one click group, a command per job."""

from __future__ import annotations

import click

from mockserver.cli import mock


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oaigate")
def cli() -> None:
    """oaigate: a local gateway for the OpenAI API, and a deterministic mock of it."""


cli.add_command(mock)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="oaigate")
