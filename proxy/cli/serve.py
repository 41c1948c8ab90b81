"""`oaigate serve` (the gateway) and `oaigate mock` (the mock server)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mockserver import cli as mock_cli

from ..config import FIXTURE_MODES, Config, ConfigError, FixtureMode, check_base_url, lacks_api_version
from ..db.ledger import LedgerError, is_url, shown
from ..logs import LEVELS, configure
from .common import EXIT_CONFIG, config_option, db_option, fail, load


@click.command("mock")
@mock_cli.mock_options
def mock(config: Path | None, host: str | None, port: int | None, fixtures: Path | None, seed: int | None,
         rules: Path | None, allow_remote: bool | None) -> None:
    """Run the deterministic mock of the OpenAI API (no network, no key needed)."""
    mock_cli.start(load(config).mock, host, port, fixtures, seed, rules, allow_remote)


_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


@click.command("serve")
@config_option()
@click.option("--host", help="Address to bind. Default 127.0.0.1.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (0: any free port). Default 4141.")
@click.option("--upstream", help='"mock" (the embedded mock) or an OpenAI-compatible base URL ending in /v1.')
@click.option("--mode", type=click.Choice(FIXTURE_MODES),
              help="Fixtures: live (none), record, replay (offline, misses are errors) or record-missing.")
@click.option("--fixtures", type=click.Path(file_okay=False, path_type=Path), help="Fixtures folder.")
@db_option("Ledger: a SQLite file or postgresql://USER@HOST:PORT/DB.")
@click.option("--log-level", type=click.Choice(LEVELS), default="warning", show_default=True,
              help="info adds an access log line per request (never a key or a body).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line, for log collectors.")
@click.option("--workers", type=click.IntRange(1, 256),
              help="Gateway processes on the one port (SO_REUSEPORT), supervised. Default: server.workers (1).")
@click.option("--worker-index", type=int, hidden=True)  # set by the supervisor for each worker it starts
def serve(config: Path | None, host: str | None, port: int | None, upstream: str | None, mode: FixtureMode | None,
          fixtures: Path | None, db: Path | None, log_level: str, log_format: str, workers: int | None,
          worker_index: int | None) -> None:
    """Run the gateway: point any OpenAI SDK's base_url at http://HOST:PORT/v1."""
    from ..app import PIPELINE, make_app
    from ..wire.serving import run

    configure(log_level, log_format)
    settings = load(config)
    settings.server.workers = workers or settings.server.workers
    settings.server.host = host or settings.server.host
    settings.server.port = settings.server.port if port is None else port
    if upstream is not None:
        try:
            settings.upstream.base_url = check_base_url(upstream)
        except ValueError as exc:
            fail(f"--upstream: {exc}", EXIT_CONFIG)
    settings.fixtures.mode = mode or settings.fixtures.mode
    settings.fixtures.dir = str(fixtures) if fixtures else settings.fixtures.dir
    settings.ledger.path = str(db) if db else settings.ledger.path
    settings.ledger.url = None if db else settings.ledger.url  # --db (a file or a URL) wins over the config's
    if not settings.server.host.startswith(_LOOPBACK) and not settings.keys and not settings.server.allow_remote:
        fail(f"refusing to bind {settings.server.host} with no [[keys]] configured: anyone who can reach it "
             "could spend through it. Add [[keys]] or set server.allow_remote = true.", EXIT_CONFIG)
    if worker_index is None and settings.server.workers > 1:
        sys.exit(_supervise(settings, config, upstream, mode, fixtures, db, log_level, log_format))
    try:
        app = make_app(settings, config_file=str(config or "config.toml"), worker=worker_index or 0)
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_CONFIG)
    if worker_index is None:
        for warning in _upstream_warnings(settings, str(config or "config.toml")):
            click.echo(f"oaigate: warning: {warning}", err=True)

    def ready(url: str) -> None:
        if worker_index is not None:
            from ..workers import notify_ready

            notify_ready()
            return
        from ..stages.route import display_name

        base = settings.upstream.base_url
        routes = f" (+{len(settings.routes)} routes)" if settings.routes else ""
        click.echo(f"oaigate serving on {url}/v1 -> upstream {base if base == 'mock' else display_name(base)}"
                   f"{routes}; ledger {shown(settings.ledger.url or settings.ledger.path)}; Ctrl-C to stop", err=True)
        for line in _summary(settings):
            click.echo(f"  {line}", err=True)

    try:
        server = settings.server
        run(app, server.host, server.port, ready, handler_cancellation=True, shutdown_grace_s=server.shutdown_grace_s,
            header_timeout_s=server.header_timeout_s, max_connections=server.max_connections,
            reuse_port=worker_index is not None)
    except LedgerError as exc:  # a ledger that cannot be opened, read, reached or migrated at start
        fail(str(exc))
    except OSError as exc:
        click.echo(f"oaigate: cannot listen on {settings.server.host}:{settings.server.port}: "
                   f"{exc.strerror or exc}", err=True)
        sys.exit(1)
    if PIPELINE in app:
        pipeline = app[PIPELINE]
        rows = f", {pipeline.writer.written} ledger rows written" if pipeline.writer is not None else ""
        lost = f", {pipeline.writer.dropped} dropped" if pipeline.writer is not None and pipeline.writer.dropped else ""
        worker = "" if worker_index is None else f" (worker {worker_index})"
        click.echo(f"oaigate stopped{worker}: drained {pipeline.drained} request(s) in flight{rows}{lost}", err=True)


def _limited(settings: Config) -> tuple[int, int]:
    """How many budgets and rate limits the config sets."""
    limits = settings.limits
    budgets = (int(limits.budget_usd is not None or limits.budget_tokens is not None) + len(settings.budgets)
               + sum(k.budget_usd is not None or k.budget_tokens is not None for k in settings.keys))
    rates = (int(any(getattr(limits, n) is not None for n in ("rpm", "tpm", "concurrent"))) + len(settings.rate_limits)
             + sum(any(getattr(k, n) is not None for n in ("rpm", "tpm", "concurrent")) for k in settings.keys))
    return budgets, rates


def _supervise(settings: Config, config: Path | None, upstream: str | None, mode: str | None,
               fixtures: Path | None, db: Path | None, log_level: str, log_format: str) -> int:
    """`--workers N` (N > 1): check that the workers can share what they must, hold the port, start the
    workers and supervise them until a stop signal (see `proxy.workers`)."""
    from ..workers import Supervisor, WorkersError, reserve_port

    count = settings.server.workers
    budgets, rates = _limited(settings)
    if (budgets or rates) and not settings.state.url:
        fail(f"config error: --workers {count} with {budgets} budget(s) and {rates} rate limit(s) but no [state] "
             f"url: each worker would enforce its own copy, so together they could spend {count}x a budget. Set "
             f'[state] url = "redis://127.0.0.1:6379/0" (shared by all workers), or run one worker.', EXIT_CONFIG)
    if settings.ledger.enabled and not settings.ledger.url and not is_url(settings.ledger.path):
        from ..db.schema import prepare

        try:
            prepare(settings.ledger.path, settings.ledger.synchronous)  # migrate once, before the workers
        except LedgerError as exc:
            fail(str(exc))
    host = settings.server.host
    try:
        held = reserve_port(host, settings.server.port)
    except WorkersError as exc:
        fail(str(exc))
    except OSError as exc:
        click.echo(f"oaigate: cannot listen on {host}:{settings.server.port}: {exc.strerror or exc}", err=True)
        return 1
    port = held.getsockname()[1]
    passed: list[str] = []
    for flag, value in (("--config", config), ("--upstream", upstream), ("--mode", mode), ("--fixtures", fixtures),
                        ("--db", db), ("--log-level", log_level), ("--log-format", log_format)):
        if value is not None:
            passed += [flag, str(value)]

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "proxy", *passed, "--host", host, "--port", str(port),
                "--worker-index", str(index)]

    for warning in _upstream_warnings(settings, str(config or "config.toml")):
        click.echo(f"oaigate: warning: {warning}", err=True)
    supervisor = Supervisor(command, count, grace_s=settings.server.shutdown_grace_s)
    try:
        supervisor.start()
    except WorkersError as exc:
        held.close()
        click.echo(f"oaigate: {exc}", err=True)
        return 1
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"oaigate serving on http://{shown}:{port}/v1 with {count} workers "
               f"(pids {', '.join(str(p.pid) for p in supervisor.workers.values())}); Ctrl-C to stop", err=True)
    for line in _summary(settings):
        click.echo(f"  {line}", err=True)
    try:
        return supervisor.run()
    finally:
        held.close()
        click.echo(f"oaigate stopped: {count} workers", err=True)


def _summary(settings: Config) -> list[str]:
    """What this gateway will do, said once at start (no secrets: key names and counts only)."""
    from ..stages.route import display_name

    up = settings.upstream
    upstreams = ["mock (embedded)" if up.base_url == "mock" else display_name(up.base_url)]
    upstreams += [f"{r.model} -> {r.name or ('mock' if r.base_url == 'mock' else display_name(r.base_url))}"
                  for r in settings.routes]
    fx = settings.fixtures
    fixtures = fx.mode if fx.mode == "live" else f"{fx.mode}, cassette {fx.cassette!r} in {fx.dir}"
    ledger = shown(settings.ledger.url or settings.ledger.path) if settings.ledger.enabled else "off"
    budgets, rates = _limited(settings)
    keys = f"{len(settings.keys)} key(s)" if settings.keys else "any bearer token (no [[keys]])"
    from ..state.redis import safe_url

    state = "in-process" if settings.state.url is None else f"shared on {safe_url(settings.state.url)}"
    return [f"upstreams: {'; '.join(upstreams)}", f"fixtures: {fixtures}", f"ledger: {ledger}",
            f"clients: {keys}; budgets: {budgets}; rate limits: {rates}; state: {state}"]


def _upstream_warnings(settings: Config, config_file: str) -> list[str]:
    """What is probably wrong with the upstreams (and a per-caller limit that limits nothing), said once at
    start; an unset key with `upstream.require_key` is an error."""
    import os

    from ..stages.route import display_name

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
            fail(f"config error: {config_file}: upstream.require_key: the environment variable {up.api_key_env} "
                 f"(upstream.api_key_env) is not set", EXIT_CONFIG)
        warnings.append(f"the environment variable {up.api_key_env} (upstream.api_key_env) is not set: requests go "
                        f"to {display_name(up.base_url)} without a key (set upstream.require_key = true to refuse)")
    sections = (("budgets", settings.budgets), ("rate_limits", settings.rate_limits))
    per_caller = [f"[[{kind}]]" for kind, scopes in sections if any(scope.key == "*" for scope in scopes)]
    if per_caller and not settings.keys:
        warnings.append(f'key = "*" in {" and ".join(per_caller)} without [[keys]]: a caller is its bearer token, so '
                        f"a client that sends another token gets a fresh budget or limit; this caps nothing by itself "
                        f"(add [[keys]], or a budget without key)")
    return warnings
