"""What every `oaigate` command shares: the `--config` and `--db` options, one way to fail, one table
printer, and one exit-code convention.

Exit codes: 0 success; 1 the command failed (`EXIT_FAILED`: no ledger, no such fixture, a check that
did not pass); 2 the configuration or the command line is wrong (`EXIT_CONFIG`: a bad config file,
a bad option value; click's own usage errors are 2 as well).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..config import Config, ConfigError, load_config

EXIT_FAILED = 1
EXIT_CONFIG = 2

F = TypeVar("F", bound=Callable[..., Any])


def config_option(help: str = "Config file. Default: ./config.toml if present, else built-in defaults.",
                  ) -> Callable[[F], F]:
    """`--config PATH` (the parameter `config`)."""
    return click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help=help)


def db_option(help: str = "Ledger file or postgresql://USER@HOST:PORT/DB. Default: [ledger] url or path of the "
              "config (oaigate.db).") -> Callable[[F], F]:
    """`--db PATH|URL` (the parameter `db`: a Path, or a PostgreSQL URL as text)."""
    from ..db.ledger import LEDGER

    return click.option("--db", type=LEDGER, help=help)


now_option = click.option("--now", "now", hidden=True, help="Pretend it is this ISO-8601 instant (for tests).")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Say what went wrong on stderr, prefixed `oaigate:`, and exit with `code`."""
    click.echo(f"oaigate: {message}", err=True)
    sys.exit(code)


def load(config: Path | None) -> Config:
    """The configuration, or `config error: ...` and exit `EXIT_CONFIG`."""
    try:
        return load_config(config)
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_CONFIG)


def print_table(table: Any) -> None:
    """Print a rich table at its natural width (never cropped); plain lines when not on a terminal."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(highlight=False)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    console.width = max(console.width, natural)
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))
