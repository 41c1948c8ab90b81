"""`oaigate fixtures list|show|verify|prune`: look after the recorded fixtures.

The folder is `--dir`, else the config's `[fixtures] dir`; a cassette is a subfolder of it. `verify`
uses the config's matching rules (ignored fields) to recompute each fixture's request key.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..config import FixturesConfig
from ..stages.fixtures import match_policy
from ..wire.fixtures import Fixture, cassette_folders, request_key
from ..wire.fixtures.hits import HITS_FILE, clear_hits, read_hits
from .common import config_option, fail, load, print_table


@dataclass(frozen=True, slots=True)
class Entry:
    """One fixture file and, when it parses, its fixture."""

    cassette: str
    path: Path
    fixture: Fixture | None
    error: str | None = None


def _settings(config: Path | None, folder: Path | None) -> tuple[FixturesConfig, Path]:
    settings = load(config).fixtures
    return settings, folder or Path(settings.dir)


def scan(root: Path, cassette: str | None = None) -> list[Entry]:
    """Every fixture file under `root` (cassette subfolders, and files in `root` itself), sorted."""
    folders = [root / cassette] if cassette is not None else cassette_folders(root)
    entries = []
    for folder in folders:
        name = "." if folder == root else folder.name
        for path in sorted(folder.glob("*.json")):
            try:
                entries.append(Entry(name, path, Fixture.loads(path.read_text(encoding="utf-8"))))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                entries.append(Entry(name, path, None, str(exc)))
    return entries


def _folder(root: Path, cassette: str | None) -> None:
    if not root.is_dir():
        fail(f"no fixtures folder at {root}")
    if cassette is not None and not (root / cassette).is_dir():
        fail(f"no cassette '{cassette}' in {root}")


_dir_option = click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path),
                           help="Fixtures folder. Default: [fixtures] dir of the config (./fixtures).")
_config_option = config_option("Config file, read for its [fixtures] section. Default: ./config.toml if present.")
_cassette_option = click.option("--cassette", help="Only this cassette (a subfolder of the fixtures folder).")


@click.group("fixtures")
def fixtures() -> None:
    """List, inspect, verify and prune recorded fixtures."""


@fixtures.command("list")
@_dir_option
@_config_option
@_cassette_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: for people; json: a list of objects (with each request's key).")
def list_(folder: Path | None, config: Path | None, cassette: str | None, fmt: str) -> None:
    """Every fixture: cassette, request, model, status, stream or body, when recorded, and whether the last
    replay runs used it."""
    _, root = _settings(config, folder)
    _folder(root, cassette)
    hits = read_hits(root)
    records = [_summary(entry, hits) for entry in scan(root, cassette)]
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
        return
    from rich import box
    from rich.table import Table

    title = f"{len(records)} fixture{'s' * (len(records) != 1)} in {root}"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    columns = ["cassette", "file", "request", "model", "status", "kind", "recorded_at"]
    if hits is not None:
        columns.append("used")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for record in records:
        table.add_row(*(_cell(record.get(column)) for column in columns))
    print_table(table)


def _summary(entry: Entry, hits: set[Path] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"cassette": entry.cassette, "file": entry.path.name}
    if entry.fixture is None:
        return record | {"error": entry.error, "request": f"unreadable: {entry.error}"}
    request, response = entry.fixture.request, entry.fixture.response
    body = request.body.get("json")
    record |= {"request": f"{request.method} {request.path}", "key": request.key,
               "model": body.get("model") if isinstance(body, dict) else None,
               "status": response.status, "kind": "stream" if response.chunks is not None else "body",
               "recorded_at": entry.fixture.recorded_at}
    if hits is not None:
        record["used"] = entry.path in hits
    return record


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@fixtures.command("show")
@click.argument("fixture")
@_dir_option
@_config_option
@click.option("--raw", is_flag=True, help="Print the file as stored.")
def show(fixture: str, folder: Path | None, config: Path | None, raw: bool) -> None:
    """One fixture, by file path, file name, request key (or its prefix) or a unique part of the file
    name: the request, then the response (a stream as its timed chunks)."""
    path = Path(fixture)
    if not path.is_file():
        _, root = _settings(config, folder)
        _folder(root, None)
        entries = scan(root)
        found = [e.path for e in entries if e.path.name == fixture or e.path.stem == fixture
                 or (e.fixture is not None and e.fixture.request.key.startswith(fixture))]
        found = found or [e.path for e in entries if fixture in e.path.name]
        if not found:
            fail(f"no fixture file or request key '{fixture}' in {root}")
        if len(found) > 1:
            fail(f"'{fixture}' matches {len(found)} fixtures: " + ", ".join(str(p) for p in found[:5]))
        path = found[0]
    text = path.read_text(encoding="utf-8")
    if raw:
        click.echo(text, nl=False)
        return
    try:
        loaded = Fixture.loads(text)
    except ValueError as exc:
        fail(f"{path}: {exc}")
    request, response = loaded.request, loaded.response
    click.echo(f"{path}\nrecorded {loaded.recorded_at}; request key {request.key}")
    query = f"?{request.query}" if request.query else ""
    click.echo(f"\n{request.method} {request.path}{query}")
    if request.body:
        click.echo(_pretty(request.body))
    click.echo(f"\n-> {response.status}")
    for name, value in sorted(response.headers.items()):
        click.echo(f"{name}: {value}")
    if response.chunks is None:
        click.echo(_pretty(response.body or {}))
    else:
        click.echo(f"{len(response.chunks)} chunks:")
        for offset, data in response.chunk_bytes():
            click.echo(f"[{offset * 1000:8.1f} ms] {data.decode('utf-8', 'replace')!r}")
    if loaded.usage:
        click.echo(f"\nusage: {json.dumps(loaded.usage)}")


def _pretty(stored: dict[str, Any]) -> str:
    if "json" in stored:
        return json.dumps(stored["json"], indent=2, ensure_ascii=False)
    if "text" in stored:
        return stored["text"]
    if "multipart" in stored:
        return "multipart: " + json.dumps(stored["multipart"], indent=2, ensure_ascii=False)
    if "base64" in stored:
        return f"({len(stored['base64']) * 3 // 4} bytes, base64)"
    return json.dumps(stored, indent=2)


@fixtures.command("verify")
@_dir_option
@_config_option
@_cassette_option
def verify(folder: Path | None, config: Path | None, cassette: str | None) -> None:
    """Check that every fixture parses and still matches its own request under the config's matching
    rules. Exits 1 if any does not (e.g. after changing ignore_fields: re-record those)."""
    settings, root = _settings(config, folder)
    _folder(root, cassette)
    policy = match_policy(settings)
    entries = scan(root, cassette)
    problems: list[str] = []
    bad: set[Path] = set()
    for entry in entries:
        if entry.fixture is None:
            problems.append(f"{entry.path}: {entry.error}")
            bad.add(entry.path)
            continue
        request = entry.fixture.request
        key = request_key(request.method, request.path, request.query, request.body, policy)
        if key != request.key:
            problems.append(f"{entry.path}: its request now has key {key}, recorded as {request.key} "
                            "(matching rules or the file changed): replay would never use it")
            bad.add(entry.path)
    for problem in problems:
        click.echo(problem)
    cassettes = len({e.cassette for e in entries})
    click.echo(f"{len(entries) - len(bad)} of {len(entries)} fixtures in {cassettes} "
               f"cassette{'s' * (cassettes != 1)} OK", err=bool(problems))
    if problems:
        sys.exit(1)


@fixtures.command("prune")
@_dir_option
@_config_option
@_cassette_option
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def prune(folder: Path | None, config: Path | None, cassette: str | None, dry_run: bool) -> None:
    """Delete the fixtures no replay run used since the last prune.

    Gateways list the fixtures they replay or record in `<dir>/.oaigate-hits` when they stop: run the
    whole test suite in replay mode, then prune. The list is cleared after a prune."""
    _, root = _settings(config, folder)
    _folder(root, cassette)
    hits = read_hits(root)
    if hits is None:
        fail(f"no {HITS_FILE} in {root}: no replay run has been recorded since the last prune. Run the tests "
              "in replay mode first, then prune.")
    unused = [e.path for e in scan(root, cassette) if e.path not in hits]
    for path in unused:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
        if not dry_run:
            path.unlink()
    if not dry_run and cassette is None:
        clear_hits(root)
    click.echo(f"{len(unused)} unused fixture{'s' * (len(unused) != 1)} "
               f"{'to delete' if dry_run else 'deleted'}", err=True)
