"""The `oaigate` command line: one click group, a command per job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from mockserver import cli as mock_cli

from .config import Config, ConfigError, FixtureMode, check_base_url, lacks_api_version, load_config
from .db.ledger import LedgerError, shown
from .logs import LEVELS, configure


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
         rules: Path | None, allow_remote: bool | None) -> None:
    """Run the deterministic mock of the OpenAI API (no network, no key needed)."""
    mock_cli.start(_load(config).mock, host, port, fixtures, seed, rules, allow_remote)


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
@click.option("--log-level", type=click.Choice(LEVELS), default="warning", show_default=True,
              help="info adds an access log line per request (never a key or a body).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line, for log collectors.")
def serve(config: Path | None, host: str | None, port: int | None, upstream: str | None, mode: FixtureMode | None,
          fixtures: Path | None, db: Path | None, log_level: str, log_format: str) -> None:
    """Run the gateway: point any OpenAI SDK's base_url at http://HOST:PORT/v1."""
    from .app import PIPELINE, make_app
    from .wire.serving import run

    configure(log_level, log_format)
    settings = _load(config)
    settings.server.host = host or settings.server.host
    settings.server.port = settings.server.port if port is None else port
    if upstream is not None:
        try:
            settings.upstream.base_url = check_base_url(upstream)
        except ValueError as exc:
            _fail(f"--upstream: {exc}")
    settings.fixtures.mode = mode or settings.fixtures.mode
    settings.fixtures.dir = str(fixtures) if fixtures else settings.fixtures.dir
    settings.ledger.path = str(db) if db else settings.ledger.path
    if not settings.server.host.startswith(_LOOPBACK) and not settings.keys and not settings.server.allow_remote:
        _fail(f"refusing to bind {settings.server.host} with no [[keys]] configured: anyone who can reach it "
              "could spend through it. Add [[keys]] or set server.allow_remote = true.")
    try:
        app = make_app(settings, config_file=str(config or "config.toml"))
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    for warning in _upstream_warnings(settings, str(config or "config.toml")):
        click.echo(f"oaigate: warning: {warning}", err=True)

    def ready(url: str) -> None:
        from .stages.route import display_name

        base = settings.upstream.base_url
        routes = f" (+{len(settings.routes)} routes)" if settings.routes else ""
        click.echo(f"oaigate serving on {url}/v1 -> upstream {base if base == 'mock' else display_name(base)}"
                   f"{routes}; ledger {shown(settings.ledger.url or settings.ledger.path)}; Ctrl-C to stop", err=True)
        for line in _summary(settings):
            click.echo(f"  {line}", err=True)

    try:
        server = settings.server
        run(app, server.host, server.port, ready, handler_cancellation=True, shutdown_grace_s=server.shutdown_grace_s,
            header_timeout_s=server.header_timeout_s, max_connections=server.max_connections)
    except LedgerError as exc:  # a PostgreSQL ledger that cannot be reached or migrated at start
        _fail(str(exc))
    except OSError as exc:
        click.echo(f"oaigate: cannot listen on {settings.server.host}:{settings.server.port}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(1)
    if PIPELINE in app:
        pipeline = app[PIPELINE]
        rows = f", {pipeline.writer.written} ledger rows written" if pipeline.writer is not None else ""
        lost = f", {pipeline.writer.dropped} dropped" if pipeline.writer is not None and pipeline.writer.dropped else ""
        click.echo(f"oaigate stopped: drained {pipeline.drained} request(s) in flight{rows}{lost}", err=True)


def _summary(settings: Config) -> list[str]:
    """What this gateway will do, said once at start (no secrets: key names and counts only)."""
    from .stages.route import display_name

    up = settings.upstream
    upstreams = ["mock (embedded)" if up.base_url == "mock" else display_name(up.base_url)]
    upstreams += [f"{r.model} -> {r.name or ('mock' if r.base_url == 'mock' else display_name(r.base_url))}"
                  for r in settings.routes]
    fx = settings.fixtures
    fixtures = fx.mode if fx.mode == "live" else f"{fx.mode}, cassette {fx.cassette!r} in {fx.dir}"
    ledger = shown(settings.ledger.url or settings.ledger.path) if settings.ledger.enabled else "off"
    limits = settings.limits
    budgets = (int(limits.budget_usd is not None or limits.budget_tokens is not None) + len(settings.budgets)
               + sum(k.budget_usd is not None or k.budget_tokens is not None for k in settings.keys))
    rates = (int(any(getattr(limits, n) is not None for n in ("rpm", "tpm", "concurrent"))) + len(settings.rate_limits)
             + sum(any(getattr(k, n) is not None for n in ("rpm", "tpm", "concurrent")) for k in settings.keys))
    keys = f"{len(settings.keys)} key(s)" if settings.keys else "any bearer token (no [[keys]])"
    return [f"upstreams: {'; '.join(upstreams)}", f"fixtures: {fixtures}", f"ledger: {ledger}",
            f"clients: {keys}; budgets: {budgets}; rate limits: {rates}; state: in-process"]


def _upstream_warnings(settings: Config, config_file: str) -> list[str]:
    """What is probably wrong with the upstreams (and a per-caller limit that limits nothing), said once at
    start; an unset key with `upstream.require_key` is an error."""
    import os

    from .stages.route import display_name

    warnings = []
    up = settings.upstream
    urls = [up.base_url] + [r.base_url for r in settings.routes]
    for url in urls:
        if url != "mock" and lacks_api_version(url):
            warnings.append(f"upstream {display_name(url)} has no API version in its path ({url}): requests go to "
                            f"{url.rstrip('/')}/chat/completions; OpenAI-compatible servers usually want "
                            f"{url.rstrip('/')}/v1")
    if up.base_url != "mock" and not os.environ.get(up.api_key_env) and not up.pass_through:
        if up.require_key:
            _fail(f"config error: {config_file}: upstream.require_key: the environment variable {up.api_key_env} "
                  f"(upstream.api_key_env) is not set")
        warnings.append(f"the environment variable {up.api_key_env} (upstream.api_key_env) is not set: requests go "
                        f"to {display_name(up.base_url)} without a key (set upstream.require_key = true to refuse)")
    sections = (("budgets", settings.budgets), ("rate_limits", settings.rate_limits))
    per_caller = [f"[[{kind}]]" for kind, scopes in sections if any(scope.key == "*" for scope in scopes)]
    if per_caller and not settings.keys:
        warnings.append(f'key = "*" in {" and ".join(per_caller)} without [[keys]]: a caller is its bearer token, so '
                        f"a client that sends another token gets a fresh budget or limit; this caps nothing by itself "
                        f"(add [[keys]], or a budget without key)")
    return warnings


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
