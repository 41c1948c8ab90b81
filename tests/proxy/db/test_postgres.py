"""The PostgreSQL ledger's schema, migrations and writer, against a real server."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.db.ledger import LedgerError, redact, with_password
from proxy.db.postgres import METHODS, PgLedgerWriter, connect, migrate
from proxy.db.schema import COLUMNS, SCHEMA_VERSION, VIEWS
from tests.postgres_server import PASSWORD, PostgresServer

from .rows import row, rows


def _columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests' "
            "ORDER BY ordinal_position")]


def _table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY id").fetchall()


def test_migrate_creates_every_column_view_and_the_version(pg_url: str) -> None:
    with connect(pg_url) as conn:
        assert migrate(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION  # again: nothing to do
        views = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.views "
                                            "WHERE table_schema = current_schema()")}
        version = conn.execute("SELECT version FROM oaigate_schema").fetchall()
    assert _columns(pg_url) == list(COLUMNS)
    assert views == set(VIEWS)
    assert version == [(SCHEMA_VERSION,)]


def test_migrate_adds_the_columns_an_older_table_lacks(pg_url: str) -> None:
    """A ledger created by an older oaigate (fewer columns) gains the new ones, its rows kept."""
    old = [c for c in COLUMNS if c not in ("simulated", "object_id")]
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE requests (" + ", ".join(f"{c} {_pg(c)}" for c in old) + ", PRIMARY KEY (id))")
        conn.execute("CREATE TABLE oaigate_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO oaigate_schema VALUES (2)")
        conn.execute("INSERT INTO requests (id, started_at, endpoint, status) "
                     "VALUES ('old', '2026-01-01', '/v1/x', 200)")
        assert migrate(conn) == SCHEMA_VERSION
        simulated = conn.execute("SELECT simulated FROM requests WHERE id = 'old'").fetchone()
    assert set(_columns(pg_url)) == set(COLUMNS)
    assert simulated == (0,)


def _pg(column: str) -> str:
    return {str: "text", int: "bigint", float: "double precision"}[COLUMNS[column]]


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    with connect(pg_url) as conn:
        conn.execute("CREATE TABLE oaigate_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO oaigate_schema VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(LedgerError, match="newer than this oaigate"):
            migrate(conn)


def test_gateways_starting_together_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with connect(pg_url) as conn:
                migrate(conn)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _columns(pg_url) == list(COLUMNS)


@pytest.mark.parametrize("method", METHODS)
def test_the_writer_writes_every_row_and_a_rewritten_id_replaces_itself(pg_url: str, method: str) -> None:
    batch = rows(300, seed=1)
    writer = PgLedgerWriter(pg_url, method=method)
    writer.start()
    try:
        for r in batch:
            writer.submit(r)
        assert writer.flush(30)
        again = dict(batch[0], status=599, cost_microusd=7)
        writer.submit(again)
        writer.submit(dict(again, cost_microusd=8))  # twice in one batch: the later one wins
        assert writer.flush(30)
    finally:
        writer.close()
    expected = {r["id"]: tuple(r[c] for c in COLUMNS) for r in batch}
    expected[again["id"]] = tuple(dict(again, cost_microusd=8)[c] for c in COLUMNS)
    assert _table(pg_url) == sorted(expected.values())
    assert (writer.written, writer.dropped, writer.backlog) == (302, 0, 0)


def test_wait_written_is_bounded_and_rows_are_retried_until_the_table_is_back(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The table gone (renamed away): writes fail and are retried, a durable wait gives up in time and is
    counted, the queue is bounded and counts what it drops; once the table is back every kept row lands."""
    writer = PgLedgerWriter(pg_url, max_queue=5, max_retry_delay_s=0.05)
    writer.start()
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        admin.execute("ALTER TABLE requests RENAME TO requests_away")
        rng = random.Random(2)
        first = writer.submit(row(rng))
        assert first is not None

        async def wait() -> bool:
            return await writer.wait_written(first, 0.2)

        with caplog.at_level(logging.WARNING, "oaigate.ledger"):
            assert asyncio.run(wait()) is False
            tickets = [writer.submit(row(rng)) for _ in range(8)]
        assert writer.durability_timeouts == 1
        assert writer.failures >= 1
        assert tickets.count(None) == writer.dropped > 0
        admin.execute("ALTER TABLE requests_away RENAME TO requests")
        assert writer.flush(30)
    finally:
        admin.close()
        writer.close()
    kept = 1 + sum(t is not None for t in tickets)
    assert len(_table(pg_url)) == writer.written == kept
    assert PASSWORD not in caplog.text
    assert "requests_away" in caplog.text or "does not exist" in caplog.text


def test_an_unreachable_server_fails_start_with_the_password_hidden(pg_server: PostgresServer) -> None:
    url = pg_server.url("nosuchdb")
    with pytest.raises(LedgerError) as failure:
        PgLedgerWriter(url).start()
    assert PASSWORD not in str(failure.value)
    assert redact(url) in str(failure.value)
    wrong = pg_server.url("postgres").replace(PASSWORD, "wrong-" + PASSWORD)
    with pytest.raises(LedgerError) as failure:
        PgLedgerWriter(wrong).start()
    assert PASSWORD not in str(failure.value)


def test_redact_hides_the_password_in_either_place() -> None:
    assert redact("postgresql://me:s3cret@db:5432/ledger") == "postgresql://me:***@db:5432/ledger"
    assert redact("postgresql://me@db/ledger?password=s3cret&sslmode=require") == \
        "postgresql://me@db/ledger?password=***&sslmode=require"
    assert redact("postgresql://me@db/ledger") == "postgresql://me@db/ledger"


@given(password=st.text(min_size=1, max_size=30).filter(lambda p: p.strip() and "\x00" not in p),
       user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True))
def test_no_password_survives_redact(password: str, user: str) -> None:
    """Whatever the password (`password_env` or typed into the URL), what is shown holds neither it nor its
    %-encoding, and the URL it goes into still carries it for the driver."""
    url = with_password(f"postgresql://{user}@db.internal:5432/ledger", password)
    assert urlsplit(url).password is not None and unquote(urlsplit(url).password or "") == password
    shown = redact(url)
    assert shown == f"postgresql://{user}:***@db.internal:5432/ledger"


def test_a_ledger_the_role_may_not_read_is_an_error_not_zero_spend(pg_url: str, tmp_path: Path) -> None:
    """`oaigate budgets` as a role without SELECT on the table: one `oaigate:` line naming the redacted
    URL and the reason (exit 1), not a traceback and not $0 spent."""
    from click.testing import CliRunner

    from proxy.cli import cli

    with connect(pg_url) as conn:
        migrate(conn)
        conn.execute("DROP ROLE IF EXISTS no_reader")
        conn.execute("CREATE ROLE no_reader LOGIN PASSWORD 'no-reader-pw'")
    parts = urlsplit(pg_url)
    url = f"postgresql://no_reader:no-reader-pw@{parts.hostname}:{parts.port}{parts.path}"
    config = tmp_path / "config.toml"
    config.write_text("[limits]\nbudget_usd = 10\n")
    try:
        result = CliRunner().invoke(cli, ["budgets", "--config", str(config), "--db", url, "--format", "json"])
    finally:
        with connect(pg_url) as conn:
            conn.execute("DROP OWNED BY no_reader")
            conn.execute("DROP ROLE no_reader")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "oaigate: cannot read the ledger at postgresql://no_reader:***@" in result.output, result.output
    assert "permission denied" in result.output and "no-reader-pw" not in result.output, result.output
