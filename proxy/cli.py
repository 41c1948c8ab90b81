"""The `oaigate` command line: one click group, a command per job."""

from __future__ import annotations

import click

import sys
from pathlib import Path
from typing import NoReturn

from mockserver import cli as mock_cli

from .config import Config, ConfigError, load_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="oaigate")
def cli() -> None:
    """oaigate: a local gateway for the OpenAI API, and a deterministic mock of it."""


def _load(config: Path | None) -> Config:
    try:
        return load_config(config)
    except ConfigError as exc:
        _fail(f"config error: {exc}")


@cli.command("mock")
@mock_cli.mock_options
def mock(config: Path | None, host: str | None, port: int | None, fixtures: Path | None, seed: int | None,
         rules: Path | None) -> None:
    """Run the deterministic mock of the OpenAI API (no network, no key needed)."""
    mock_cli.start(_load(config).mock, host, port, fixtures, seed, rules)


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


@cli.command("serve")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="Config file. Default: ./config.toml if present, else built-in defaults.")
@click.option("--host", help="Address to bind. Default 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (0: any free port). Default 4141.")
@click.option("--upstream", help='"mock" (the embedded mock) or an OpenAI-compatible base URL ending in /v1.')
@click.option("--mode", type=click.Choice(["live", "record", "replay", "record-missing"]),
              help="Fixtures: live (none), record, replay (offline, misses are errors) or record-missing.")
@click.option("--fixtures", type=click.Path(file_okay=False, path_type=Path), help="Fixtures folder.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="SQLite ledger file.")
def serve(config: Path | None, host: str | None, port: int | None, upstream: str | None, mode: str | None,
          fixtures: Path | None, db: Path | None) -> None:
    """Run the gateway: point any OpenAI SDK's base_url at http://HOST:PORT/v1."""
    from .app import make_app
    from .wire.serving import run

    settings = _load(config)
    settings.server.host = host or settings.server.host
    settings.server.port = settings.server.port if port is None else port
    settings.upstream.base_url = upstream or settings.upstream.base_url
    settings.fixtures.mode = mode or settings.fixtures.mode  # type: ignore[assignment]
    settings.fixtures.dir = str(fixtures) if fixtures else settings.fixtures.dir
    settings.ledger.path = str(db) if db else settings.ledger.path
    if not settings.server.host.startswith(_LOOPBACK) and not settings.keys and not settings.server.allow_remote:
        _fail(f"refusing to bind {settings.server.host} with no [[keys]] configured: anyone who can reach it "
              "could spend through it. Add [[keys]] or set server.allow_remote = true.")
    try:
        app = make_app(settings, config_file=str(config or "config.toml"))
    except ConfigError as exc:
        _fail(f"config error: {exc}")

    def ready(url: str) -> None:
        from .stages.route import display_name

        base = settings.upstream.base_url
        routes = f" (+{len(settings.routes)} routes)" if settings.routes else ""
        click.echo(f"oaigate serving on {url}/v1 -> upstream {base if base == 'mock' else display_name(base)}"
                   f"{routes}; ledger {settings.ledger.path}; Ctrl-C to stop", err=True)

    try:
        server = settings.server
        run(app, server.host, server.port, ready, handler_cancellation=True, shutdown_grace_s=server.shutdown_grace_s,
            header_timeout_s=server.header_timeout_s, max_connections=server.max_connections)
    except OSError as exc:
        click.echo(f"oaigate: cannot listen on {settings.server.host}:{settings.server.port}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(1)


def _fail(message: str) -> NoReturn:
    click.echo(f"oaigate: {message}", err=True)
    sys.exit(2)


from .cli_budgets import budgets  # noqa: E402
from .cli_fixtures import fixtures  # noqa: E402
from .cli_ledger import ledger, spend  # noqa: E402

cli.add_command(spend)
cli.add_command(ledger)
cli.add_command(budgets)
cli.add_command(fixtures)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="oaigate")
