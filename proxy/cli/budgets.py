"""`oaigate budgets`: every configured budget with this period's spend, read from the ledger."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..clock import Clock, ManualClock
from ..db.ledger import LedgerError, connect_readonly, ledger_db
from ..stages.budget import BudgetBook, rules_from_config
from .common import config_option, db_option, fail, load, now_option, print_table


@click.command("budgets")
@config_option("Config file with the budgets. Default: ./config.toml if present.")
@db_option("Ledger file or postgresql://... URL. Default: [ledger] url or path of the config.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="An aligned table, or JSON for scripts.")
@now_option
def budgets(config: Path | None, db: Path | None, fmt: str, now: str | None) -> None:
    """Budgets and what is left of them: limit, spent, remaining, when each resets.

    Spend comes from the ledger, so this works with the gateway stopped; money held by requests in
    flight shows only in a running gateway's GET /oaigate/budgets."""
    settings = load(config)
    clock = ManualClock(datetime.fromisoformat(now).timestamp()) if now else Clock()
    book = BudgetBook(rules_from_config(settings), clock, settings.limits.timezone)
    try:
        if book.rules and isinstance(db, Path):  # a mistyped --db proves nothing was spent: "no ledger at ..."
            connect_readonly(db).close()
        book.load_ledger(str(db or ledger_db(settings.ledger)), settings.resolved_aliases())
    except LedgerError as exc:
        fail(str(exc))
    rows = book.status()
    if fmt == "json":
        click.echo(json.dumps({"budgets": rows}, indent=2))
        return
    if not rows:
        click.echo("No budgets configured: set budget_usd in [limits], [[keys]] or [[budgets]].")
        return
    _table(rows)


def _table(rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("scope", "period", "limit", "spent", "remaining", "resets at"):
        table.add_column(name, justify="left" if name in ("scope", "period", "resets at") else "right")
    for row in rows:
        if row["limit_usd"] is not None:
            limit, spent, left = (f"${float(row[k]):,.6f}" for k in ("limit_usd", "spent_usd", "remaining_usd"))
        else:
            limit = f"{row['limit_tokens']:,} tok"
            spent = f"{row['spent_tokens']:,} tok"
            left = f"{max(int(row['limit_tokens']) - int(row['spent_tokens']), 0):,} tok"
        table.add_row(str(row["scope"]), str(row["period"]), limit, spent, left, str(row["resets_at"] or "never"))
    print_table(table)
