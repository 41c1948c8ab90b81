"""`oaigate spend` and `oaigate ledger prune|info|copy`: reading, trimming and moving the ledger.

These commands need nothing but the ledger (`--db`: a file or a PostgreSQL URL, else the config's
`[ledger] url` or `path`), so they work just as well on a copy of the file taken to another machine.
`ledger copy` moves a SQLite ledger into PostgreSQL: the upgrade from the embedded default.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..db.ledger import connect_readonly, is_url, ledger_db, shown
from ..db.ledger import info as ledger_info
from ..db.ledger import prune as prune_ledger
from ..db.reports import GroupBy, LedgerError, SpendRow, format_usd, ledger_time, parse_time, spend_by, spend_total
from .common import F, config_option, db_option, fail, load, now_option, print_table

_TIME_HELP = "YYYY-MM-DD (UTC), an ISO-8601 timestamp, or a span back from now such as 7d, 24h, 30m."
_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
           "cost_microusd", "cost_usd", "unpriced_requests", "estimated_requests", "simulated_microusd",
           "simulated_usd", "saved_microusd", "saved_usd")


def _ledger_options(func: F) -> F:
    func = config_option("Config file, read only for its [ledger] path. Default: ./config.toml if present.")(func)
    return db_option()(func)


def _ledger_path(db: Path | None, config: Path | None) -> Path | str:
    if db is not None:
        return db
    try:
        return ledger_db(load(config).ledger)
    except LedgerError as exc:
        fail(str(exc))


def _open(path: Path | str) -> sqlite3.Connection:
    try:
        return connect_readonly(path)
    except LedgerError as exc:
        fail(str(exc))


def _when(value: str, option: str, now: datetime | None, *, end_of_day: bool = False) -> datetime:
    try:
        return parse_time(value, now, end_of_day=end_of_day)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _clock(now: str | None) -> datetime | None:
    return _when(now, "--now", None) if now else None


@click.command("spend")
@_ledger_options
@now_option
@click.option("--since", help=f"Only requests started at or after this. {_TIME_HELP}")
@click.option("--until", help=f"Only requests started before this (a bare date includes that day). {_TIME_HELP}")
@click.option("--by", "by", type=click.Choice(["day", "model", "key", "endpoint", "upstream"]),
              help="Break the spend down by UTC day, model served, client key, endpoint or upstream. Default: "
                   "totals only.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="table: aligned, for people; json: one object with rows and total; csv: a header, then a line "
                   "per group (the total alone without --by).")
def spend(db: Path | None, config: Path | None, now: str | None, since: str | None, until: str | None,
          by: GroupBy | None, fmt: str) -> None:
    """What was spent, on what, by whom: request, token and cost totals from the ledger.

    Costs are exact sums of integer micro-dollars. A request whose model has no price is never
    counted as $0: it is reported as unpriced, and a group with no priced request shows no cost.
    What oaigate's mock or a replayed fixture answered is priced too but shown apart, as simulated.
    """
    clock = _clock(now)
    start = _when(since, "--since", clock) if since else None
    end = _when(until, "--until", clock, end_of_day=True) if until else None
    if start is not None and end is not None and start >= end:
        raise click.BadParameter(f"{since!r} is not before --until {until!r}", param_hint="'--since'")
    path = _ledger_path(db, config)
    with closing(_open(path)) as conn:
        rows = spend_by(conn, by, start, end) if by else []
        total = spend_total(conn, start, end)
    window = (ledger_time(start) if start else None, ledger_time(end) if end else None)
    if fmt == "json":
        click.echo(json.dumps({"since": window[0], "until": window[1], "by": by,
                               "rows": [_record(row, by) for row in rows], "total": _record(total, None)}, indent=2))
    elif fmt == "csv":
        _write_csv(rows if by else [total], by)
    else:
        _print_table(rows, total, by, window, path)


def _record(row: SpendRow, by: str | None) -> dict[str, Any]:
    record = row.as_dict()
    group = record.pop("group")
    return ({by: group} if by else {}) | {field: record[field] for field in _FIELDS}


def _write_csv(rows: list[SpendRow], by: str | None) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(([by] if by else []) + list(_FIELDS))
    for row in rows:
        writer.writerow(["" if value is None else value for value in _record(row, by).values()])
    click.echo(out.getvalue(), nl=False)


def _print_table(rows: list[SpendRow], total: SpendRow, by: str | None, window: tuple[str | None, str | None],
                 path: Path | str) -> None:
    from rich import box
    from rich.table import Table

    columns: list[tuple[str, Callable[[SpendRow], str]]] = [
        ("requests", lambda r: f"{r.requests:,}"),
        ("errors", lambda r: f"{r.errors:,}"),
        ("prompt\ntokens", lambda r: f"{r.prompt_tokens:,}"),
        ("completion\ntokens", lambda r: f"{r.completion_tokens:,}"),
    ]
    if total.cached_tokens:
        columns.append(("cached\ntokens", lambda r: f"{r.cached_tokens:,}"))
    if total.reasoning_tokens:
        columns.append(("reasoning\ntokens", lambda r: f"{r.reasoning_tokens:,}"))
    columns.append(("cost\n(USD)", lambda r: _usd(r.cost_microusd)))
    if total.unpriced_requests:
        columns.append(("unpriced", lambda r: f"{r.unpriced_requests:,}"))
    if total.estimated_requests:
        columns.append(("estimated", lambda r: f"{r.estimated_requests:,}"))
    if total.simulated_microusd:
        columns.append(("simulated\n(USD)", lambda r: _usd(r.simulated_microusd)))
    if total.saved_microusd:
        columns.append(("saved by\ncache (USD)", lambda r: _usd(r.saved_microusd)))

    since, until = window
    span = f"{since or 'the start'} to {until or 'now'}" if since or until else "all time"
    name = path.name if isinstance(path, Path) else shown(path)
    table = Table(title=f"Spend in {name}, {span}", caption=_caption(total), box=box.SIMPLE_HEAD,
                  title_justify="left", caption_justify="left")
    table.add_column(by or "", no_wrap=True)
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row("—" if row.group is None else row.group, *(cell(row) for _, cell in columns))
    if rows:
        table.add_section()
    table.add_row("total", *(cell(total) for _, cell in columns), style="bold")
    print_table(table)


def _usd(microusd: int | None) -> str:
    text = format_usd(microusd)
    return "—" if text is None else f"${text}"


def _caption(total: SpendRow) -> str | None:
    notes = []
    if total.unpriced_requests:
        notes.append(f"unpriced: {_requests(total.unpriced_requests)} with no price for the model, not counted "
                     "in the costs; — means no request in the row had a price.")
    if total.estimated_requests:
        notes.append(f"estimated: {_requests(total.estimated_requests)} with no usage reported; "
                     "tokens and cost estimated locally.")
    if total.simulated_microusd:
        notes.append("simulated: answered by oaigate's mock or a replayed fixture, priced as the real API "
                     "would have charged; not spent, and not in the cost column.")
    if total.saved_microusd:
        notes.append("saved by cache: what the requests answered from oaigate's response cache would have cost.")
    return "\n".join(notes) or None


def _requests(count: int) -> str:
    return f"{count:,} request" + ("" if count == 1 else "s")


@click.group("ledger")
def ledger() -> None:
    """Inspect, trim and move the ledger (one row per request): a SQLite file or PostgreSQL."""


@ledger.command("prune")
@_ledger_options
@now_option
@click.option("--before", required=True,
              help=f"Delete the requests started before this. Required. {_TIME_HELP} (30d: older than 30 days)")
@click.option("--vacuum", is_flag=True, help="Then VACUUM, to give the freed space back to the filesystem.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune_command(db: Path | None, config: Path | None, now: str | None, before: str, vacuum: bool,
                  dry_run: bool) -> None:
    """Delete old requests from the ledger; safe while the gateway is running."""
    cutoff = _when(before, "--before", _clock(now))
    path = _ledger_path(db, config)
    try:
        result = prune_ledger(path, cutoff, vacuum=vacuum, dry_run=dry_run)
    except LedgerError as exc:
        fail(str(exc))
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(f"{verb} {result.deleted:,} requests started before {result.before} from {shown(path)}; "
               f"{result.remaining:,} remain")
    if result.vacuumed:
        click.echo(f"vacuumed: {_bytes(result.size_before)} -> {_bytes(result.size_after)}")


@ledger.command("info")
@_ledger_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
def info(db: Path | None, config: Path | None, fmt: str) -> None:
    """Show the ledger's path, schema version, request count, time span and size on disk."""
    from ..db.schema import SCHEMA_VERSION  # sqlite-utils is slow to import; only this command needs it

    path = _ledger_path(db, config)
    with closing(_open(path)) as conn:
        facts = ledger_info(conn, path)
    if fmt == "json":
        click.echo(json.dumps(asdict(facts), indent=2))
        return
    newer = f" (newer than this oaigate's {SCHEMA_VERSION})" if facts.schema_version > SCHEMA_VERSION else ""
    lines = [
        ("path", facts.path),
        ("schema version", f"{facts.schema_version}{newer}"),
        ("requests", f"{facts.rows:,}"),
        ("first request", facts.first_started_at or "—"),
        ("last request", facts.last_started_at or "—"),
        ("size on disk", f"{_bytes(facts.size_bytes)} ({facts.size_bytes:,} bytes, "
                         f"{'table and indexes' if is_url(path) else 'with -wal and -shm'})"),
    ]
    for label, value in lines:
        click.echo(f"{label:<15} {value}")


@ledger.command("copy")
@config_option("Config file whose [ledger] url (and password_env) is the default --to. Default: ./config.toml "
               "if present.")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The SQLite ledger file to copy (read only; stop the gateway writing it first).")
@click.option("--to", "dest", metavar="URL",
              help="postgresql://USER@HOST:PORT/DB: the PostgreSQL ledger to fill (created if empty). The password "
                   "goes in the URL, PGPASSWORD or ~/.pgpass; it is never printed. Default: the config's [ledger] url.")
@click.option("--batch", default=5000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Rows per COPY and transaction.")
def copy_command(config: Path | None, source: Path, dest: str | None, batch: int) -> None:
    """Copy every row of a SQLite ledger into a PostgreSQL ledger: the upgrade from the embedded default.

    Rows are merged by id, so running it again (after an interruption, or to catch up with rows written
    since) leaves one row per request, each as the file has it. Progress goes to stderr.
    """
    from ..db.postgres import copy_from_sqlite

    if dest is None:
        configured = _ledger_path(None, config)
        if not is_url(configured):
            raise click.BadParameter("give the PostgreSQL ledger's URL, or a config whose [ledger] url names it",
                                     param_hint="'--to'")
        dest = str(configured)
    if not is_url(dest):
        raise click.BadParameter(f"{dest!r} is not a postgresql:// URL", param_hint="'--to'")
    if is_url(str(source)):
        raise click.BadParameter("--from takes a SQLite ledger file", param_hint="'--from'")
    name = shown(dest)
    with closing(_open(source)) as conn:
        def progress(copied: int, total: int) -> None:
            click.echo(f"copied {copied:,} of {total:,} rows to {name}", err=True)

        try:
            copied, held = copy_from_sqlite(conn, dest, batch=batch, progress=progress)
        except LedgerError as exc:
            fail(str(exc))
    click.echo(f"copied {copied:,} requests from {source} to {name}; it holds {held:,}")


@ledger.command("metadata")
def metadata() -> None:
    """Print Datasette metadata for the ledger: table descriptions and canned queries.

    \b
    oaigate ledger metadata > metadata.yml && datasette oaigate.db -m metadata.yml
    """
    from importlib.resources import files

    click.echo(files("proxy.db").joinpath("metadata.yml").read_text(encoding="utf-8"), nl=False)


def _bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"

