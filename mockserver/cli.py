"""`oaigate mock` (also `python -m mockserver`): run the mock OpenAI server."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from proxy.wire.configfile import ConfigError, read_toml, validate
from proxy.wire.serving import run

from .settings import MockSettings

DEFAULT_CONFIG = Path("config.toml")


def load_settings(config: Path | None) -> MockSettings:
    """The `[mock]` section of `config` (or of ./config.toml when present), else the defaults."""
    path = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if path is None:
        return MockSettings()
    section = read_toml(path).get("mock", {})
    return validate(MockSettings, section, str(path), "mock")


F = TypeVar("F", bound=Callable[..., Any])


def mock_options(func: F) -> F:
    """The options of `oaigate mock`, shared with `python -m mockserver`."""
    for decorator in reversed((
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                     help="Config file; its [mock] section is used. Default: ./config.toml if present."),
        click.option("--host", help="Address to bind. Default 127.0.0.1."),
        click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (0: any free port). Default 4142."),
        click.option("--fixtures", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Answer from the fixtures recorded in DIR first; generate the rest."),
        click.option("--seed", type=int, help="Mixed into every generated answer. Default 0."),
        click.option("--rules", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Scripted answers: a TOML, YAML or JSON file of rules (replaces the config's rules_file)."),
        click.option("--allow-remote", "allow_remote", is_flag=True, default=None,
                     help="Allow a --host beyond loopback. The /_mock control API has no authentication: anyone "
                          "who can reach the port can reset the mock or script its answers."),
    )):
        func = decorator(func)
    return func


@click.command("mock")
@mock_options
def mock(config: Path | None, host: str | None, port: int | None, fixtures: Path | None, seed: int | None,
         rules: Path | None, allow_remote: bool | None) -> None:
    """Run the deterministic mock of the OpenAI API (no network, no key needed)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"oaigate: config error: {exc}", err=True)
        sys.exit(2)
    start(settings, host, port, fixtures, seed, rules, allow_remote)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1). Other names are not resolved: not loopback."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse (exit 2, before anything listens) a bind beyond loopback unless it was allowed; warn if it was."""
    if is_loopback(host):
        return
    if not allow_remote:
        click.echo(f"oaigate: refusing to bind the mock to {host}: its /_mock control API has no authentication, "
                   "so anyone who can reach it could reset the mock, script its answers or read its journal. "
                   "Bind 127.0.0.1, or pass --allow-remote (config: [mock] allow_remote = true) if you mean it.",
                   err=True)
        sys.exit(2)
    click.echo(f"oaigate: warning: the mock listens on {host} (--allow-remote); its /_mock control API has no "
               "authentication.", err=True)


def start(settings: MockSettings, host: str | None, port: int | None, fixtures: Path | None,
          seed: int | None, rules: Path | None = None, allow_remote: bool | None = None) -> None:
    """Apply the command-line overrides to `settings` and serve until SIGINT/SIGTERM."""
    from .app import make_app

    given = {"host": host, "port": port, "seed": seed, "fixtures": None if fixtures is None else str(fixtures),
             "rules_file": None if rules is None else str(rules), "allow_remote": allow_remote}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    check_bind(settings.host, settings.allow_remote)

    def ready(url: str) -> None:
        recorded = f", fixtures from {settings.fixtures} first" if settings.fixtures else ""
        scripted = f", rules from {settings.rules_file}" if settings.rules_file else ""
        click.echo(f"oaigate mock listening on {url} (seed {settings.seed}{recorded}{scripted}); Ctrl-C to stop",
                   err=True)

    try:
        app = make_app(settings)
    except ConfigError as exc:
        click.echo(f"oaigate: config error: {exc}", err=True)
        sys.exit(2)
    try:
        run(app, settings.host, settings.port, ready)
    except OSError as exc:
        click.echo(f"oaigate: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
